"""The job verbs' answers to mistakes and faults (unknown run, missing folder, damaged database): one clear
line on stderr, exit 2, nothing changed. Also `runs` as a table, `adapters list|import`, and job settings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from app.web.runs.view import runs_table
from core.jobs.settings import JobSettings, SettingsError, load_job_settings
from core.lora.model import LoraSettings, add_adapter
from core.lora.peft_format import save_adapter
from core.store.database import Store
from tests.lora_helpers import load
from tests.store_helpers import integrity_ok


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def stored_run(status: str, run_dir: Path | None = None) -> str:
    with Store() as store:
        run_id = store.create_run("stored", {}, "tiny", None, None, run_dir=run_dir, status="running")
        store.set_status(run_id, status)
        return run_id


@pytest.mark.parametrize("argv", [["cancel", "r-nope"], ["resume", "r-nope"], ["resume", "r-nope", "--background"]])
def test_unknown_run_id_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    assert "No run has the id 'r-nope'" in error_line(capsys)


@pytest.mark.parametrize("background", [False, True])
def test_resume_with_a_missing_run_folder_exits_2_and_changes_nothing(background, tmp_path, capsys):
    run_id = stored_run("interrupted", run_dir=tmp_path / "gone")
    assert main(["resume", run_id, *(["--background"] if background else [])]) == 2
    assert "config.yaml is missing" in error_line(capsys)
    with Store() as store:
        assert store.get_run(run_id)["status"] == "interrupted"
        assert integrity_ok(store.path)


def test_resume_of_a_completed_run_is_refused(capsys):
    run_id = stored_run("completed")
    assert main(["resume", run_id]) == 2
    assert "only an interrupted, failed or cancelled run can be resumed" in error_line(capsys)
    assert main(["cancel", run_id]) == 2
    assert "cannot become cancelled" in error_line(capsys)


def test_damaged_database_exits_2_and_is_left_as_it_was(loraforge_home, capsys):
    loraforge_home.mkdir(parents=True, exist_ok=True)
    damaged = b"this is not a database" * 100
    (loraforge_home / "loraforge.db").write_bytes(damaged)
    for argv in (["runs", "--json"], ["cancel", "r-x"], ["adapters", "list"]):
        assert main(argv) == 2
        assert "is damaged" in error_line(capsys)
    assert (loraforge_home / "loraforge.db").read_bytes() == damaged


def test_runs_table_and_json_show_every_run(capsys):
    done, queued_dead = stored_run("completed"), stored_run("cancelled")
    assert main(["runs"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "STEPS"]
    assert {tuple(row.split()[:2]) for row in rows} == {(done, "completed"), (queued_dead, "cancelled")}
    assert main(["runs", "--json"]) == 0
    assert [run["id"] for run in json.loads(capsys.readouterr().out)] == [queued_dead, done]  # newest first


def test_runs_table_shows_the_steps_of_a_running_run(capsys):
    with Store() as store:  # running in this (live) process, three steps logged of ten planned
        run_id = store.create_run("live", {"max_steps": 10}, "tiny", None, None, status="running")
        store.add_metrics(run_id, [{"step": step, "loss": 1.0} for step in (1, 2, 3)])
    assert main(["runs"]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(run_id)]
    assert row.split()[1:3] == ["running", "3/10"]
    with Store() as store:  # the Runs tab's table: the same progress, and the latest loss before any summary
        [shown] = runs_table(store.list_runs(), store).to_dict("records")
    assert (shown["Steps"], shown["Train loss"]) == ("3 / 10", "1.0000")


def test_runs_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    """`launch.py runs | head -1`: the reader closes the pipe; the verb must not end in a traceback."""
    env = {**os.environ, "LORAFORGE_HOME": str(tmp_path / "home")}
    job = subprocess.Popen([sys.executable, "launch.py", "runs"], cwd=Path(__file__).resolve().parents[1], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job.stdout.close()  # gone before the table is printed (the verb takes a moment to start)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_adapters_import_then_list(tiny_llama_dir, tmp_path, capsys):
    model = load(tiny_llama_dir)
    add_adapter(model, "default", LoraSettings(r=4, alpha=8, targets="qv"))
    save_adapter(model, "default", tmp_path / "mine", base_model_name="tiny-llama")
    assert main(["adapters", "import", str(tmp_path / "mine")]) == 0
    imported = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert imported["source"] == "imported" and imported["rank"] == 4 and imported["alpha"] == 8

    assert main(["adapters", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["path"] == str((tmp_path / "mine").resolve()) and listed["base_model"] == "tiny-llama"
    assert main(["adapters", "list"]) == 0
    assert str((tmp_path / "mine").resolve()) in capsys.readouterr().out

    shutil.rmtree(tmp_path / "mine")
    assert main(["adapters", "import", str(tmp_path / "mine")]) == 2
    assert "mine does not exist. Check the path" in error_line(capsys)


def test_job_settings_default_file_and_environment(loraforge_home, monkeypatch):
    monkeypatch.delenv("LORAFORGE_MAX_JOBS", raising=False)
    monkeypatch.delenv("LORAFORGE_AUTO_RESUME", raising=False)
    assert load_job_settings() == JobSettings(max_jobs=1, auto_resume=False)
    (loraforge_home / "settings.json").write_text(json.dumps({"max_jobs": 2, "auto_resume": True}))
    assert load_job_settings() == JobSettings(max_jobs=2, auto_resume=True)
    monkeypatch.setenv("LORAFORGE_AUTO_RESUME", "0")
    monkeypatch.setenv("LORAFORGE_MAX_JOBS", "3")
    assert load_job_settings() == JobSettings(max_jobs=3, auto_resume=False)
    monkeypatch.setenv("LORAFORGE_MAX_JOBS", "0")
    with pytest.raises(SettingsError, match="LORAFORGE_MAX_JOBS"):
        load_job_settings()
