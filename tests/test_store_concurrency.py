"""Several OS processes writing one database at once, as the web UI, job processes and the CLI do:
no row lost, no run claimed twice, no "database is locked", integrity intact."""

import multiprocessing
import os
from pathlib import Path

from core.store.database import Store
from core.store.processes import process_start_time
from tests.store_helpers import integrity_ok

WORKERS = 4
ROWS = 300
CONTEXT = multiprocessing.get_context("fork")  # real OS processes; each opens its own Store


def write_metrics(path: Path, run_id: str, worker: int, start) -> None:
    """One short transaction per row, to collide with the other writers as often as possible."""
    with Store(path) as store:
        start.wait()
        for i in range(ROWS):
            store.add_metrics(run_id, [{"step": worker * ROWS + i, "loss": float(i), "tokens": worker}])
            if i % 50 == 0:
                store.create_run(f"w{worker}-{i}", {"worker": worker}, "tiny", None, None)


def claim_all(path: Path, out: Path, start) -> None:
    """A job runner taking queued runs until none are left, writing down what it took."""
    with Store(path) as store:
        start.wait()
        pid = os.getpid()
        claimed = []
        while run := store.claim_next_queued(pid, process_start_time(pid)):
            claimed.append(run["id"])
    out.write_text("\n".join(claimed))


def run_workers(target, args_for) -> None:
    start = CONTEXT.Event()
    processes = [CONTEXT.Process(target=target, args=(*args_for(worker), start)) for worker in range(WORKERS)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
    assert [process.exitcode for process in processes] == [0] * WORKERS  # a "locked" error would exit 1


def test_concurrent_writers_lose_no_rows(tmp_path):
    path = tmp_path / "loraforge.db"
    with Store(path) as store:
        run_id = store.create_run("shared", {}, "tiny", None, None)
    run_workers(write_metrics, lambda worker: (path, run_id, worker))
    with Store(path) as store:
        rows = store.metrics(run_id)
        assert [row["step"] for row in rows] == list(range(WORKERS * ROWS))
        assert all(row["tokens"] == row["step"] // ROWS for row in rows)
        assert len(store.list_runs()) == 1 + WORKERS * (ROWS // 50)
        assert integrity_ok(store.path)


def test_racing_claimers_take_each_run_exactly_once(tmp_path):
    path = tmp_path / "loraforge.db"
    with Store(path) as store:
        queued = [store.create_run(f"run{i}", {}, "tiny", None, None) for i in range(60)]
    outs = [tmp_path / f"claimed-{worker}.txt" for worker in range(WORKERS)]
    run_workers(claim_all, lambda worker: (path, outs[worker]))
    claims = {worker: [line for line in out.read_text().splitlines() if line] for worker, out in enumerate(outs)}
    every_claim = [run_id for ids in claims.values() for run_id in ids]
    assert sorted(every_claim) == sorted(queued)  # all taken, none twice
    with Store(path) as store:
        assert {run["status"] for run in store.list_runs()} == {"running"}
        pids = {store.get_run(run_id)["pid"] for run_id in claims[0]}
        assert len(pids) <= 1  # each run records the process that claimed it
        assert integrity_ok(store.path)
