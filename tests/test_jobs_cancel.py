"""Cancel and restart with real job processes: a running job's whole process group is gone afterwards and the
run is cancelled (never completed); a queued run cancelled before its turn never starts; a cancelled run
resumes in the background; a queue nobody serves is picked up the next time the runs are read."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app.cli import main
from core.jobs.background import RunNotResumable, cancel, resume_in_background, submit
from core.jobs.process_groups import group_members
from core.jobs.runs import create_run
from core.jobs.supervisor import supervisor_running
from core.store.database import Store
from core.store.processes import process_start_time
from tests.job_helpers import runs_json, tiny_config, wait_for
from tests.store_helpers import integrity_ok


def test_cancel_stops_the_running_job_and_the_queued_one_never_starts(
    tiny_llama_dir, tmp_path, capsys, stop_leftovers
):
    with Store() as store:
        running = submit(store, tiny_config(tiny_llama_dir, tmp_path, steps=10_000, name="long"))
        waiting = submit(store, tiny_config(tiny_llama_dir, tmp_path, steps=2, name="waiting"))
        wait_for(lambda: store.metrics(running), what="the first job's first step")
        job = store.get_run(running)
        assert job["status"] == "running" and store.get_run(waiting)["status"] == "queued"
        assert group_members(job["pid"]) == [job["pid"]]  # the job leads its own process group

        assert main(["cancel", waiting]) == 0
        assert f"Run {waiting} cancelled" in capsys.readouterr().out
        cancelled = cancel(store, running, grace=30.0)
        assert cancelled["status"] == "cancelled" and cancelled["finished"] is not None
        assert group_members(job["pid"]) == [] and process_start_time(job["pid"]) is None
        wait_for(lambda: not supervisor_running(), what="the supervisor to exit with nothing left to do")

        assert store.get_run(running)["status"] == "cancelled"  # the stopped job did not overwrite it
        said = json.loads((Path(job["run_dir"]) / "job.log").read_text().splitlines()[-1])
        assert said["status"] == "cancelled"  # its log's last word agrees with the store
        never = store.get_run(waiting)
        assert never["status"] == "cancelled" and never["started"] is None and never["pid"] is None
        assert not (Path(never["run_dir"]) / "job.log").exists()
        assert store.metrics(waiting) == []
        assert integrity_ok(store.path)


def test_a_cancelled_run_resumed_with_the_cli_flag_completes(tiny_llama_dir, tmp_path, capsys, stop_leftovers):
    with Store() as store:
        run_id = submit(store, tiny_config(tiny_llama_dir, tmp_path, steps=3))
        cancel(store, run_id)
        assert store.get_run(run_id)["status"] == "cancelled"
        assert main(["resume", run_id, "--background"]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"run_id": run_id}
        wait_for(lambda: store.get_run(run_id)["status"] == "completed", what="the resumed run to complete")
        assert [row["step"] for row in store.metrics(run_id)] == [1, 2, 3]


def test_resume_waits_until_the_stopped_job_has_exited_and_the_cancel_does_not_undo_it(
    tiny_llama_dir, tmp_path, stop_leftovers
):
    """Stop, then Resume at once: while the job still saves its checkpoint the resume is refused with a reason
    (two processes must not share a run folder); once it has exited the resume holds and the run completes."""
    stubborn = subprocess.Popen(  # a job that takes its time to stop: it ignores SIGTERM until killed
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(120)"], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"
    with Store() as store:
        run_id = create_run(store, tiny_config(tiny_llama_dir, tmp_path, steps=2))
        store.set_status(run_id, "running", pid=stubborn.pid, pid_start_time=process_start_time(stubborn.pid))
        stopping = threading.Thread(target=cancel, args=(store, run_id), kwargs={"grace": 3.0})
        stopping.start()
        wait_for(lambda: store.get_run(run_id)["status"] == "cancelled", what="the cancel to be recorded")
        with pytest.raises(RunNotResumable, match=f"Run {run_id} is still stopping: its process .* few seconds"):
            resume_in_background(store, run_id)
        stopping.join()
        stubborn.wait()

        assert resume_in_background(store, run_id)["status"] == "queued"
        wait_for(lambda: store.get_run(run_id)["status"] == "completed", what="the resumed run to complete")
        assert [row["step"] for row in store.metrics(run_id)] == [1, 2]


def test_reading_the_runs_starts_a_supervisor_for_a_queue_left_without_one(tiny_llama_dir, tmp_path, stop_leftovers):
    with Store() as store:
        run_id = create_run(store, tiny_config(tiny_llama_dir, tmp_path, steps=10_000))  # as after a reboot
        assert not supervisor_running()
        runs_json()
        wait_for(lambda: store.get_run(run_id)["status"] == "running", what="the supervisor to start the run")
        assert cancel(store, run_id)["status"] == "cancelled"
        wait_for(lambda: not supervisor_running(), what="the supervisor to exit")
