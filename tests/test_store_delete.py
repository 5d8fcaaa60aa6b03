"""Deleting a run from the Runs tab: records and folder go, active runs and other runs stay."""

from pathlib import Path

import pytest

from core.jobs.adapters import register_adapter
from core.jobs.runs import delete_run
from core.store.database import Store
from core.store.errors import RunActive
from tests.store_helpers import integrity_ok
from tests.test_store import make_peft_folder, new_run


def finished_run_with_everything(store: Store) -> str:
    """A failed run with metrics, a sample, a registered adapter inside its folder and an export of it."""
    run_id = new_run(store)
    run_dir = store.get_run(run_id)["run_dir"]
    store.set_status(run_id, "running")
    store.add_metrics(run_id, [{"step": 1, "loss": 2.0}])
    store.add_sample(run_id, 1, 0, "hi", "hello")
    adapter = register_adapter(store, make_peft_folder(Path(run_dir) / "adapter"), run_id=run_id)
    store.add_export("merged", "/exports/m", adapter_id=adapter["id"], run_id=run_id)
    store.set_status(run_id, "failed", error="boom")
    return run_id


def test_delete_removes_records_and_the_run_folder(loraforge_home):
    with Store() as store:
        kept = new_run(store, name="other")
        run_id = finished_run_with_everything(store)
        folder = loraforge_home / "runs" / run_id
        assert folder.is_dir()

        assert delete_run(store, run_id) == folder
        assert not folder.exists()
        assert [run["id"] for run in store.list_runs()] == [kept]
        assert store.metrics(run_id) == [] and store.samples(run_id) == [] and store.adapters() == []
        export = store.exports()[0]
        assert (export["path"], export["adapter_id"], export["run_id"]) == ("/exports/m", None, None)
        assert integrity_ok(store.path)


def test_delete_refuses_queued_and_running_runs_and_changes_nothing(loraforge_home):
    with Store() as store:
        queued = new_run(store)
        running = new_run(store, status="running")
        for run_id, status in ((queued, "queued"), (running, "running")):
            with pytest.raises(RunActive, match=f"{run_id} is {status}; stop it first"):
                delete_run(store, run_id)
        assert {run["id"] for run in store.list_runs()} == {queued, running}


def test_delete_leaves_a_run_folder_outside_loraforge_home(loraforge_home, tmp_path):
    own = tmp_path / "my-run"
    own.mkdir()
    with Store() as store:
        run_id = new_run(store, run_dir=own)
        store.set_status(run_id, "cancelled")
        assert delete_run(store, run_id) is None
        assert own.is_dir() and store.list_runs() == []
