"""What the Runs tab shows about runs, computed from the store and the run folders only.

Pure functions (no Gradio components), so a reload or a second tab renders the same truth.
"""

import html
import json
import math
import statistics
import time
from pathlib import Path

import pandas as pd

from core import paths
from core.jobs.supervisor import LOG_FILE
from core.store.database import Store
from core.training.run_folder import SKIPPED_ROWS, RunFolder

RUN_COLUMNS = ["Run", "Name", "Status", "Steps", "Train loss", "Created"]
LOG_LINES = 40
RECENT_STEPS, PAUSE_FACTOR = 20, 10  # the time left follows the last 20 steps; a gap 10x the usual one is a pause


def runs_table(runs: list[dict], store: Store) -> pd.DataFrame:
    """One row per run, newest first."""
    rows = []
    for run in runs:
        done, total = progress(run, store)
        loss = (run["summary"] or {}).get("train_loss") or _latest_loss(run, store)
        rows.append([run["id"], run["name"], run["status"], f"{done} / {total or '?'}",
                     "" if loss is None else f"{loss:.4f}", (run["created"] or "")[:19].replace("T", " ")])
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _latest_loss(run: dict, store: Store) -> float | None:
    """The newest logged training loss: what a run without a final summary (running, stopped) has shown last."""
    train = store.metrics(run["id"], "train")
    return train[-1]["loss"] if train else None


def total_steps(run: dict) -> int | None:
    """Planned steps: the run's summary, else the newest metrics.jsonl row (the job writes it every step),
    else max_steps from the config; None before the job has said."""
    summary_total = (run["summary"] or {}).get("total_steps")
    if summary_total:
        return summary_total
    last = _last_line(RunFolder(run["run_dir"]).metrics) if run["run_dir"] else None
    if last and last.get("total_steps"):
        return last["total_steps"]
    return (run["config"] or {}).get("max_steps")


def progress(run: dict, store: Store) -> tuple[int, int | None]:
    """(steps done, steps planned) of a run."""
    train = store.metrics(run["id"], "train")
    return (train[-1]["step"] if train else 0), total_steps(run)


def progress_html(run: dict, store: Store) -> str:
    """A progress bar with steps, percent and the estimated time left."""
    train = store.metrics(run["id"], "train")
    done, total = (train[-1]["step"] if train else 0), total_steps(run)
    share = min(done / total, 1.0) if total else 0.0
    eta = ""
    if run["status"] == "running" and total and len(train) >= 2 and done < total:
        eta = f" · about {_duration(seconds_per_step(train) * (total - done))} left"
    label = f"{run['status']} · step {done} of {total or '?'} ({share:.0%}){eta}"
    return (  # styled by assets/web.css
        f'<div id="progress-track" class="lf-progress" data-status="{run["status"]}" data-step="{done}">'
        f'<div style="width:{share * 100:.1f}%"></div></div>'
        f'<div class="lf-progress-label">{html.escape(label)}</div>'
    )


def seconds_per_step(train: list[dict]) -> float:
    """The recent pace of a run from its train rows' times (two or more rows): the mean of its last steps, leaving
    out any gap ten times the usual one, which is a stop and a resume (or a sleeping laptop), not a step's cost. The
    whole run's average would carry every pause into the time left and miss a pace that changed."""
    paces = [(later["time"] - earlier["time"]) / (later["step"] - earlier["step"])
             for earlier, later in zip(train, train[1:]) if later["step"] > earlier["step"]][-RECENT_STEPS:]
    usual = statistics.median(paces)
    kept = [pace for pace in paces if pace <= PAUSE_FACTOR * usual]
    return sum(kept) / len(kept)


def loss_frame(store: Store, run_id: str) -> pd.DataFrame | None:
    """Train and eval loss by step, long format for one plot with a line per split; None before the first step
    (an empty frame would make the plot take loss for a category). Both splits are always there, eval as one
    empty point before the first evaluation: Gradio fixes a plot's legend and colours to the splits of its first
    drawing, so a split that turned up later would never be drawn."""
    rows = [(m["step"], m["loss"], m["split"]) for m in store.metrics(run_id) if m["loss"] is not None]
    if not rows:
        return None
    if all(split != "eval" for *_, split in rows):
        rows.append((rows[0][0], math.nan, "eval"))
    return pd.DataFrame(rows, columns=["step", "loss", "split"]).astype({"step": int, "loss": float})


PREFERENCE_CURVES = (("preference_accuracy", "accuracy"), ("reward_margin", "margin"))


def preference_frame(metrics: list[dict]) -> pd.DataFrame | None:
    """A DPO or ORPO run's preference accuracy and reward margin by step, train and eval, long format (one curve
    each); None for a run that logs none (SFT). Every curve is there from the first drawing, as in `loss_frame`."""
    rows = [(m["step"], m[key], f"{name} · {m['split']}") for m in metrics for key, name in PREFERENCE_CURVES
            if m.get(key) is not None]
    if not rows:
        return None
    for _, name in PREFERENCE_CURVES:
        for split in ("train", "eval"):
            if not any(curve == f"{name} · {split}" for *_, curve in rows):
                rows.append((rows[0][0], math.nan, f"{name} · {split}"))
    return pd.DataFrame(rows, columns=["step", "value", "curve"]).astype({"step": int, "value": float})


def stats_markdown(run: dict, store: Store) -> str:
    """The newest learning rate, throughput and memory, the rows the run skipped, and its error if it has one."""
    train = store.metrics(run["id"], "train")
    evals = store.metrics(run["id"], "eval")
    lines = [f"**{html.escape(run['name'])}** · `{run['id']}` · base `{run['base_model']}` · "
             f"data `{Path(run['dataset_path'] or '').name}`"]
    if train:
        last = train[-1]
        figures = [f"loss {last['loss']:.4f}", f"lr {last['lr']:.2e}"]
        if last["tokens_per_s"]:
            figures.append(f"{last['tokens_per_s']:,.0f} tokens/s")
        if last["memory_mb"]:
            figures.append(f"{last['memory_mb']:,.0f} MB peak memory")
        if evals:  # the step-0 evaluation is the base's loss: said so, not passed off as the adapter's
            step = evals[-1]["step"]
            figures.append(f"eval loss {evals[-1]['loss']:.4f} at step {step}{' (the base)' if step == 0 else ''}")
        lines.append(" · ".join(figures))
    if ranks := world_line(run):
        lines.append(ranks)
    if run["adapter_dir"]:
        lines.append(f"Adapter: `{run['adapter_dir']}`")
    skipped = RunFolder(run["run_dir"] or "").skipped_rows
    if skipped.is_file():  # the run trained on part of its data: which part is said where its figures are
        # it quotes the rows: no markup of theirs runs
        listing = html.escape(skipped.read_text(errors="replace"), quote=False)
        lines += [f"**Skipped rows** ({SKIPPED_ROWS} in the run folder):", f"<pre>{listing}</pre>"]  # a block of its
        # own: markdown leaves a <pre> that starts a block as it is, and would read `*` or `_` inside one within a line
    if run["error"]:
        lines.append(f"**Note:** {html.escape(run['error'])}")
    return "\n\n".join(lines)


def world_line(run: dict) -> str | None:
    """A run of several processes: how many, their strategy, each rank's peak memory and what a step all-reduced
    (from the newest training row of metrics.jsonl, which rank 0 writes); None for a single process."""
    metrics = RunFolder(run["run_dir"] or "").metrics
    rows = [_parsed(line) for line in reversed(_tail(metrics, 4))] if metrics.is_file() else []
    last = next((row for row in rows if row and row.get("world_size")), None)
    if last is None:
        return None
    strategy = (run["config"] or {}).get("strategy", "ddp")
    memory = " · ".join(f"rank {rank} {mb:,.0f} MB" for rank, mb in enumerate(last["rank_memory_mb"]))
    return (f"**{last['world_size']} processes** ({strategy}) · peak memory {memory} · "
            f"{last['allreduce_bytes'] / 1024:,.1f} KB of adapter gradients all-reduced per step")


def _parsed(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # a line being written right now


def samples_frame(store: Store, run_id: str) -> pd.DataFrame:
    """Checkpoint samples as a grid: one row per prompt, one column per step."""
    samples = store.samples(run_id)
    if not samples:
        return pd.DataFrame(columns=["Prompt"])
    grid = pd.DataFrame(samples).pivot_table(index="prompt", columns="step", values="output", aggfunc="last")
    grid.columns = [f"step {step}" for step in grid.columns]
    return grid.reset_index().rename(columns={"prompt": "Prompt"})


def log_tail(run: dict) -> str:
    """The last lines of the run's job.log, else what the job supervisor logged about this run."""
    own = RunFolder(run["run_dir"] or "").job_log
    if own.is_file():
        return "".join(_tail(own))
    shared = paths.home() / LOG_FILE
    lines = [line for line in _tail(shared, 2000) if run["id"] in line] if shared.is_file() else []
    return "".join(lines[-LOG_LINES:]) or "No log lines yet."


def _tail(path: Path, lines: int = LOG_LINES) -> list[str]:
    with open(path, errors="replace") as handle:
        return handle.readlines()[-lines:]


def _last_line(path: Path) -> dict | None:
    if not path.is_file():
        return None
    for line in reversed(_tail(path, 3)):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
    return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return time.strftime("%H h %M min", time.gmtime(seconds))
