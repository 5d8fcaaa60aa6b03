"""A run folder's JSON-lines logs, one row per line: metrics.jsonl (every step, and every evaluation) and
samples.jsonl (the sample answers at each checkpoint). They are the job's own record, readable with the run
folder alone; the store holds the same rows for the UI. Beside them, job.log holds plain progress lines."""

import json
import os
from pathlib import Path

METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
JOB_LOG = "job.log"  # plain progress lines, from a background job or a terminal's run: the Runs tab shows them


def append_row(path: Path, row: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def forget_rows_after(run_dir: Path, step: int) -> None:
    """Drop the rows logged after `step` (a line cut short by a kill goes too): a run restarting from its
    checkpoint at `step` logs those steps again, and a log with both attempts would list them twice."""
    for path in (Path(run_dir) / METRICS, Path(run_dir) / SAMPLES):
        if not path.is_file():
            continue
        kept = [line for line in path.read_text().splitlines(keepends=True) if _step_of(line) <= step]
        staging = path.with_suffix(f".partial-{os.getpid()}")
        staging.write_text("".join(kept))
        staging.replace(path)


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
