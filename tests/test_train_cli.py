"""The training CLI as scripts use it: preflight, train, evaluate and chat with an adapter, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.store.database import Store
from tests.test_train import DATES, DATES_EVAL, REPO


def run_cli(*args, home: Path, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORAFORGE_HOME": str(home)}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def last_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir, tmp_path_factory):
    """One short tiny-model run through the CLI, shared by the tests below."""
    home = tmp_path_factory.mktemp("cli-home")
    config = home / "run.yaml"
    config.write_text("sample_max_new_tokens: 8\n")
    result = run_cli("train", "--config", str(config), "--base", str(tiny_llama_dir), "--dataset", DATES,
                     "--max-steps", "4", "--batch-size", "4", "--rank", "4", "--targets", "q_proj,v_proj",
                     "--name", "cli-test", home=home)
    return home, last_json(result), result


def test_train_prints_the_final_json_and_records_the_run(trained_run, tiny_llama_dir):
    home, final, result = trained_run
    assert {"run_id", "run_dir", "adapter_dir", "steps", "train_loss", "eval_loss", "tokens", "tokens_per_s",
            "peak_mem_mb"} <= set(final)
    assert final["steps"] == 4 and final["tokens"] > 0 and final["peak_mem_mb"] > 100
    assert final["skipped_rows"] == 0 and not (Path(final["run_dir"]) / "skipped_rows.txt").exists()
    log = (Path(final["run_dir"]) / "job.log").read_text()  # the Runs tab's log of a run started in a terminal
    assert "step 4 of 4: loss" in log and "checkpoint saved at step 4" in log
    assert "4/4" in result.stderr  # the progress bar reached the end
    with Store(home / "loraforge.db") as store:
        run = store.get_run(final["run_id"])
        assert run["status"] == "completed" and run["name"] == "cli-test"
        assert run["config"]["targets"] == ["q_proj", "v_proj"] and run["config"]["rank"] == 4
        assert len(store.metrics(final["run_id"], "train")) == 4
        assert store.adapters()[0]["path"] == final["adapter_dir"]
    # The run folder's config reproduces the run.
    reproduced = (Path(final["run_dir"]) / "config.yaml").read_text()
    assert "rank: 4" in reproduced and str(tiny_llama_dir) in reproduced


def test_evaluate_scores_base_and_adapter(trained_run):
    home, final, _ = trained_run
    scores = last_json(run_cli("evaluate", "--adapter", final["run_id"], "--dataset", DATES_EVAL, home=home))
    assert set(scores) == {"base", "adapter"}
    for side in scores.values():
        assert side["examples"] == 100 and 0 <= side["exact_match"] <= 1
        assert side["perplexity"] == pytest.approx(2.718281828 ** side["loss"], rel=1e-6)
    assert scores["base"]["loss"] != scores["adapter"]["loss"]  # the adapter changed the model


def test_evaluate_refuses_invalid_rows_unless_told_to_skip_them_and_then_counts_them(trained_run, tmp_path):
    home, final, _ = trained_run
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(Path(DATES_EVAL).read_text().splitlines(keepends=True)[:3]) + '{"instruction": "a"}\n')
    refused = run_cli("evaluate", "--adapter", final["run_id"], "--dataset", str(mixed), home=home)
    assert refused.returncode == 2 and "line 4: missing field 'output'" in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stdout == ""
    scores = last_json(run_cli("evaluate", "--adapter", final["run_id"], "--dataset", str(mixed), "--skip-invalid",
                               home=home))
    assert all((side["examples"], side["skipped_rows"]) == (3, 1) for side in scores.values())


def test_chat_with_an_adapter_by_run_id_and_by_folder(trained_run, tiny_llama_dir):
    home, final, _ = trained_run
    options = ["--prompt", "hi", "--temperature", "0", "--max-new-tokens", "6"]
    by_id = run_cli("chat", "--adapter", final["run_id"], *options, home=home)
    by_folder = run_cli("chat", "--adapter", final["adapter_dir"], "--model", str(tiny_llama_dir), *options, home=home)
    base = run_cli("chat", "--model", str(tiny_llama_dir), *options, home=home)
    assert by_id.returncode == by_folder.returncode == base.returncode == 0, by_id.stderr + by_folder.stderr
    assert by_id.stdout == by_folder.stdout  # the run's base model is found from the run id


def test_preflight_reports_data_parameters_and_estimates(tiny_llama_dir, tmp_path):
    result = run_cli("preflight", "--base", str(tiny_llama_dir), "--dataset", DATES, "--rank", "4",
                     "--targets", "q_proj,v_proj", "--epochs", "2", "--batch-size", "8", home=tmp_path)
    report = last_json(result)
    # tiny Llama: 2 layers x (q: 64->64, v: 64->32) at r=4: 4 * ((64+64) + (64+32)) * 2
    assert report["trainable_parameters"] == 4 * (128 + 96) * 2
    # 400 rows less the 10% held out for evaluation = 360 examples, 45 batches of 8 per epoch, 2 epochs
    assert report["total_steps"] == 90 and report["data"]["rows"] == 400 and report["data"]["ready"]
    assert report["estimated_seconds_per_step"] > 0 and report["estimated_peak_memory_mb"] > 0
    assert "⟦" in result.stdout and "Ready." in result.stdout
    assert not (tmp_path / "runs").exists()  # preflight trains nothing


def test_bad_dataset_gets_line_numbers_and_starts_nothing(tiny_llama_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n{"messages": [{"role": "robot", '
                   '"content": "x"}]}\n')
    result = run_cli("train", "--base", str(tiny_llama_dir), "--dataset", str(bad), home=tmp_path / "home")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 2" in result.stderr and "line 3" in result.stderr and "--skip-invalid" in result.stderr
    with Store(tmp_path / "home" / "loraforge.db") as store:
        assert store.list_runs() == []
    preflight = run_cli("preflight", "--base", str(tiny_llama_dir), "--dataset", str(bad), home=tmp_path / "home")
    assert preflight.returncode == 2 and "NOT READY" in preflight.stdout and "line 2" in preflight.stdout


def test_a_run_that_skips_invalid_rows_names_them_in_its_folder_its_json_and_the_runs_tab(tiny_llama_dir, tmp_path):
    from markdown_it import MarkdownIt

    from app.web.runs.view import stats_markdown

    mixed = tmp_path / "mi*x*ed<b>.jsonl"  # markdown and markup in a name the listing quotes
    mixed.write_text(Path(DATES).read_text()
                     + '{"instruction": "a"}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    result = run_cli("train", "--base", str(tiny_llama_dir), "--dataset", str(mixed), "--eval-file", str(mixed),
                     "--skip-invalid", "--max-steps", "2", "--batch-size", "4", "--rank", "4", "--targets",
                     "q_proj,v_proj", home=tmp_path / "home")  # the eval file is the dataset: its rows listed once
    final = last_json(result)
    assert final["skipped_rows"] == 2 and final["steps"] == 2
    listing = (Path(final["run_dir"]) / "skipped_rows.txt").read_text()
    assert "2 of 402 rows are invalid" in listing
    assert "line 401: missing field 'output'" in listing and "line 402: " in listing
    assert (f"2 invalid row(s) skipped, as asked; listed with their lines and problems in {final['run_dir']}"
            in result.stderr)
    with Store(tmp_path / "home" / "loraforge.db") as store:
        run = store.get_run(final["run_id"])
        assert run["summary"]["skipped_rows"] == 2
        shown = MarkdownIt("commonmark").render(stats_markdown(run, store))  # as the page renders it
        assert "<strong>Skipped rows</strong>" in shown and "\n  line 401: missing field 'output'" in shown
        assert "mi*x*ed&lt;b&gt;.jsonl: 2 of 402" in shown  # the name as it is: neither emphasis nor markup


def test_rows_the_max_length_leaves_nothing_to_train_are_refused_before_a_run_is_recorded(tiny_llama_dir, tmp_path):
    for background in ([], ["--background"]):
        result = run_cli("train", "--base", str(tiny_llama_dir), "--dataset", DATES, "--max-len", "8", *background,
                         home=tmp_path / "home")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "line 1: no trained tokens left after truncation to 8 tokens; raise max_length" in result.stderr
    with Store(tmp_path / "home" / "loraforge.db") as store:
        assert store.list_runs() == []


def test_targets_that_match_no_layer_are_refused_before_a_run_is_recorded(tiny_llama_dir, tmp_path):
    for background in ([], ["--background"]):
        result = run_cli("train", "--base", str(tiny_llama_dir), "--dataset", DATES, "--targets", "foo_proj",
                         *background, home=tmp_path / "home")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "Targets 'foo_proj' match no linear layer of this model" in result.stderr
        assert "q_proj" in result.stderr  # the names it does have
    with Store(tmp_path / "home" / "loraforge.db") as store:
        assert store.list_runs() == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", DATES, "--rank", "0"], "rank is 0"),
        (["train", "--dataset", "no/such.jsonl"], "not found"),
        (["resume", "r-00000000-000000-0000"], "launch.py runs"),
        (["evaluate", "--adapter", "./missing-adapter", "--dataset", DATES], "does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    result = run_cli(*args, home=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "models").exists()  # refused before the default model was converted (seconds, not 30)


def test_a_run_started_in_the_terminal_reads_its_data_and_writes_its_config_once(
    tiny_llama_dir, loraforge_home, monkeypatch, capsys
):
    """From the request to the first step in one pass: the dataset and the eval file are each read (and
    rendered) once, config.yaml written once; the settings (a cheap check) before the model loads, so a bad one
    is refused in seconds, and where the run is recorded."""
    from app.cli import main
    from core.data import load
    from core.training.config import TrainConfig

    reads, checks, writes = [], [], []
    real_read, real_check, real_write = load.read_rows, TrainConfig.check, TrainConfig.to_yaml
    monkeypatch.setattr(load, "read_rows", lambda source: reads.append(Path(source).name) or real_read(source))
    monkeypatch.setattr(TrainConfig, "check", lambda self, **kw: checks.append(1) or real_check(self, **kw))
    monkeypatch.setattr(TrainConfig, "to_yaml", lambda self, path: writes.append(path.name) or real_write(self, path))

    assert main(["train", "--base", str(tiny_llama_dir), "--dataset", DATES, "--eval-file", DATES_EVAL,
                 "--max-steps", "2", "--batch-size", "4", "--rank", "4", "--targets", "q_proj,v_proj"]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert final["status"] == "completed" and final["steps"] == 2
    assert sorted(reads) == sorted([Path(DATES).name, Path(DATES_EVAL).name])
    assert (len(checks), writes) == (2, ["config.yaml"])
