"""The database schema as a list of migrations, applied in order on open.

`PRAGMA user_version` holds how many migrations a database has had. To change the schema, append one
function to MIGRATIONS; never edit a released one, because existing databases already ran it.
"""

import json
from collections.abc import Callable

from sqlite_utils import Database

# Columns stored as JSON text and handed back as Python values.
JSON_COLUMNS = {
    "runs": ("config", "summary"),
    "adapters": ("targets",),
    "exports": ("parity", "request"),
    "chat_votes": ("left", "right"),
}


def encode_row(table: str, fields: dict) -> dict:
    """`fields` as stored: the table's JSON columns as JSON text."""
    return {k: json.dumps(v) if k in JSON_COLUMNS.get(table, ()) and v is not None else v for k, v in fields.items()}


def decode_row(table: str, row: dict) -> dict:
    """A stored row with its JSON columns as Python values again."""
    return {k: json.loads(v) if k in JSON_COLUMNS.get(table, ()) and v is not None else v for k, v in row.items()}


def _create_everything(db: Database) -> None:
    """Version 1: runs and everything hanging off them."""
    db["runs"].create(
        {
            "id": str,  # r-YYYYMMDD-HHMMSS-xxxx: sorts by creation time
            "name": str,
            "status": str,
            "config": str,
            "base_model": str,
            "dataset_path": str,
            "dataset_sha256": str,
            "created": str,  # ISO-8601 UTC, like every timestamp here
            "queued": str,  # when it last entered the queue: the queue is FIFO on this
            "started": str,  # when it last started running
            "finished": str,
            "pid": int,
            "pid_start_time": float,  # from core.store.processes.process_start_time, so a reused pid is not mistaken
            "error": str,
            "run_dir": str,
            "adapter_dir": str,
            "summary": str,
        },
        pk="id",
        not_null={"name", "status", "created"},
    )
    db["runs"].create_index(["status", "queued"])
    db["metrics"].create(
        {
            "run_id": str,
            "step": int,
            "split": str,  # train or eval
            "loss": float,
            "lr": float,
            "grad_norm": float,
            "tokens_per_s": float,
            "memory_mb": float,
            "tokens": int,
            "time": float,  # Unix time when the step was logged
        },
        pk=("run_id", "step", "split"),  # a resumed run re-logging a step replaces the old row
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["samples"].create(
        {"run_id": str, "step": int, "prompt_index": int, "prompt": str, "output": str},
        pk=("run_id", "step", "prompt_index"),
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["adapters"].create(
        {
            "id": int,
            "name": str,
            "path": str,
            "run_id": str,
            "base_model": str,
            "rank": int,
            "alpha": float,
            "targets": str,
            "parameters": int,
            "size_bytes": int,
            "created": str,
            "source": str,  # trained or imported
        },
        pk="id",
        not_null={"name", "path", "created", "source"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["adapters"].create_index(["path"], unique=True)
    db["exports"].create(
        {
            "id": int,
            "adapter_id": int,
            "run_id": str,
            "format": str,
            "path": str,
            "created": str,
            "parity": str,
            "status": str,
        },
        pk="id",
        not_null={"format", "path", "created", "status"},
        foreign_keys=[("adapter_id", "adapters", "id"), ("run_id", "runs", "id")],
    )
    db["chat_votes"].create(
        {"id": int, "created": str, "prompt": str, "left": str, "right": str, "winner": str},
        pk="id",
        not_null={"created", "prompt", "winner"},
    )


def _exports_in_background(db: Database) -> None:
    """Version 2: an export (or a composition) runs in its own process, so its row records what was asked,
    which process does it, the stage it has reached, its size and why it failed."""
    for column, kind in (("request", str), ("pid", int), ("pid_start_time", float), ("progress", str),
                         ("error", str), ("size_bytes", int)):
        db["exports"].add_column(column, kind)


def _preference_metrics(db: Database) -> None:
    """Version 3: DPO and ORPO runs log their rewards, reward margin and preference accuracy per step."""
    for column in ("reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy"):
        db["metrics"].add_column(column, float)


MIGRATIONS: list[Callable[[Database], None]] = [_create_everything, _exports_in_background, _preference_metrics]


def upgrade(db: Database) -> None:
    """Run the migrations this database has not had, inside the caller's transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
        migrate(db)
        db.execute(f"PRAGMA user_version = {number}")
