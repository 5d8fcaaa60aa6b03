"""One run's folder and every file in it, named in one place for the loop, the jobs, the store and the page.

    runs/<run-id>/
        config.yaml        the run's settings, written once when the run is recorded (again only if they change:
                           an out-of-memory retry halves the micro-batch)
        metrics.jsonl      one row per step and per evaluation   } the job's own record, readable with the folder
        samples.jsonl      the sample answers at each checkpoint } alone; the store holds the same rows
        job.log            plain progress lines (a background job's output, or a terminal run's): the Runs tab's log
        skipped_rows.txt   the rows skip_invalid left out, with their lines and problems
        checkpoints/       step-NNNNNN/ folders (core.training.checkpoint)
        adapter/           the final adapter, in PEFT's format
        result.json        the run's outcome
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.training.config import TrainConfig

METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
JOB_LOG = "job.log"
SKIPPED_ROWS = "skipped_rows.txt"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def job_log(self) -> Path:
        return self.path / JOB_LOG

    @property
    def skipped_rows(self) -> Path:
        return self.path / SKIPPED_ROWS

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    def write_config(self, config: TrainConfig) -> None:
        """Create the folder and write config.yaml, unless it already holds exactly these settings."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.config.is_file() and TrainConfig.from_yaml(self.config) == config):
            config.to_yaml(self.config)

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_yaml(self.config)

    def write_skipped_rows(self, listing: str | None) -> None:
        """Keep the list of rows the run leaves out; with none, drop a list an earlier start wrote (its data was
        fixed before a resume)."""
        if listing is None:
            self.skipped_rows.unlink(missing_ok=True)
        else:
            self.skipped_rows.write_text(listing)

    def forget_rows_after(self, step: int) -> None:
        """Drop the log rows after `step` (a line cut short by a kill goes too): a run restarting from its
        checkpoint at `step` logs those steps again, and a log with both attempts would list them twice."""
        for path in (self.metrics, self.samples):
            if not path.is_file():
                continue
            kept = [line for line in path.read_text().splitlines(keepends=True) if _step_of(line) <= step]
            staging = path.with_suffix(f".partial-{os.getpid()}")
            staging.write_text("".join(kept))
            staging.replace(path)


def append_row(path: Path, row: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")
