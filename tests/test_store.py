"""Store basics on a real SQLite file: runs and their status transitions, metrics, samples, adapters,
exports and votes."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from core.errors import LoraForgeError, NextStep
from core.jobs.adapters import import_adapter, register_adapter
from core.lora.errors import AdapterFileError
from core.store.database import Store
from core.store.errors import InvalidTransition, RunNotFound
from tests.store_helpers import integrity_ok


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "loraforge.db") as store:
        yield store


def new_run(store: Store, name: str = "pirate", **kwargs) -> str:
    return store.create_run(name, {"lr": 2e-4, "r": 8}, "tiny-llama", "data.jsonl", "ab" * 32, **kwargs)


def test_default_path_is_in_loraforge_home(loraforge_home):
    with Store() as store:
        assert store.path == loraforge_home / "loraforge.db"
        assert store.path.is_file()
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        run = store.get_run(new_run(store))
    assert run["run_dir"] == str(loraforge_home / "runs" / run["id"])


def test_create_and_get_run(store):
    run_id = new_run(store, run_dir="/somewhere/run")
    assert re.fullmatch(r"r-\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    run = store.get_run(run_id)
    assert run["name"] == "pirate" and run["status"] == "queued"
    assert run["config"] == {"lr": 2e-4, "r": 8}  # JSON text in the file, a dict here
    assert json.loads(store.db.execute("SELECT config FROM runs").fetchone()[0]) == {"lr": 2e-4, "r": 8}
    assert run["dataset_sha256"] == "ab" * 32 and run["run_dir"] == "/somewhere/run"
    assert run["created"].endswith("+00:00") and run["queued"] is not None
    assert run["started"] is None and run["finished"] is None and run["pid"] is None


def test_missing_run_names_the_way_to_list_runs(store):
    with pytest.raises(RunNotFound) as error:
        store.get_run("r-nope")
    assert isinstance(error.value, LoraForgeError)
    assert "r-nope" in str(error.value) and error.value.next_step == NextStep("runs")
    assert "launch.py" not in str(error.value)  # the CLI and the page word the way out (tests/test_train_cli.py)
    with pytest.raises(RunNotFound):
        store.add_metrics("r-nope", [{"step": 1, "loss": 1.0}])
    with pytest.raises(RunNotFound):
        store.set_status("r-nope", "running")


def test_list_runs_newest_first_and_by_status(store):
    ids = [new_run(store, name=f"run{i}") for i in range(3)]
    store.set_status(ids[1], "running")
    assert [run["id"] for run in store.list_runs()] == ids[::-1]
    assert [run["id"] for run in store.list_runs("queued")] == [ids[2], ids[0]]
    assert [run["id"] for run in store.list_runs("running")] == [ids[1]]
    with pytest.raises(ValueError):
        store.list_runs("done")


def test_status_transitions_stamp_times(store, monkeypatch):
    from core.store import database as store_module
    from core.store import run_status
    times = iter(f"2026-01-01T00:00:0{i}.000000+00:00" for i in range(10))
    for module in (store_module, run_status):
        monkeypatch.setattr(module, "now_iso", lambda: next(times))
    run_id = new_run(store)  # created 00, queued 01
    running = store.set_status(run_id, "running", pid=4321, pid_start_time=12.5)
    assert (running["status"], running["finished"]) == ("running", None)
    assert running["started"] == "2026-01-01T00:00:02.000000+00:00"
    assert (running["pid"], running["pid_start_time"]) == (4321, 12.5)

    interrupted = store.set_status(run_id, "interrupted", error="killed")
    assert interrupted["finished"] == "2026-01-01T00:00:03.000000+00:00" and interrupted["error"] == "killed"

    requeued = store.set_status(run_id, "queued")  # resume: back in the queue, previous attempt cleared
    assert requeued["queued"] == "2026-01-01T00:00:04.000000+00:00"
    assert (requeued["finished"], requeued["error"], requeued["pid"]) == (None, None, None)

    store.set_status(run_id, "running", pid=4321, pid_start_time=12.5)
    done = store.set_status(run_id, "completed", summary={"final_loss": 0.42})
    assert done["finished"] == "2026-01-01T00:00:06.000000+00:00" and done["summary"] == {"final_loss": 0.42}
    assert done["created"] == "2026-01-01T00:00:00.000000+00:00"


def test_running_defaults_to_this_process(store):
    import os

    from core.store.processes import process_start_time

    run = store.set_status(new_run(store), "running")
    assert run["pid"] == os.getpid() and run["pid_start_time"] == process_start_time(os.getpid())


def test_forbidden_transitions_change_nothing(store):
    run_id = new_run(store)
    store.set_status(run_id, "running")
    store.set_status(run_id, "cancelled")
    with pytest.raises(InvalidTransition, match="cancelled, so it cannot become completed"):
        store.set_status(run_id, "completed")  # a job finishing after its cancel must not look completed
    with pytest.raises(InvalidTransition, match=f"Run {run_id} is already cancelled. A cancelled run can become"):
        store.set_status(run_id, "cancelled")
    assert store.get_run(run_id)["status"] == "cancelled"
    store.set_status(run_id, "queued")
    store.set_status(run_id, "running")
    store.set_status(run_id, "completed")
    with pytest.raises(InvalidTransition, match="nothing, it is final"):
        store.set_status(run_id, "queued")
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status(new_run(store), "paused")


def test_claim_next_queued_is_fifo_by_queue_time(store):
    first, second, third = (new_run(store, name=n) for n in ("first", "second", "third"))
    store.set_status(first, "cancelled")
    store.set_status(first, "queued")  # re-queued: now behind the other two
    claimed = [store.claim_next_queued(pid=100 + i, pid_start_time=1.0 + i) for i in range(4)]
    assert [run and run["id"] for run in claimed] == [second, third, first, None]
    assert claimed[0]["status"] == "running" and claimed[0]["pid"] == 100 and claimed[0]["started"]
    assert store.get_run(first)["pid_start_time"] == 3.0


def test_metrics_replace_the_same_step(store):
    run_id = new_run(store)
    store.add_metrics(run_id, [{"step": s, "loss": 3.0 - s, "lr": 1e-4} for s in (1, 2, 3)])
    store.add_metrics(run_id, [{"step": 2, "split": "eval", "loss": 2.5}])
    # Resumed from step 1: steps 2 and 3 are logged again.
    store.add_metrics(run_id, [{"step": 2, "loss": 0.9, "tokens": 64, "time": 123.0}, {"step": 3, "loss": 0.8}])
    train = store.metrics(run_id, "train")
    assert [(m["step"], m["loss"]) for m in train] == [(1, 2.0), (2, 0.9), (3, 0.8)]
    assert train[1]["lr"] is None and train[1]["tokens"] == 64 and train[1]["time"] == 123.0
    assert train[0]["time"] > 1e9  # defaulted to now
    assert [(m["step"], m["loss"]) for m in store.metrics(run_id, "eval")] == [(2, 2.5)]
    assert len(store.metrics(run_id)) == 4
    assert store.db.execute("SELECT count(*) FROM metrics").fetchone()[0] == 4


def test_bad_metric_batch_writes_nothing(store):
    run_id = new_run(store)
    with pytest.raises(ValueError):
        store.add_metrics(run_id, [{"step": 1, "loss": 1.0}, {"step": 2, "split": "test"}])
    with pytest.raises(ValueError):
        store.add_metrics(run_id, [{"step": 1, "loss": 1.0}, {"step": 2, "perplexity": 3.0}])
    assert store.metrics(run_id) == []


def test_samples_by_step_and_prompt(store):
    run_id = new_run(store)
    store.add_sample(run_id, 20, 1, "Hi?", "Ahoy")
    store.add_sample(run_id, 10, 0, "Hello?", "Hello")
    store.add_sample(run_id, 20, 0, "Hello?", "Arr")
    store.add_sample(run_id, 20, 0, "Hello?", "Arr, matey")  # regenerated after a resume
    assert [(s["step"], s["prompt_index"], s["output"]) for s in store.samples(run_id)] == [
        (10, 0, "Hello"), (20, 0, "Arr, matey"), (20, 1, "Ahoy")
    ]


def make_peft_folder(folder, r=4, d=16):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r, "bias": "none",
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "tiny-llama", "future_key": 1,
    }))
    prefix = "base_model.model.model.layers.0.self_attn"
    tensors = {}
    for module in ("q_proj", "v_proj"):
        tensors[f"{prefix}.{module}.lora_A.weight"] = torch.zeros(r, d)
        tensors[f"{prefix}.{module}.lora_B.weight"] = torch.zeros(d, r)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def test_import_adapter_registers_once_per_folder(store, tmp_path):
    folder = make_peft_folder(tmp_path / "pirate-adapter")
    adapter = import_adapter(store, folder)
    assert adapter["name"] == "pirate-adapter" and adapter["path"] == str(folder.resolve())
    assert (adapter["base_model"], adapter["rank"], adapter["alpha"]) == ("tiny-llama", 4, 8.0)
    assert adapter["targets"] == ["q_proj", "v_proj"] and adapter["parameters"] == 2 * (4 * 16 + 16 * 4)
    assert adapter["size_bytes"] == (folder / "adapter_model.safetensors").stat().st_size
    assert adapter["source"] == "imported" and adapter["run_id"] is None
    again = import_adapter(store, folder)
    assert again["id"] == adapter["id"] and len(store.adapters()) == 1


def test_trained_adapter_takes_the_run_name(store, tmp_path):
    run_id = new_run(store, name="pirate-r8")
    adapter = register_adapter(store, make_peft_folder(tmp_path / "run" / "adapter"), run_id=run_id)
    assert (adapter["name"], adapter["run_id"], adapter["source"]) == ("pirate-r8", run_id, "trained")


def test_importing_a_trained_adapters_folder_keeps_its_run(store, tmp_path):
    """A person importing a run's adapter folder by hand must not cut it loose from its run: deleting the run
    later would leave a row pointing at a deleted folder."""
    run_id = new_run(store, name="pirate-r8")
    trained = register_adapter(store, make_peft_folder(tmp_path / "run" / "adapter"), run_id=run_id)
    again = import_adapter(store, tmp_path / "run" / "adapter")
    assert again["id"] == trained["id"] and (again["run_id"], again["source"]) == (run_id, "trained")
    store.set_status(run_id, "cancelled")
    store.delete_run(run_id)
    assert store.adapters() == []


def test_import_refuses_what_is_not_an_adapter_folder(store, tmp_path):
    with pytest.raises(AdapterFileError, match="missing does not exist"):
        import_adapter(store, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="adapter_config.json"):
        import_adapter(store, tmp_path / "empty")
    assert store.adapters() == []


def test_exports_and_votes(store, tmp_path):
    adapter = import_adapter(store, make_peft_folder(tmp_path / "a"))
    export_id = store.add_export("gguf", tmp_path / "a.gguf", adapter_id=adapter["id"], status="running")
    store.update_export(export_id, status="done", parity={"max_abs_diff": 1e-5})
    [export] = store.exports()
    assert (export["format"], export["status"], export["parity"]) == ("gguf", "done", {"max_abs_diff": 1e-5})
    assert export["adapter_id"] == adapter["id"] and export["path"] == str(tmp_path / "a.gguf")

    store.add_vote("Say hi", {"adapters": ["pirate"]}, {"adapters": []}, "left")
    store.add_vote("Say bye", {"adapters": []}, {"adapters": ["pirate"]}, "tie")
    votes = store.votes()
    assert [(v["prompt"], v["winner"]) for v in votes] == [("Say hi", "left"), ("Say bye", "tie")]
    assert votes[0]["left"] == {"adapters": ["pirate"]}
    with pytest.raises(ValueError):
        store.add_vote("x", {}, {}, "middle")
    assert integrity_ok(store.path)
