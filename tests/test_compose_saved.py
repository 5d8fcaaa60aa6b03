"""Composing a weighted set of adapters into a new registered adapter in one step (`adapters compose`), and
exports and compositions run as background processes (core/export/jobs.py) whose row in the store is the truth.

All on the tiny random Llama; the background jobs are real detached `python -m core.export.worker` processes.
"""

import fcntl
import json
import os
import signal

import pytest
import torch

from app.cli import main
from app.web.chat.picker import picker_options
from core.export.jobs import LOCK_FILE, ExportRequest, log_path, refresh, start
from core.export.output import ExportError
from core.export.parity import RELATIVE_TOLERANCES
from core.jobs.adapters import register_adapter
from core.lora.peft_format import inspect_adapter
from core.store.database import Store
from tests.export_helpers import live_logits, make_adapter
from tests.job_helpers import wait_for

IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


@pytest.fixture
def two_adapters(tiny_llama_dir, tmp_path):
    return (make_adapter(tiny_llama_dir, tmp_path / "pirate", seed=1),
            make_adapter(tiny_llama_dir, tmp_path / "dates", seed=2, targets="qv"))


def compose_cli(adapters, weights: str, name: str, base) -> int:
    argv = ["adapters", "compose", "--weights", weights, "--name", name, "--base", str(base)]
    for folder in adapters:
        argv += ["--adapter", str(folder)]
    return main(argv)


def test_compose_registers_a_new_adapter_equal_to_the_live_weighted_set(two_adapters, tiny_llama_dir,
                                                                        loraforge_home, capsys):
    assert compose_cli(two_adapters, "0.7,-0.4", "pirate dates mix", tiny_llama_dir) == 0
    adapter = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (adapter["name"], adapter["source"]) == ("pirate dates mix", "composed")
    assert adapter["path"] == str(loraforge_home / "adapters" / "pirate-dates-mix")
    assert inspect_adapter(adapter["path"]).ranks == [4, 8]  # q and v hold both adapters: ranks add up
    with Store() as store:
        [export] = store.exports()
        assert store.adapters()[0]["id"] == adapter["id"]
    assert (export["format"], export["status"], export["adapter_id"]) == ("composed", "done", adapter["id"])

    composed = live_logits(tiny_llama_dir, {adapter["path"]: 1.0}, IDS)
    weighted = live_logits(tiny_llama_dir, dict(zip(two_adapters, (0.7, -0.4))), IDS)
    base = live_logits(tiny_llama_dir, {}, IDS)
    assert torch.allclose(composed, weighted, atol=1e-5)
    assert not torch.allclose(composed, base, atol=1e-3)


@pytest.mark.parametrize("weights, name, problem", [
    ("1,0.5", "", "Give the new adapter a name"),
    ("1,0.5", "taken", "An adapter named 'taken' already exists"),
    ("1", "fresh", "2 adapter(s) but 1 weight(s)"),
    ("1,nan", "fresh", "The weights 1.0, nan are not all finite numbers"),
    ("0,0", "fresh", "Every weight is 0, so the result would be the base model unchanged"),
])
def test_a_bad_composition_is_refused_with_the_fix_and_writes_nothing(two_adapters, tiny_llama_dir, loraforge_home,
                                                                       weights, name, problem, capsys):
    with Store() as store:
        register_adapter(store, two_adapters[0], source="imported", name="taken")
    assert compose_cli(two_adapters, weights, name, tiny_llama_dir) == 2
    assert problem in capsys.readouterr().err
    assert not (loraforge_home / "adapters").exists() or not any((loraforge_home / "adapters").iterdir())
    with Store() as store:
        assert len(store.adapters()) == 1 and store.exports() == []


def test_a_composition_that_fails_its_parity_check_says_so_and_exits_4(two_adapters, tiny_llama_dir, monkeypatch,
                                                                       capsys):
    monkeypatch.setitem(RELATIVE_TOLERANCES, "peft", -1.0)  # no logit difference, not even 0, is within it
    assert compose_cli(two_adapters, "1,0.5", "strict", tiny_llama_dir) == 4
    out, err = capsys.readouterr()
    assert "WARNING: parity check failed" in err
    with Store() as store:  # kept for a look, and recorded as failed
        assert json.loads(out.strip().splitlines()[-1])["name"] == "strict"
        assert store.exports()[0]["status"] == "parity_failed"


def test_a_registered_adapter_is_named_by_its_name_or_id_in_every_verb(two_adapters, tiny_llama_dir, tmp_path,
                                                                        capsys):
    """A composed adapter has no run and lives in LORAFORGE_HOME/adapters: compose it again, export it and chat
    with it by the name it was given, or by its id, as the README promises."""
    assert compose_cli(two_adapters, "0.7,-0.4", "mix", tiny_llama_dir) == 0
    mix = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["adapters", "compose", "--adapter", "mix", "--weights", "2", "--name", "double-mix",
                 "--base", str(tiny_llama_dir)]) == 0
    double = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert torch.allclose(live_logits(tiny_llama_dir, {double["path"]: 1.0}, IDS),
                          live_logits(tiny_llama_dir, {mix["path"]: 2.0}, IDS), atol=1e-5)
    assert main(["export", "--adapter", str(mix["id"]), "--format", "peft", "--base", str(tiny_llama_dir),
                 "--out", str(tmp_path / "mix.zip")]) == 0
    assert (tmp_path / "mix.zip").is_file()
    assert main(["chat", "--adapter", "mix", "--model", str(tiny_llama_dir), "--prompt", "hi", "--max-new-tokens",
                 "4"]) == 0
    capsys.readouterr()
    with Store() as store:  # the Chat tab's pickers say where each came from
        assert (f"mix · r{mix['rank']} · composed", str(mix["id"])) in picker_options(store)

    with Store() as store:
        register_adapter(store, two_adapters[0], source="imported", name="twin")
        register_adapter(store, two_adapters[1], source="imported", name="twin")
    for reference, problem in (("nope", "No run or registered adapter is called 'nope'"),
                               ("twin", "Several adapters are named 'twin' (ids")):
        assert main(["chat", "--adapter", reference, "--model", str(tiny_llama_dir), "--prompt", "hi"]) == 2
        assert problem in capsys.readouterr().err


def finished(export_id: int) -> dict | None:
    with Store() as store:
        export = refresh(store)[0]
    assert export["id"] == export_id
    return export if export["status"] != "running" else None


def test_a_background_export_runs_in_its_own_process_and_records_its_result(two_adapters, tiny_llama_dir,
                                                                             loraforge_home, tmp_path):
    out = tmp_path / "gguf-out"
    export_id = start(ExportRequest([str(two_adapters[0])], "gguf", str(out), base=str(tiny_llama_dir)))
    with Store() as store:
        running = store.get_export(export_id)
    assert running["status"] == "running" and running["pid"] not in (None, os.getpid())
    assert running["request"]["format"] == "gguf"

    export = wait_for(lambda: finished(export_id), timeout=180, what="the background export")
    assert (export["status"], export["format"], export["progress"]) == ("done", "gguf-f16", None)
    assert export["parity"]["passed"] and export["size_bytes"] > 0
    assert (out / "gguf-out.f16.gguf").is_file() and (out / "Modelfile").is_file()
    assert "Reloading the GGUF" in log_path(export_id).read_text()


def test_a_background_composition_registers_its_adapter(two_adapters, tiny_llama_dir, loraforge_home):
    export_id = start(ExportRequest([str(f) for f in two_adapters], "composed", weights=[1.0, 0.5],
                                    base=str(tiny_llama_dir), name="mix"))
    export = wait_for(lambda: finished(export_id), timeout=180, what="the background composition")
    assert (export["status"], export["format"]) == ("done", "composed")
    with Store() as store:
        [adapter] = [a for a in store.adapters() if a["name"] == "mix"]
    assert adapter["source"] == "composed" and export["adapter_id"] == adapter["id"]


def test_background_exports_take_turns(two_adapters, tiny_llama_dir, loraforge_home):
    """Each export loads its own full-precision base: while one holds the turn, the next waits and says so."""
    loraforge_home.mkdir(parents=True, exist_ok=True)
    with open(loraforge_home / LOCK_FILE, "w") as earlier:  # an export started before, still at work
        fcntl.flock(earlier, fcntl.LOCK_EX)
        export_id = start(ExportRequest([str(f) for f in two_adapters], "composed", weights=[1.0, 0.5],
                                        base=str(tiny_llama_dir), name="queued-mix"))
        wait_for(lambda: "Waiting for the export started before" in (progress(export_id) or ""),
                 what="the second export to wait its turn")
        assert not (loraforge_home / "adapters" / "queued-mix").exists()
    export = wait_for(lambda: finished(export_id), timeout=180, what="the export once its turn came")
    assert export["status"] == "done" and (loraforge_home / "adapters" / "queued-mix").is_dir()


def progress(export_id: int) -> str | None:
    with Store() as store:
        return store.get_export(export_id)["progress"]


def test_a_bad_request_is_refused_before_any_process_starts(two_adapters, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        start(ExportRequest([str(two_adapters[0])], "merged", str(taken)))
    assert (taken / "old.txt").read_text() == "keep me"
    with Store() as store:
        assert store.exports() == []


def test_an_export_whose_process_died_is_marked_failed_and_its_partial_files_removed(two_adapters, tiny_llama_dir,
                                                                                     tmp_path):
    out = tmp_path / "merged-out"
    export_id = start(ExportRequest([str(two_adapters[0])], "merged", str(out), base=str(tiny_llama_dir)))
    with Store() as store:
        pid = store.get_export(export_id)["pid"]
    partial = tmp_path / f".merged-out.partial-{pid}"
    partial.mkdir()  # as a job killed while writing leaves it
    os.killpg(pid, signal.SIGKILL)
    export = wait_for(lambda: finished(export_id), timeout=30, what="the dead export to be noticed")
    assert export["status"] == "failed" and "stopped before finishing" in export["error"]
    assert not partial.exists() and not out.exists()


def test_a_composition_compressed_to_a_rank_reports_the_error_the_svd_predicts(two_adapters, tiny_llama_dir,
                                                                               loraforge_home, capsys):
    """`adapters compose --rank R`: the exact sum (rank 4 + 8 on q and v) compressed by SVD; at the full rank of
    the sum nothing is lost, below it the reported error is the largest layer's share of dropped singular values."""
    argv = ["adapters", "compose", "--weights", "0.7,-0.4", "--base", str(tiny_llama_dir)]
    for folder in two_adapters:
        argv += ["--adapter", str(folder)]
    assert main([*argv, "--name", "exact-12", "--rank", "12"]) == 0
    out = capsys.readouterr()
    exact = json.loads(out.out.strip().splitlines()[-1])
    assert inspect_adapter(exact["path"]).ranks == [12]
    said = "compressed to rank 12: largest relative error of a layer's update "
    assert float(out.err.split(said)[1].split()[0]) < 1e-5
    weighted = live_logits(tiny_llama_dir, dict(zip(two_adapters, (0.7, -0.4))), IDS)
    assert torch.allclose(live_logits(tiny_llama_dir, {exact["path"]: 1.0}, IDS), weighted, atol=1e-5)

    assert main([*argv, "--name", "rank-2", "--rank", "2"]) == 0
    out = capsys.readouterr()
    compressed = json.loads(out.out.strip().splitlines()[-1])
    assert inspect_adapter(compressed["path"]).ranks == [2]
    error = float(out.err.split("largest relative error of a layer's update ")[1].split()[0])
    assert 0.05 < error < 1
    assert main([*argv, "--name", "bad", "--rank", "0"]) == 2
    assert "is not a whole number from 1 to 4096" in capsys.readouterr().err
