"""The background supervisor: one detached process per LORAFORGE_HOME that starts queued runs in turn.

    ensure_supervisor()  -> starts `python -m core.jobs.worker supervisor` in its own session unless one
                            already runs (this module alone: no torch, so it starts in a second and stays small)
    serve()              -> the supervisor's loop: every round it reaps finished jobs, marks runs whose
                            process died interrupted (and queues them again when auto_resume is on),
                            and starts queued runs, oldest first, while fewer than max_jobs jobs live;
                            it exits once nothing is queued or running.

A job is started before it is claimed: the job process (`python -m core.jobs.worker train`) waits for its run id on
stdin, the supervisor claims the next queued run in the job's own pid, then writes the id. A crash at any point
leaves no run "running" without its process: before the claim the job reads end-of-file and exits, and
after it the recorded pid is the job's, so a dead job is found by `mark_stale_runs_interrupted`.
Jobs run in their own sessions, so they outlive the supervisor and whoever started it.
"""

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from core import paths
from core.jobs.settings import load_job_settings
from core.store.database import Store
from core.store.errors import DatabaseBusy
from core.store.processes import process_start_time

ROOT = Path(__file__).resolve().parents[2]  # where `python -m core...` finds the engine
LOCK_FILE = "supervisor.lock"
LOG_FILE = "supervisor.log"
POLL_SECONDS = 0.5


@contextmanager
def _lock_attempt() -> Iterator[IO | None]:
    """The supervisor lock if it is free (held until the block ends), else None. The kernel drops an
    flock when its holder dies, so a crashed supervisor never blocks the next one."""
    handle = open(paths.home() / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        yield None
        return
    try:
        yield handle
    finally:
        handle.close()  # closing releases the lock


def supervisor_running() -> bool:
    """True while a supervisor holds the lock of this LORAFORGE_HOME."""
    with _lock_attempt() as lock:
        return lock is None


def ensure_supervisor() -> int | None:
    """Start a detached supervisor unless one runs; returns the new process's pid, or None if one ran.
    Two callers racing may both start one; the second finds the lock taken and exits at once."""
    if supervisor_running():
        return None
    with open(paths.home() / LOG_FILE, "a") as log:
        process = subprocess.Popen(
            worker_command("supervisor"),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return process.pid


def serve() -> int:
    """Run the supervisor loop until nothing is queued or running; exit at once if another supervisor runs."""
    while True:
        with _lock_attempt() as lock:
            if lock is None:
                _say("another supervisor is running; exiting")
                return 0
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")  # who holds it, for people and tests; the flock is what counts
            lock.flush()
            with Store() as store:
                _Rounds(store).until_idle()
                # Between the last look and the lock's release a run may have been queued by someone who
                # saw the lock taken and so started no supervisor: look again after releasing it.
        with Store() as store:
            if not store.list_runs("queued"):
                _say("nothing queued or running; exiting")
                return 0


class _Rounds:
    """The supervisor's state: the job processes it started and the runs it queued again itself."""

    def __init__(self, store: Store):
        self.store = store
        self.children: dict[int, subprocess.Popen] = {}
        self.requeued: set[str] = set()  # auto-resumed once per supervisor, so a run that dies every time stops

    def until_idle(self) -> None:
        while True:
            try:
                if self._round():
                    return
            except DatabaseBusy as error:  # another process held the database too long: try next round
                _say(str(error))
            time.sleep(POLL_SECONDS)

    def _round(self) -> bool:
        """One look at the jobs and the queue; True when nothing is queued or running."""
        self._reap()
        self.store.mark_stale_runs_interrupted()
        settings = load_job_settings()
        if settings.auto_resume:
            self._requeue_interrupted()
        # Busy: job processes still alive (a finished run's process may still be exiting) and every running
        # run, including one a user trains in the foreground, since all of them share the same CPU or GPU.
        busy = set(self.children) | {run["pid"] for run in self.store.list_runs("running")}
        while len(busy) < settings.max_jobs and (pid := self._start_next()) is not None:
            busy.add(pid)
        return not busy and not self.store.list_runs("queued")

    def _reap(self) -> None:
        for pid, process in list(self.children.items()):
            if process.poll() is not None:
                _say(f"job process {pid} exited with code {process.returncode}")
                del self.children[pid]

    def _requeue_interrupted(self) -> None:
        for run in self.store.list_runs("interrupted"):
            if run["id"] not in self.requeued:
                self.requeued.add(run["id"])
                self.store.set_status(run["id"], "queued")
                _say(f"run {run['id']} was interrupted; queued again (auto_resume is on)")

    def _start_next(self) -> int | None:
        """Start a job process for the oldest queued run; its pid, or None when nothing is queued."""
        if not self.store.list_runs("queued"):
            return None
        with open(paths.home() / LOG_FILE, "a") as log:
            job = subprocess.Popen(
                worker_command("train"),
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        run = None
        try:
            run = self.store.claim_next_queued(job.pid, process_start_time(job.pid))
        finally:
            job.stdin.write(f"{run['id']}\n".encode() if run else b"")
            job.stdin.close()  # end of file: a job that got no id exits at once
        self.children[job.pid] = job
        if run is None:
            return None
        _say(f"run {run['id']} started as job process {job.pid}")
        return job.pid


def worker_command(role: str) -> list[str]:
    """The command line of a core.jobs.worker process (the supervisor, or one training job)."""
    return [sys.executable, "-m", "core.jobs.worker", role]


def _say(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} supervisor {os.getpid()}: {message}", flush=True)

