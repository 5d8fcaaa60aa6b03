"""Adapters as the engine knows them: a PEFT folder on disk plus its row in the store.

The store keeps records and never opens adapter files; this module reads a folder's facts and hands them to
the store (register, import), and turns what a person typed (a folder, a run id, an adapter's id or name)
into a folder, the base it was trained on, and where it came from.
"""

from dataclasses import dataclass
from pathlib import Path

from core.errors import LoraForgeError
from core.store.database import Store
from core.store.errors import RunNotFound


@dataclass(frozen=True)
class AdapterSource:
    """One adapter a person named: its folder, the base its run trained on (None when unknown), and its store
    ids when it is a registered adapter or a run (for an export's record)."""

    folder: Path
    trained_on: str | None = None
    adapter_id: int | None = None
    run_id: str | None = None


def register_adapter(store: Store, path: str | Path, run_id: str | None = None, source: str = "trained",
                     name: str | None = None) -> dict:
    """Record the adapter folder at `path` with the figures read from its files (see Store.record_adapter)."""
    from core.lora.peft_format import inspect_adapter  # imports torch: only the commands that touch adapters pay

    folder = Path(path).expanduser().resolve()
    info = inspect_adapter(folder)  # its reader names what is wrong with a folder that is no adapter
    figures = {
        "base_model": info.base_model,
        "rank": max(info.ranks, default=None),
        "alpha": info.alpha,
        "targets": info.targets,
        "parameters": info.parameters,
        "size_bytes": info.size_bytes,
    }
    return store.record_adapter(folder, figures, run_id=run_id, source=source, name=name)


def import_adapter(store: Store, folder: str | Path) -> dict:
    """Register an existing PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."""
    return register_adapter(store, folder, source="imported")


def adapter_source(store: Store, reference: str) -> AdapterSource:
    """The adapter a PEFT folder path, a run id, or a registered adapter's id or name points at (a composed or
    imported adapter has no run)."""
    folder = Path(reference).expanduser()
    if folder.exists():  # a folder, or a file whose reader says what it is (a zip to unpack, say)
        resolved = str(folder.resolve())
        adapter_id = next((row["id"] for row in store.adapters() if row["path"] == resolved), None)
        return AdapterSource(folder, adapter_id=adapter_id)
    if "/" in reference or reference.startswith("."):
        raise LoraForgeError(f"Adapter folder {reference} does not exist. Check the path, or pass a run id or "
                             "a registered adapter's name.")
    try:
        run = store.get_run(reference)
    except RunNotFound:
        adapter = store.find_adapter(reference)
        trained_on = store.get_run(adapter["run_id"])["base_model"] if adapter["run_id"] else None
        return AdapterSource(Path(adapter["path"]), trained_on, adapter_id=adapter["id"])
    if not run["adapter_dir"]:
        if run["status"] in ("queued", "running"):
            raise LoraForgeError(f"Run {reference} is {run['status']}; its adapter is written when it completes. "
                                 f"Wait for it, or pass a checkpoint's adapter folder ({run['run_dir']}/checkpoints/"
                                 "step-NNNNNN/adapter).")
        raise LoraForgeError(f"Run {reference} is {run['status']} and has no final adapter yet. "
                             "Resume the run, or pass an adapter folder.")
    folder = Path(run["adapter_dir"])
    adapter_id = next((row["id"] for row in store.adapters() if row["path"] == str(folder.resolve())), None)
    return AdapterSource(folder, run["base_model"], adapter_id=adapter_id, run_id=run["id"])
