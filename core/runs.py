"""Runs: a training config recorded in the store, executed by one process, its history kept.

    create_run(config)  -> a queued row in the store, run folder with config.yaml
    execute_run(run_id) -> this process trains it: status running -> completed / failed / interrupted,
                           metrics and samples written to the store as they happen, adapter registered

The foreground CLI (`train`, `resume`) and background job processes both go through `execute_run`,
so a run looks the same in the store however it was started.
"""

import dataclasses
import hashlib
import os
import shutil
import traceback
from pathlib import Path

from core import paths
from core.checkpoint import resume_step
from core.data import DatasetError, load_examples, prepare_dataset
from core.errors import LoraForgeError
from core.preflight import check_targets
from core.processes import process_start_time
from core.store import Store
from core.store_errors import RunNotFound
from core.train import TrainResult, train
from core.train_config import TrainConfig

METRIC_FIELDS = ("step", "split", "loss", "lr", "grad_norm", "tokens_per_s", "memory_mb", "tokens", "time")


def create_run(store: Store, config: TrainConfig, status: str = "queued", tokenizer=None) -> str:
    """Check the config and the data, record the run and write its folder with the resolved config.

    Every row of the dataset (and eval file) is validated first, so bad data starts nothing; given the run's
    `tokenizer` (the CLI and the web page pass it), the rows are rendered too, so a max length that leaves rows
    nothing to train is refused here as well. Local paths are stored absolute: a resume or a background job may run from another working directory."""
    config = absolute_paths(config.check())
    for source in filter(None, (config.dataset, config.eval_file)):
        if tokenizer is not None:  # raises DatasetError naming every refused row, as load_examples' report does
            prepare_dataset(source, tokenizer, config.max_len, config.train_on, skip_invalid=config.skip_invalid)
            continue
        report = load_examples(source).report
        if blocker := report.blocker(config.skip_invalid):
            raise DatasetError(blocker, report)
    check_targets(config)
    dataset = Path(config.dataset)
    run_id = store.create_run(
        name=config.name or f"{Path(config.base).name or config.base}-{dataset.stem}",
        config=config.__dict__,
        base_model=config.base,
        dataset_path=config.dataset,
        dataset_sha256=file_sha256(dataset) if dataset.is_file() else None,
        status=status,
    )
    run_dir = Path(store.get_run(run_id)["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(run_dir / "config.yaml")
    return run_id


def execute_run(store: Store, run_id: str, events=None) -> TrainResult:
    """Train run `run_id` in this process, resuming from its newest checkpoint when it has one."""
    run = store.get_run(run_id)
    run_dir = Path(run["run_dir"])
    config = TrainConfig.from_yaml(run_dir / "config.yaml")
    if run["status"] != "running":
        store.set_status(run_id, "running", pid=os.getpid(), pid_start_time=process_start_time(os.getpid()))
    start = resume_step(run_dir)
    store.forget_steps_after(run_id, start)

    def record(kind: str, payload: dict) -> None:
        if kind == "metrics":
            store.add_metrics(run_id, [{key: payload.get(key) for key in METRIC_FIELDS}])
        elif kind == "sample":
            store.add_sample(run_id, payload["step"], payload["prompt_index"], payload["prompt"], payload["output"])
        if events:
            events(kind, payload)

    try:
        result = train(config, run_dir, resume=start > 0, events=record)
    except LoraForgeError as error:
        _finish(store, run_id, "failed", error=str(error))
        raise
    except BaseException as error:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        _finish(store, run_id, "failed" if not isinstance(error, KeyboardInterrupt) else "interrupted", error=detail)
        raise
    summary = {key: getattr(result, key) for key in ("steps", "total_steps", "train_loss", "eval_loss", "tokens",
                                                     "tokens_per_s", "peak_mem_mb", "trainable_parameters",
                                                     "skipped_rows")}
    if result.status == "completed":
        _finish(store, run_id, "completed", summary=summary, adapter_dir=result.adapter_dir)
        store.register_adapter(result.adapter_dir, run_id=run_id, source="trained")
    else:
        _finish(store, run_id, "interrupted", summary=summary,
                error=f"Stopped at step {result.steps}; resume with `python launch.py resume {run_id}`.")
    return result


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with its local paths (dataset, eval file, base model folder) made absolute."""
    changes = {}
    for field in ("dataset", "eval_file", "base"):
        value = getattr(config, field)
        if value and Path(value).expanduser().exists():
            changes[field] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(config, **changes)


def adapter_source(store: Store, reference: str) -> tuple[Path, str | None]:
    """An adapter folder and the base model it was trained on (None when unknown), from a PEFT folder path, a
    run id, or a registered adapter's id or name (a composed or imported adapter has no run)."""
    folder = Path(reference).expanduser()
    if folder.exists():  # a folder, or a file whose reader says what it is (a zip to unpack, say)
        return folder, None
    if "/" in reference or reference.startswith("."):
        raise LoraForgeError(f"Adapter folder {reference} does not exist. Check the path, or pass a run id from "
                             "`python launch.py runs` or an adapter's name from `python launch.py adapters list`.")
    try:
        run = store.get_run(reference)
    except RunNotFound:
        adapter = store.find_adapter(reference)
        return Path(adapter["path"]), store.get_run(adapter["run_id"])["base_model"] if adapter["run_id"] else None
    if not run["adapter_dir"]:
        if run["status"] in ("queued", "running"):
            raise LoraForgeError(f"Run {reference} is {run['status']}; its adapter is written when it completes. "
                                 f"Wait for it, or pass a checkpoint's adapter folder ({run['run_dir']}/checkpoints/"
                                 "step-NNNNNN/adapter).")
        raise LoraForgeError(f"Run {reference} is {run['status']} and has no final adapter yet. "
                             f"Resume it with `python launch.py resume {reference}`, or pass an adapter folder.")
    return Path(run["adapter_dir"]), run["base_model"]


def delete_run(store: Store, run_id: str) -> Path | None:
    """Delete a finished, failed, interrupted or cancelled run: its records, and its folder when that lies under
    LORAFORGE_HOME/runs (a folder elsewhere was the user's choice and stays). Returns the folder removed, if any."""
    run = store.delete_run(run_id)
    folder = Path(run["run_dir"]).resolve() if run["run_dir"] else None
    if folder is None or not folder.is_dir() or (paths.home() / "runs").resolve() not in folder.parents:
        return None
    shutil.rmtree(folder)
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _finish(store: Store, run_id: str, status: str, **fields) -> None:
    """Record the outcome unless the run was moved meanwhile (a cancel wins over a late finish)."""
    if store.get_run(run_id)["status"] == "running":
        store.set_status(run_id, status, **fields)

