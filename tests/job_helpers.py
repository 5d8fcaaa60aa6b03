"""Helpers for the background-job tests: tiny training configs, polling with generous deadlines, CLI runs.

The machine may be loaded (2 cores), so every wait polls a condition until a deadline far beyond the
normal time instead of sleeping a fixed amount; a test fails only if the condition never comes true.
"""

import contextlib
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

from app.cli import main
from core.training.checkpoint import newest_checkpoint
from core.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
DATES = ROOT / "assets" / "samples" / "dates.train.jsonl"


def tiny_config(model_dir: Path, tmp_path: Path, steps: int, save_every: int = 1000, name: str = "tiny") -> TrainConfig:
    """A run on the tiny Llama that takes a fraction of a second per step: 24 rows, no eval, one short sample."""
    data = tmp_path / "dates24.jsonl"
    if not data.exists():
        data.write_text("".join(DATES.read_text().splitlines(keepends=True)[:24]))
    return TrainConfig(base=str(model_dir), dataset=str(data), eval_share=0.0, name=name, max_steps=steps,
                       batch_size=2, max_len=64, save_every=save_every, eval_every=1000, sample_prompts=["hi"],
                       sample_max_new_tokens=2)


def wait_for(condition: Callable[[], object], timeout: float = 120.0, what: str = "condition") -> object:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def runs_json() -> dict[str, dict]:
    """What `launch.py runs --json` prints, by run id (run in this process: it is not the jobs' parent,
    so it learns about them from the store and /proc alone, like a fresh CLI process)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["runs", "--json"]) == 0
    return {run["id"]: run for run in json.loads(out.getvalue())}


def checkpoint_step(run_dir: str | Path) -> int:
    """The step of the run's newest complete checkpoint, 0 if it has none."""
    newest = newest_checkpoint(Path(run_dir))
    return int(newest.name.split("-")[1]) if newest else 0


def supervisor_pid(home: Path) -> int | None:
    """The pid written into the supervisor lock by the supervisor holding it (None before one ran)."""
    text = (home / "supervisor.lock").read_text().strip() if (home / "supervisor.lock").exists() else ""
    return int(text) if text else None
