"""Faults a user can meet: a damaged database file and a lock held too long. Clear errors, nothing lost."""

import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from core.errors import LoraForgeError
from core.store.database import Store
from core.store.errors import DatabaseBusy, DatabaseDamaged
from tests.store_helpers import integrity_ok


def filled_database(path, rows: int = 3000):
    with Store(path) as store:
        run_id = store.create_run("big", {}, "tiny", "d.jsonl", None)
        store.add_metrics(run_id, [{"step": s, "loss": 1.0 / (s + 1)} for s in range(rows)])
    return run_id


def assert_damaged_and_untouched(path):
    before = path.read_bytes()
    with pytest.raises(DatabaseDamaged) as error:
        Store(path)
    message = str(error.value)
    assert isinstance(error.value, LoraForgeError)
    assert str(path) in message and "damaged" in message and "Move it aside" in message
    assert "never deletes" in message
    assert path.read_bytes() == before


def test_random_bytes_are_reported_as_damaged_and_left_alone(tmp_path):
    path = tmp_path / "loraforge.db"
    path.write_bytes(os.urandom(16384))
    assert_damaged_and_untouched(path)


def test_truncated_database_is_reported_as_damaged_and_left_alone(tmp_path):
    path = tmp_path / "loraforge.db"
    filled_database(path)
    assert not (tmp_path / "loraforge.db-wal").exists()  # the last close checkpointed everything into the file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_damaged_and_untouched(path)


def hold_write_lock(path) -> sqlite3.Connection:
    """Another process's long write transaction, as seen by the store."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE runs SET name = name")
    return conn


def test_lock_held_past_the_busy_timeout_writes_nothing(tmp_path):
    path = tmp_path / "loraforge.db"
    run_id = filled_database(path, rows=3)
    holder = hold_write_lock(path)
    with Store(path, busy_timeout=0.2) as store:
        start = time.monotonic()
        with pytest.raises(DatabaseBusy) as error:
            store.add_metrics(run_id, [{"step": s, "loss": 0.0} for s in range(100, 200)])
        assert 0.15 < time.monotonic() - start < 5
        assert str(path) in str(error.value) and "nothing was written" in str(error.value)
        with pytest.raises(DatabaseBusy):
            store.create_run("late", {}, "tiny", None, None)
        assert [run["name"] for run in store.list_runs()] == ["big"]  # readers still read while it is locked
        holder.rollback()
        holder.close()
        assert len(store.metrics(run_id)) == 3 and len(store.list_runs()) == 1
        assert integrity_ok(store.path)
        store.create_run("after", {}, "tiny", None, None)  # the store is usable again
        assert len(store.list_runs()) == 2


def test_lock_shorter_than_the_busy_timeout_is_waited_out(tmp_path):
    path = tmp_path / "loraforge.db"
    run_id = filled_database(path, rows=3)
    holder = hold_write_lock(path)
    release = threading.Timer(0.3, holder.commit)
    release.start()
    try:
        with Store(path, busy_timeout=10) as store:
            store.add_metrics(run_id, [{"step": 50, "loss": 0.5}])
            assert len(store.metrics(run_id)) == 4
    finally:
        release.join()
        holder.close()


def test_a_background_process_waits_out_a_lock_longer_than_its_busy_timeout_and_loses_nothing(tmp_path, capfd):
    """Jobs open the store with patience: another process's long transaction (here 1.5 s against a 0.2 s busy
    timeout) delays their writes, with a line in the job's log, instead of killing the job."""
    path = tmp_path / "loraforge.db"
    run_id = filled_database(path, rows=3)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
         "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(1.5); c.rollback()", str(path)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with Store(path, busy_timeout=0.2, patience=30) as store:  # as every store of a job process opens
        store.add_metrics(run_id, [{"step": s, "loss": 0.0} for s in range(100, 200)])
        assert len(store.metrics(run_id)) == 103
    assert holder.wait(timeout=30) == 0
    assert "is locked by another process; still waiting to write" in capfd.readouterr().err
