"""Stale runs: a running row whose process is gone (or whose pid now belongs to another process) becomes
interrupted; a row whose process lives stays running. Real processes, real pids."""

import os
import signal
import subprocess
import sys

import pytest

from core.store.database import Store
from core.store.processes import process_alive, process_start_time


@pytest.fixture
def sleeper():
    """A real child process that lives until the test ends (or kills it)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "loraforge.db") as store:
        yield store


def running_run(store: Store, pid: int, start_time: float | None) -> str:
    run_id = store.create_run("job", {}, "tiny", None, None)
    store.set_status(run_id, "running", pid=pid, pid_start_time=start_time)
    return run_id


def test_start_time_identifies_a_process(sleeper):
    start = process_start_time(sleeper.pid)
    assert start is not None and start == process_start_time(sleeper.pid)
    assert start >= process_start_time(os.getpid())  # the child started after this test process
    assert process_alive(sleeper.pid, start)
    assert process_alive(sleeper.pid, None)  # no start time recorded: the pid alone decides
    assert not process_alive(sleeper.pid, start - 1.0)  # same pid, another start: a reused pid
    assert not process_alive(None, None) and not process_alive(0, None)


def test_killed_process_is_dead_even_before_it_is_reaped(sleeper):
    start = process_start_time(sleeper.pid)
    os.kill(sleeper.pid, signal.SIGKILL)
    os.waitid(os.P_PID, sleeper.pid, os.WEXITED | os.WNOWAIT)  # exited, but left as a zombie
    assert process_start_time(sleeper.pid) is None
    assert not process_alive(sleeper.pid, start)
    sleeper.wait()
    assert not process_alive(sleeper.pid, start)


def test_run_of_a_killed_process_is_marked_interrupted(store, sleeper):
    run_id = running_run(store, sleeper.pid, process_start_time(sleeper.pid))
    sleeper.kill()
    sleeper.wait()
    assert store.mark_stale_runs_interrupted() == [run_id]
    run = store.get_run(run_id)
    assert run["status"] == "interrupted" and run["finished"] is not None
    assert "ended without finishing the run. Resume the run" in run["error"]
    assert store.mark_stale_runs_interrupted() == []  # already done


def test_run_of_a_live_process_stays_running(store, sleeper):
    run_id = running_run(store, sleeper.pid, process_start_time(sleeper.pid))
    mine = store.set_status(store.create_run("in-process", {}, "tiny", None, None), "running")["id"]
    assert store.mark_stale_runs_interrupted() == []
    assert store.get_run(run_id)["status"] == store.get_run(mine)["status"] == "running"


def test_reused_pid_counts_as_dead(store, sleeper):
    # The recorded job started at another time: the live process behind this pid is not that job.
    run_id = running_run(store, sleeper.pid, process_start_time(sleeper.pid) - 5.0)
    assert store.mark_stale_runs_interrupted() == [run_id]
    assert store.get_run(run_id)["status"] == "interrupted"


def test_only_running_rows_are_checked(store):
    queued = store.create_run("waiting", {}, "tiny", None, None)
    done = running_run(store, 999_999_999, None)
    store.set_status(done, "completed")
    assert store.mark_stale_runs_interrupted() == []
    assert store.get_run(queued)["status"] == "queued" and store.get_run(done)["status"] == "completed"
