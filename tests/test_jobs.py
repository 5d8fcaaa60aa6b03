"""Background jobs with real processes and a real database: a job outlives whoever queued it, a killed job
is found interrupted and resumes from its checkpoint, and queued jobs run one at a time in FIFO order."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app.cli import main
from core.jobs.background import submit
from core.jobs.process_groups import group_members
from core.store.database import Store
from core.store.processes import process_start_time
from tests.job_helpers import (
    ROOT,
    checkpoint_step,
    runs_json,
    supervisor_pid,
    tiny_config,
    wait_for,
)
from tests.store_helpers import integrity_ok

STARTER = """
import sys, time
from app.cli import main
from core.jobs.background import submit
from core.store.database import Store
from core.training.config import TrainConfig
with Store() as store:
    print(submit(store, TrainConfig.from_yaml(sys.argv[1])), flush=True)
time.sleep(600)
"""


def test_job_completes_after_the_process_that_queued_it_is_killed(tiny_llama_dir, tmp_path, stop_leftovers):
    tiny_config(tiny_llama_dir, tmp_path, steps=48).to_yaml(tmp_path / "run.yaml")  # long enough to outlast a slow poll
    # The starter gets a session of its own, like a terminal: killing its whole process group is what closing
    # that terminal does, and would take the supervisor and the job along if they shared it.
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "run.yaml")], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True, env=dict(os.environ), start_new_session=True)
    run_id = starter.stdout.readline().strip()
    with Store() as store:
        wait_for(lambda: store.metrics(run_id), what="the job's first training step")
        assert len(store.metrics(run_id)) < 48  # still training when its starter dies
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait()
        wait_for(lambda: store.get_run(run_id)["status"] not in ("queued", "running"), what="the run to end")
    run = runs_json()[run_id]
    assert run["status"] == "completed" and run["summary"]["steps"] == 48
    assert (Path(run["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert Path(run["run_dir"]) == Path(os.environ["LORAFORGE_HOME"]) / "runs" / run_id
    assert {"id", "name", "status", "run_dir", "adapter_dir", "created"} <= set(run)
    log = (Path(run["run_dir"]) / "job.log").read_text()  # what the Runs tab's log tail shows: a line per event
    assert "step 1 of 48: loss " in log and "step 48 of 48: loss " in log
    assert "checkpoint saved at step 48: " in log and json.loads(log.splitlines()[-1])["status"] == "completed"


def test_killed_job_is_interrupted_on_the_next_read_and_resume_continues_from_its_checkpoint(
    tiny_llama_dir, tmp_path, loraforge_home, capsys, stop_leftovers
):
    with Store() as store:
        run_id = submit(store, tiny_config(tiny_llama_dir, tmp_path, steps=24, save_every=3))
        run_dir = store.get_run(run_id)["run_dir"]
        wait_for(lambda: checkpoint_step(run_dir) >= 3, what="a first checkpoint")
        # Without its supervisor, nothing but the next read of the runs can notice the job's death.
        os.kill(supervisor_pid(loraforge_home), signal.SIGKILL)
        job = store.get_run(run_id)
        os.killpg(job["pid"], signal.SIGKILL)
        wait_for(lambda: not group_members(job["pid"]), what="the job to die")
        assert store.get_run(run_id)["status"] == "running"
        checkpoint = checkpoint_step(run_dir)
        assert 3 <= checkpoint < 24

        assert runs_json()[run_id]["status"] == "interrupted"
        assert main(["resume", run_id]) == 0  # in the foreground, in this process
        out, err = capsys.readouterr()
        assert f"Resuming at step {checkpoint} " in err
        assert json.loads(out.splitlines()[-1])["steps"] == 24
        run = store.get_run(run_id)
        assert run["status"] == "completed" and run["summary"]["steps"] == 24
        assert [row["step"] for row in store.metrics(run_id, "train")] == list(range(1, 25))
        assert integrity_ok(store.path)


def test_two_submissions_at_once_run_one_after_the_other(tiny_llama_dir, tmp_path, stop_leftovers):
    for name in ("first", "second"):
        tiny_config(tiny_llama_dir, tmp_path, steps=6, name=name).to_yaml(tmp_path / f"{name}.yaml")
    submitters = [subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "train", "--background", "--config",
                                    str(tmp_path / f"{name}.yaml")], stdout=subprocess.PIPE, text=True)
                  for name in ("first", "second")]
    run_ids = []
    for submitter in submitters:
        out, _ = submitter.communicate(timeout=180)
        assert submitter.returncode == 0
        run_ids.append(json.loads(out.splitlines()[-1])["run_id"])
    with Store() as store:
        wait_for(lambda: all(store.get_run(i)["status"] == "completed" for i in run_ids), timeout=240,
                 what="both runs to complete")
        runs = sorted((store.get_run(i) for i in run_ids), key=lambda run: run["queued"])
    assert runs[0]["started"] < runs[1]["started"]  # first queued, first started
    assert runs[0]["finished"] < runs[1]["started"]  # never both at once
    assert runs[0]["pid"] != runs[1]["pid"]
    wait_for(lambda: all(process_start_time(run["pid"]) is None for run in runs), what="the job processes to exit")


def test_with_auto_resume_the_supervisor_resumes_a_killed_job(
    tiny_llama_dir, tmp_path, loraforge_home, monkeypatch, stop_leftovers
):
    monkeypatch.setenv("LORAFORGE_AUTO_RESUME", "1")
    with Store() as store:
        run_id = submit(store, tiny_config(tiny_llama_dir, tmp_path, steps=24, save_every=3))
        wait_for(lambda: checkpoint_step(store.get_run(run_id)["run_dir"]) >= 3, what="a first checkpoint")
        killed, killed_at = store.get_run(run_id)["pid"], time.time()
        os.killpg(killed, signal.SIGKILL)
        wait_for(lambda: store.get_run(run_id)["status"] == "completed", what="the run to be resumed and complete")
        run, steps = store.get_run(run_id), store.metrics(run_id, "train")
    assert run["pid"] != killed and run["summary"]["steps"] == 24
    assert f"run {run_id} was interrupted; queued again" in (loraforge_home / "supervisor.log").read_text()
    assert [row["step"] for row in steps] == list(range(1, 25))
    assert steps[0]["time"] < killed_at < steps[-1]["time"]  # continued from the checkpoint, not from step 1
