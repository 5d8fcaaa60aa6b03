"""Run history in one SQLite file that the web UI, every job process and the CLI share.

Each process opens its own `Store`. The file is in WAL mode (readers never wait for writers) with a busy
timeout, and every write is one short `BEGIN IMMEDIATE` transaction: it takes the write lock before
reading anything, so concurrent writers queue up instead of failing, and a write either lands whole or
not at all. sqlite3 errors that a user can cause (a damaged file, a lock held too long) come out as
LoraForgeErrors that say what to do.
"""

import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core import paths
from core.store import schema as store_schema
from core.store.adapters import AdapterRecords
from core.store.errors import DatabaseBusy, DatabaseDamaged, DatabaseTooNew, RunActive, RunNotFound
from core.store.processes import process_alive
from core.store.run_status import check_status, now_iso, status_change
from core.store.schema import decode_row, encode_row

DB_NAME = "loraforge.db"
JOB_PATIENCE = 600.0  # seconds a background process waits for a write lock before it gives up
VOTE_WINNERS = ("left", "right", "tie", "both_bad")


def new_run_id() -> str:
    """A run id such as r-20261123-142501-ab12: sorts by creation time and reads well in a shell."""
    return f"r-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class Store(AdapterRecords):
    """The LoRA Forge database: runs, metrics, samples, adapters, exports and chat votes."""

    default_patience = 0.0  # a background process raises it to JOB_PATIENCE for every store it opens

    def __init__(self, path: str | Path | None = None, busy_timeout: float = 10.0, patience: float | None = None):
        """Open (creating if needed) the database at `path` (default LORAFORGE_HOME/loraforge.db) and
        upgrade its schema. A write waits `busy_timeout` seconds for another process's lock; with `patience`
        (default: the process's default_patience; background jobs, whose work must not be lost to someone
        else's long transaction, set JOB_PATIENCE) it then keeps waiting, a line on stderr each time, up to that
        many seconds in all."""
        self.path = Path(path) if path is not None else paths.home() / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self.patience = Store.default_patience if patience is None else patience
        self._lock = threading.RLock()  # one connection shared by the threads of a process (the web UI)
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            with self._guard():
                self._conn.execute("PRAGMA journal_mode = WAL")
                # WAL: a power cut may lose the last writes, never consistency
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA foreign_keys = ON")
                self.db = Database(self._conn, execute_plugins=False)
            self._migrate()
            self._columns = {table: set(self.db[table].columns_dict) for table in self.db.table_names()}
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions and error translation ---------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the sqlite3 errors a user can cause into messages that say what to do."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise DatabaseDamaged(self.path, str(error)) from None
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise DatabaseBusy(self.path, self.busy_timeout) from None
            raise

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """One short write transaction that holds the write lock from its start: all of it or nothing."""
        with self._lock, self._guard():
            self._begin()
            try:
                yield self.db
                self._conn.execute("COMMIT")
            except BaseException:
                self.db.rollback()
                raise

    def _begin(self) -> None:
        """Take the write lock, retrying while another process holds it and patience lasts: nothing of the
        transaction has run yet, so a retry repeats nothing."""
        started = time.monotonic()
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if (getattr(error, "sqlite_errorcode", 0) & 0xFF) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                waited = max(time.monotonic() - started, self.busy_timeout)
                if waited >= max(self.patience, self.busy_timeout):
                    raise DatabaseBusy(self.path, waited) from None
                print(f"The LoRA Forge database {self.path} is locked by another process; still waiting to write "
                      f"({waited:.0f} s of at most {self.patience:.0f} s).", file=sys.stderr, flush=True)

    def _query(self, table: str, sql: str, params: tuple | dict = ()) -> list[dict]:
        """Rows of `sql` as dicts, with `table`'s JSON columns decoded."""
        with self._lock, self._guard():
            rows = list(self.db.query(sql, params))
        return [decode_row(table, row) for row in rows]

    def _migrate(self) -> None:
        """Bring an older database up to the current schema; all migrations commit together or not at all."""
        with self._lock, self._guard():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        latest = len(store_schema.MIGRATIONS)
        if version > latest:
            raise DatabaseTooNew(self.path, version, latest)
        if version < latest:
            with self._write() as db:
                store_schema.upgrade(db)  # re-reads the version under the lock: another process may have upgraded first

    def _check_columns(self, table: str, fields: dict) -> None:
        unknown = set(fields) - self._columns[table]
        if unknown:
            raise ValueError(f"{table} has no column(s) {sorted(unknown)}; known: {sorted(self._columns[table])}")

    # -- runs ---------------------------------------------------------------------------------------

    def create_run(
        self,
        name: str,
        config: dict,
        base_model: str | None,
        dataset_path: str | Path | None,
        dataset_sha256: str | None,
        run_dir: str | Path | None = None,
        status: str = "queued",
    ) -> str:
        """Record a new run (queued, or running in this process) and return its id.
        `run_dir` defaults to LORAFORGE_HOME/runs/<run id>; the folder itself is the job's to create."""
        with self._write() as db:
            run_id = new_run_id()
            while self._find_run(run_id):
                run_id = new_run_id()
            row = {
                "id": run_id,
                "name": name,
                "config": config,
                "base_model": base_model,
                "dataset_path": None if dataset_path is None else str(dataset_path),
                "dataset_sha256": dataset_sha256,
                "created": now_iso(),
                "run_dir": str(run_dir) if run_dir is not None else str(paths.home() / "runs" / run_id),
            }
            row.update(status_change(run_id, None, status, {}))
            db["runs"].insert(encode_row("runs", row))
        return run_id

    def get_run(self, run_id: str) -> dict:
        """The run as a dict (config and summary decoded); RunNotFound if there is none."""
        run = self._find_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    def list_runs(self, status: str | None = None) -> list[dict]:
        """All runs, or those with `status`, newest first."""
        where, params = ("WHERE status = ?", (check_status(status),)) if status else ("", ())
        return self._query("runs", f"SELECT * FROM runs {where} ORDER BY created DESC, rowid DESC", params)

    def set_status(self, run_id: str, status: str, **fields: Any) -> dict:
        """Move a run to `status`, stamping its times (see run_status.status_change), and return it."""
        self._check_columns("runs", fields)
        with self._write() as db:
            change = status_change(run_id, self.get_run(run_id)["status"], status, fields)
            db["runs"].update(run_id, encode_row("runs", change))
            return self.get_run(run_id)

    def claim_next_queued(self, pid: int, pid_start_time: float | None) -> dict | None:
        """Atomically take the longest-queued run and mark it running for process `pid`; None if none wait.
        The write lock is held from the read to the update, so two claimers never get the same run."""
        with self._write() as db:
            rows = list(db.query("SELECT id FROM runs WHERE status = 'queued' ORDER BY queued, rowid LIMIT 1"))
            if not rows:
                return None
            run_id = rows[0]["id"]
            change = status_change(run_id, "queued", "running", {"pid": pid, "pid_start_time": pid_start_time})
            db["runs"].update(run_id, change)
            return self.get_run(run_id)

    def mark_stale_runs_interrupted(self) -> list[str]:
        """Mark interrupted every running run whose process is gone (pid plus start time); return their ids."""
        changed = []
        for run in self.list_runs("running"):
            if process_alive(run["pid"], run["pid_start_time"]):
                continue
            with self._write() as db:
                # Only if nothing moved it meanwhile (it finished, or a new process claimed it).
                cursor = db.execute(
                    "UPDATE runs SET status = 'interrupted', finished = ?, error = ? "
                    "WHERE id = ? AND status = 'running' AND pid IS ? AND pid_start_time IS ?",
                    (
                        now_iso(),
                        f"The job process (pid {run['pid']}) ended without finishing the run. Resume the run to "
                        "continue from its last checkpoint.",
                        run["id"],
                        run["pid"],
                        run["pid_start_time"],
                    ),
                )
            if cursor.rowcount:
                changed.append(run["id"])
        return changed

    def delete_run(self, run_id: str) -> dict:
        """Forget a run that is not queued or running: its metrics, samples and adapters go with it; exports
        of it stay listed but lose the link. Returns the deleted run; its folder is the caller's to remove."""
        with self._write() as db:
            run = self.get_run(run_id)
            if run["status"] in ("queued", "running"):
                raise RunActive(run_id, run["status"])
            adapter_ids = [row["id"] for row in db.query("SELECT id FROM adapters WHERE run_id = ?", (run_id,))]
            for adapter_id in adapter_ids:
                db.execute("UPDATE exports SET adapter_id = NULL WHERE adapter_id = ?", (adapter_id,))
            db.execute("UPDATE exports SET run_id = NULL WHERE run_id = ?", (run_id,))
            for table in ("metrics", "samples", "adapters"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            return run

    def _find_run(self, run_id: str) -> dict | None:
        rows = self._query("runs", "SELECT * FROM runs WHERE id = ?", (run_id,))
        return rows[0] if rows else None

    # -- metrics and samples ------------------------------------------------------------------------

    def add_metrics(self, run_id: str, rows: list[dict]) -> None:
        """Store metric rows in one transaction. A row for a step and split already stored replaces it
        (a resumed run logs its steps again). `time` defaults to now (Unix seconds)."""
        columns = self._columns["metrics"] - {"run_id"}
        full_rows = []
        for row in rows:
            self._check_columns("metrics", row)
            if row.get("split", "train") not in ("train", "eval"):
                raise ValueError(f"metric split must be 'train' or 'eval', not {row['split']!r}")
            full_rows.append({**{c: row.get(c) for c in columns}, "split": row.get("split", "train"),
                              "time": row.get("time", time.time()), "run_id": run_id})
        with self._write() as db:
            self.get_run(run_id)
            db["metrics"].insert_all(full_rows, replace=True)

    def metrics(self, run_id: str, split: str | None = None) -> list[dict]:
        """Metric rows of a run, by step."""
        where, params = ("AND split = ?", (run_id, split)) if split else ("", (run_id,))
        return self._query("metrics", f"SELECT * FROM metrics WHERE run_id = ? {where} ORDER BY step, split", params)

    def forget_steps_after(self, run_id: str, step: int) -> None:
        """Drop the metrics and samples logged after `step`: a run restarting from its checkpoint at `step` does
        those steps again, and until it logs them anew the old rows would mix two attempts' times and losses."""
        with self._write() as db:
            self.get_run(run_id)
            for table in ("metrics", "samples"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ? AND step > ?", (run_id, step))

    def add_sample(self, run_id: str, step: int, prompt_index: int, prompt: str, output: str) -> None:
        """Store what the model answered to one sample prompt at a checkpoint (replacing an earlier answer)."""
        with self._write() as db:
            self.get_run(run_id)
            row = {"run_id": run_id, "step": step, "prompt_index": prompt_index, "prompt": prompt, "output": output}
            db["samples"].insert(row, replace=True)

    def samples(self, run_id: str) -> list[dict]:
        """Sample outputs of a run, by step then prompt."""
        return self._query("samples", "SELECT * FROM samples WHERE run_id = ? ORDER BY step, prompt_index", (run_id,))

    # -- exports and votes (adapters: core/store/adapters.py) ----------------------------------------

    def add_export(
        self,
        format: str,
        path: str | Path,
        adapter_id: int | None = None,
        run_id: str | None = None,
        parity: dict | None = None,
        status: str = "done",
        **fields: Any,
    ) -> int:
        """Record an export (merged checkpoint, GGUF, ...) of an adapter or run; returns its id. `fields` are
        further columns: the request, process and progress of a background export, its size."""
        self._check_columns("exports", fields)
        row = {"format": format, "path": str(path), "adapter_id": adapter_id, "run_id": run_id,
               "parity": parity, "status": status, "created": now_iso(), **fields}
        with self._write() as db:
            return db["exports"].insert(encode_row("exports", row)).last_pk

    def update_export(self, export_id: int, **fields: Any) -> None:
        """Change an export's fields, e.g. its status and parity figures once the parity check ran."""
        self._check_columns("exports", fields)
        with self._write() as db:
            db["exports"].update(export_id, encode_row("exports", fields))

    def exports(self) -> list[dict]:
        """All exports, newest first."""
        return self._query("exports", "SELECT * FROM exports ORDER BY created DESC, id DESC")

    def get_export(self, export_id: int) -> dict:
        rows = self._query("exports", "SELECT * FROM exports WHERE id = ?", (export_id,))
        if not rows:
            raise ValueError(f"no export with id {export_id}")
        return rows[0]

    def mark_stale_exports_failed(self) -> list[int]:
        """Mark failed every running export whose process is gone (pid plus start time); return their ids."""
        changed = []
        for export in self._query("exports", "SELECT * FROM exports WHERE status = 'running' AND pid IS NOT NULL"):
            if process_alive(export["pid"], export["pid_start_time"]):
                continue
            with self._write() as db:
                cursor = db.execute(
                    "UPDATE exports SET status = 'failed', error = ? WHERE id = ? AND status = 'running'",
                    (f"The export process (pid {export['pid']}) stopped before finishing (killed, or out of "
                     "memory?); its partial files were left aside, never in place. Start the export again.",
                     export["id"]),
                )
            if cursor.rowcount:
                changed.append(export["id"])
        return changed

    def add_vote(self, prompt: str, left: dict, right: dict, winner: str) -> int:
        """Record a side-by-side chat vote; `left`/`right` describe what each side was (base, adapters), and
        `winner` is a side, "tie", or "both_bad" (neither answer was good)."""
        if winner not in VOTE_WINNERS:
            raise ValueError(f"winner must be one of {VOTE_WINNERS}, not {winner!r}")
        row = {"prompt": prompt, "left": left, "right": right, "winner": winner, "created": now_iso()}
        with self._write() as db:
            return db["chat_votes"].insert(encode_row("chat_votes", row)).last_pk

    def votes(self) -> list[dict]:
        """All chat votes, oldest first."""
        return self._query("chat_votes", "SELECT * FROM chat_votes ORDER BY id")
