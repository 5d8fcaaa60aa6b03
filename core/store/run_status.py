"""The life of a run: which status may follow which, and which times and fields each move stamps.

Kept apart from the store so the rules read in one place: a completed run is final, and a cancelled
run can be queued again but never turns completed (a job that finishes after its cancel loses).
"""

import os
from datetime import datetime, timezone

from core.errors import NextStep
from core.store.errors import InvalidTransition
from core.store.processes import process_start_time

STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
TRANSITIONS = {
    None: ("queued", "running"),  # a new run
    "queued": ("running", "cancelled", "failed"),
    "running": ("completed", "failed", "cancelled", "interrupted"),
    "interrupted": ("queued", "running", "cancelled", "failed"),
    "failed": ("queued", "running"),
    "cancelled": ("queued", "running"),
    "completed": (),
}


def now_iso() -> str:
    """The current time as ISO-8601 UTC text; same-width text, so it sorts in time order."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_status(status: str) -> str:
    """`status` if it is a run status; ValueError (a bug in the caller) otherwise."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; statuses are {', '.join(STATUSES)}")
    return status


def status_change(run_id: str, current: str | None, status: str, fields: dict) -> dict:
    """The fields to write when a run moves from `current` (None: a new run) to `status`.

    running stamps `started` and records the job process (default: this process); the final statuses
    stamp `finished`; queued clears the previous attempt's finish time, error and process. `fields`
    override the stamps. InvalidTransition if the move is not allowed.
    """
    allowed = TRANSITIONS[current]
    if check_status(status) not in allowed:
        why = f"is already {status}" if current == status else f"is {current}, so it cannot become {status}"
        raise InvalidTransition(
            f"Run {run_id} {why}. A {current} run can become: {', '.join(allowed) or 'nothing, it is final'}.",
            NextStep("runs"),
        )
    now = now_iso()
    if status == "queued":
        stamps = {"queued": now, "finished": None, "error": None, "pid": None, "pid_start_time": None}
    elif status == "running":
        pid = fields.get("pid", os.getpid())
        stamps = {"started": now, "finished": None, "error": None, "pid": pid}
        stamps["pid_start_time"] = process_start_time(pid)
    else:
        stamps = {"finished": now}
    return {**stamps, **fields, "status": status}
