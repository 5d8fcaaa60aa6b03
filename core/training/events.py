"""Training events in words: the one wording that a run's job.log, a background job's output and the CLI's
progress lines share, so the Runs tab's log tail reads the same however the run was started."""

import sys
import time


def log_events(kind: str, payload: dict) -> None:
    """Training progress as plain lines on stderr, one per step and event: what a background job writes to its
    job.log."""
    if line := event_line(kind, payload):
        print(timestamped(line), file=sys.stderr, flush=True)


def timestamped(line: str) -> str:
    return f"{time.strftime('%H:%M:%S')} {line}"


def event_line(kind: str, payload: dict) -> str | None:
    """One line about a training event (None for the ones not worth a line, such as samples)."""
    if kind == "metrics" and payload["split"] == "train":
        return (f"step {payload['step']} of {payload['total_steps']}: loss {payload['loss']:.4f}, "
                f"lr {payload['lr']:.2e}, {payload['tokens_per_s']:,.0f} tokens/s{_preference(payload)}")
    if kind == "metrics":
        return f"eval loss at step {payload['step']}: {payload['loss']:.4f}{_preference(payload)}"
    if kind == "checkpoint":
        return f"checkpoint saved at step {payload['step']}: {payload['path']}"
    if kind == "oom_retry":
        return (f"The GPU ran out of memory; retrying with --batch-size {payload['batch_size']} and "
                f"--grad-accum {payload['grad_accum']} (the same effective batch).")
    if kind == "resumed":
        return f"Resuming at step {payload['step']} from {payload['checkpoint']}"
    if kind == "skipped":
        return (f"{payload['rows']} invalid row(s) skipped, as asked; "
                f"listed with their lines and problems in {payload['file']}")
    return None


def _preference(payload: dict) -> str:
    """A DPO or ORPO run's preference figures, after its loss; nothing for SFT."""
    if payload.get("preference_accuracy") is None:
        return ""
    return f", preference accuracy {payload['preference_accuracy']:.0%}, reward margin {payload['reward_margin']:.3f}"
