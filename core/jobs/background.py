"""Background training jobs: submit, cancel, resume, and the job process's own entry point.

Every job is a separate OS process in its own session, started by the detached supervisor
(core/jobs/supervisor.py), so closing the UI or the terminal that queued it loses nothing; its state lives
in the store and its run folder. The UI and the CLI call `refresh` whenever they read the runs.

    submit(config)          -> queued run, supervisor started if none runs
    cancel(run_id)          -> queued: cancelled; running: its process group stopped, then cancelled
    resume_in_background()  -> an interrupted, failed or cancelled run queued again
    run_claimed_job(run_id) -> inside the job process: train the run the supervisor claimed for it
"""

import dataclasses
import os

from core.errors import LoraForgeError, NextStep
from core.jobs.process_groups import stop_group
from core.jobs.runs import create_run, execute_run
from core.jobs.settings import load_job_settings
from core.jobs.supervisor import ensure_supervisor
from core.store.database import Store
from core.store.processes import process_alive
from core.training.config import TrainConfig
from core.training.loop import TrainResult
from core.training.run_folder import RunFolder

RESUMABLE = ("interrupted", "failed", "cancelled")
__all__ = ["submit", "cancel", "resume_in_background", "resumable_run", "refresh", "run_claimed_job",
           "ensure_supervisor", "RunFolderMissing", "RunNotResumable"]


class RunFolderMissing(LoraForgeError):
    """A run's folder (with its config.yaml and checkpoints) is gone from disk."""


class RunNotResumable(LoraForgeError):
    """The run is in a state that resuming makes no sense for (queued, running, completed)."""


def submit(store: Store, config: TrainConfig, tokenizer=None) -> str:
    """Check the config and data (rendered with `tokenizer` when the submitter has the run's), queue the run and
    make sure a supervisor will start it; returns its id."""
    load_job_settings()  # a bad setting is the submitter's to see, not only the supervisor log's
    run_id = create_run(store, config, status="queued", tokenizer=tokenizer)
    ensure_supervisor()
    return run_id


def cancel(store: Store, run_id: str, grace: float = 5.0) -> dict:
    """Cancel a queued or running run and return it. A running job's whole process group gets SIGTERM
    (it checkpoints and stops), then SIGKILL after `grace` seconds; the run ends cancelled, never completed."""
    run = store.set_status(run_id, "cancelled")  # atomic: a supervisor claiming it meanwhile has already set its pid
    if run["pid"] is not None:
        stop_group(run["pid"], run["pid_start_time"], grace)
    run = store.get_run(run_id)
    if run["status"] in ("interrupted", "failed"):  # what the dying job recorded of itself: cancel wins
        run = store.set_status(run_id, "cancelled", error=None)
    return run


def resumable_run(store: Store, run_id: str) -> dict:
    """The run, if it can be resumed: interrupted, failed or cancelled, with its folder and config on disk, and
    once cancelled, its job process gone (a second process on one run folder would race it for the checkpoints)."""
    store.mark_stale_runs_interrupted()
    run = store.get_run(run_id)
    if run["status"] not in RESUMABLE:
        raise RunNotResumable(
            f"Run {run_id} is {run['status']}; only an interrupted, failed or cancelled run can be resumed.",
            NextStep("runs"),
        )
    if run["status"] == "cancelled" and run["pid"] != os.getpid() and process_alive(run["pid"], run["pid_start_time"]):
        raise RunNotResumable(
            f"Run {run_id} is still stopping: its process (pid {run['pid']}) is saving a checkpoint and exiting. "
            "Resume it in a few seconds."
        )
    _check_folder(run)
    return run


def resume_in_background(store: Store, run_id: str, nproc: int | None = None) -> dict:
    """Queue an interrupted, failed or cancelled run again; it continues from its newest checkpoint, with `nproc`
    processes when given (the same adapter with any number)."""
    run = resumable_run(store, run_id)
    if nproc is not None:
        folder = RunFolder(run["run_dir"])
        folder.write_config(dataclasses.replace(folder.read_config(), nproc=nproc).check())
    run = store.set_status(run_id, "queued")
    ensure_supervisor()
    return run


def refresh(store: Store) -> list[dict]:
    """All runs as they really are: runs whose process died marked interrupted, and a supervisor started
    if runs wait for one (after a reboot, say). What the page and the CLI show."""
    store.mark_stale_runs_interrupted()
    waiting = store.list_runs("queued") or (load_job_settings().auto_resume and store.list_runs("interrupted"))
    if waiting:
        ensure_supervisor()
    return store.list_runs()


def run_claimed_job(store: Store, run_id: str, events=None) -> TrainResult | None:
    """Train `run_id` in this job process if the supervisor claimed it for this process (telling `events` what
    happens, as `execute_run` does); None if it was cancelled (or taken) before the job got going."""
    run = store.get_run(run_id)
    if run["status"] != "running" or run["pid"] != os.getpid():
        return None
    try:
        _check_folder(run)
    except RunFolderMissing as error:
        store.set_status(run_id, "failed", error=str(error))
        raise
    return execute_run(store, run_id, events)


def _check_folder(run: dict) -> None:
    config = RunFolder(run["run_dir"]).config
    if not config.is_file():
        raise RunFolderMissing(
            f"Run {run['id']} cannot go on: {config} is missing (was the run folder moved or deleted?). "
            "Put the folder back, or start a new run.", NextStep("train"),
        )
