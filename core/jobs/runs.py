"""Runs: a training config recorded in the store, executed by one process, its history kept.

    record_run(config)  -> a row in the store, run folder with config.yaml; the config checked and the data
                           read (and rendered, given the tokenizer) once, handed back for a run trained here
    create_run(config)  -> the same, for a run that a job process will train
    execute_run(run_id) -> this process trains it: status running -> completed / failed / interrupted,
                           metrics and samples written to the store as they happen, adapter registered

The foreground CLI (`train`, `resume`) and background job processes both go through `execute_run`,
so a run looks the same in the store however it was started.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import traceback
from pathlib import Path

from core import paths
from core.data import DatasetError, load_examples
from core.data.preference import load_preferences
from core.errors import LoraForgeError
from core.jobs.adapters import register_adapter
from core.jobs.ranks import train_in_ranks
from core.store.database import Store
from core.store.processes import process_start_time
from core.training.checkpoint import resume_step
from core.training.config import TrainConfig
from core.training.data_plan import TrainingData, load_training_data
from core.training.launcher import Nodes
from core.training.loop import TrainResult, train
from core.training.preference import METRICS as PREFERENCE_METRICS
from core.training.preflight import check_targets
from core.training.run_folder import RunFolder

METRIC_FIELDS = ("step", "split", "loss", "lr", "grad_norm", "tokens_per_s", "memory_mb", "tokens", "time",
                 *PREFERENCE_METRICS)


def create_run(store: Store, config: TrainConfig, status: str = "queued", tokenizer=None) -> str:
    """Record a run for a job process to train (see record_run); its id."""
    return record_run(store, config, status, tokenizer)[0]


def record_run(store: Store, config: TrainConfig, status: str = "queued",
               tokenizer=None) -> tuple[str, TrainingData | None]:
    """Check the config and the data, record the run and write its folder with the resolved config: (run id,
    the run's data when rendered, for `execute_run` in this process).

    Every row of the dataset (and eval file) is validated first, so bad data starts nothing; given the run's
    `tokenizer` (the CLI and the web page pass it), the rows are rendered too, so a max length that leaves rows
    nothing to train is refused here as well. Local paths are stored absolute: a resume or a background job may
    run from another working directory."""
    config = absolute_paths(config.check())
    data = None
    if tokenizer is not None:  # raises DatasetError naming every refused row, as load_examples' report does
        data = load_training_data(config, tokenizer)
    else:
        for source in filter(None, (config.dataset, config.eval_file)):
            report = load_examples(source).report if config.method == "sft" else load_preferences(source)[1]
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
    RunFolder(store.get_run(run_id)["run_dir"]).write_config(config)
    return run_id, data


def execute_run(store: Store, run_id: str, events=None, data: TrainingData | None = None,
                nodes: Nodes = Nodes()) -> TrainResult:
    """Train run `run_id` in this process, resuming from its newest checkpoint when it has one. `data`: what
    record_run rendered for it in this process, so the dataset is not read twice. A run of several processes
    (config.nproc, or several `nodes`) is trained by ranks this process starts (core.jobs.ranks)."""
    run = store.get_run(run_id)
    run_dir = Path(run["run_dir"])
    config = RunFolder(run_dir).read_config()
    if run["status"] != "running":
        store.set_status(run_id, "running", pid=os.getpid(), pid_start_time=process_start_time(os.getpid()))
    start = resume_step(run_dir)
    store.forget_steps_after(run_id, start)
    try:
        if config.nproc > 1 or nodes.count > 1:
            # rank 0 prints its progress lines; a terminal's listener (the CLI's progress bar) names the job.log too
            result = train_in_ranks(run_id, config, run_dir, start > 0, nodes, log=getattr(events, "log", None))
        else:
            result = train(config, run_dir, resume=start > 0, events=store_recorder(store, run_id, events),
                           data=None if start else data)
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
        register_adapter(store, result.adapter_dir, run_id=run_id, source="trained")
    else:
        _finish(store, run_id, "interrupted", summary=summary,
                error=f"Stopped at step {result.steps}; resume the run to continue from its last checkpoint.")
    return result


def store_recorder(store: Store, run_id: str, events=None):
    """An event listener that records a run's metrics and samples in the store, then tells `events`."""
    def record(kind: str, payload: dict) -> None:
        if kind == "metrics":
            store.add_metrics(run_id, [{key: payload.get(key) for key in METRIC_FIELDS}])
        elif kind == "sample":
            store.add_sample(run_id, payload["step"], payload["prompt_index"], payload["prompt"], payload["output"])
        if events:
            events(kind, payload)
    return record


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with its local paths (dataset, eval file, base model folder) made absolute."""
    changes = {}
    for field in ("dataset", "eval_file", "base"):
        value = getattr(config, field)
        if value and Path(value).expanduser().exists():
            changes[field] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(config, **changes)


def report_outcome(store: Store, run_id: str, result: TrainResult) -> int:
    """Print the run's final JSON line for scripts; 0 when it completed, 3 when it stopped early (resumable). The
    status is the store's: a stop the loop saw as a signal is `cancelled` there when it came from a cancel."""
    fields = ("run_dir", "adapter_dir", "steps", "train_loss", "eval_loss", "tokens", "tokens_per_s", "peak_mem_mb",
              "skipped_rows")
    status = store.get_run(run_id)["status"]
    print(json.dumps({"run_id": run_id, "status": status, **{key: getattr(result, key) for key in fields}}), flush=True)
    return 0 if status == "completed" else 3


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

