"""Compose several adapters, each with a weight, into a new registered adapter in one step.

The weighted set becomes one exact PEFT adapter (core.lora.compose concatenates the factors, so nothing is
approximated), written by the PEFT export, whose parity check compares it with the live weighted set,
into LORAFORGE_HOME/adapters/<name>. It is then registered as "composed", so it can be chatted with,
exported and composed again like any trained or imported adapter.
"""

from collections.abc import Callable
from pathlib import Path

from core import paths
from core.export.exporter import ExportResult, check_export, check_rank, export_adapters
from core.export.output import ExportError
from core.jobs.adapters import register_adapter
from core.store.database import Store

COMPOSED = "composed"


def check_composition(adapters: list[str], weights: list[float] | None, name: str, rank: int | None = None) -> Path:
    """The new adapter's folder, once the name is free and the adapters, weights and rank make a valid set."""
    check_rank(rank, "peft")
    folder_name = paths.slug(name)
    if not folder_name:
        raise ExportError("Give the new adapter a name (letters, digits, '-', '_' or '.'), e.g. pirate-dates-mix.")
    with Store() as store:
        taken = {row["name"] for row in store.adapters()}
    if name.strip() in taken:
        raise ExportError(f"An adapter named {name.strip()!r} already exists. Choose another name for the new one.")
    folder = paths.named_path(paths.home() / "adapters", folder_name, what="The adapter name")
    if folder.exists():
        raise ExportError(
            f"{folder} already exists. Choose another name for the new adapter, or move that folder away."
        )
    folder.parent.mkdir(exist_ok=True)
    check_export(adapters, "peft", folder, weights, "f16", force=False)
    return folder


def compose_adapter(
    adapters: list[str],
    weights: list[float] | None,
    name: str,
    base: str | None = None,
    progress: Callable[[str], None] | None = None,
    export_id: int | None = None,
    rank: int | None = None,
) -> tuple[ExportResult, dict]:
    """Write sum_i weight_i * adapter_i as the adapter `name` (exact, or compressed to `rank` by SVD, the
    error reported) and register it; returns (the parity-checked write, the new adapter's store row).
    `export_id` is the background job's row, as for export_adapters."""
    folder = check_composition(adapters, weights, name, rank)
    adapter = {}

    def register(store: Store) -> dict:
        adapter.update(register_adapter(store, folder, source=COMPOSED, name=name.strip()))
        return {"format": COMPOSED, "adapter_id": adapter["id"]}

    result = export_adapters(adapters, "peft", folder, weights=weights, base=base, progress=progress,
                             export_id=export_id, on_written=register, rank=rank)
    return result, adapter
