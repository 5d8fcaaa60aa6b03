"""The Runs tab: every run with its status, the selected run's live progress, curves, samples and log, and a
view comparing several runs (app.run_compare).

It only reads the store and run folders (through app.run_view) and calls core.jobs for Stop and Resume,
so closing or reloading the page never touches a job; a timer re-reads everything while the tab is shown.
Delete asks the browser to confirm first: a misclick must not lose a run.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app import run_view
from app.refusal import refusal
from app.run_compare import CompareView, build_compare
from core import jobs
from core.checkpoint import resume_step
from core.errors import LoraForgeError
from core.runs import delete_run
from core.store import Store

REFRESH_SECONDS = 2.5
ACTIVE = ("queued", "running")
SPLIT_COLOURS = {"train": "#4c78a8", "eval": "#f58518"}  # the same colour for a split whichever comes first
# Runs in the browser before the server sees the click: dismissing the dialog sends no run id.
CONFIRM_DELETE = ("(runId) => confirm(`Delete run ${runId}? Its metrics, checkpoints and adapter are removed; "
                  "this cannot be undone.`) ? runId : null")


@dataclass
class RunsTab:
    """What other parts of the page wire to: the chosen run, the refresh timer, re-rendering the tab, and the
    compare view (whose run list is re-read when the tab is shown)."""

    selected: gr.Dropdown
    timer: gr.Timer
    render: Callable
    outputs: list
    compare: CompareView


def build_runs_tab(store: Store) -> RunsTab:
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    table = gr.Dataframe(headers=run_view.RUN_COLUMNS, label="All runs (click a row to open it)",
                         interactive=False, elem_id="runs-table", wrap=True)
    selected = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, elem_id="run-select")
    with gr.Group():
        bar = gr.HTML(elem_id="run-progress")
        stats = gr.Markdown(elem_id="run-stats")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", elem_id="run-stop", interactive=False)
        resume = gr.Button("Resume", elem_id="run-resume", interactive=False)
        delete = gr.Button("Delete", elem_id="run-delete", interactive=False)
    # No fixed height: with one, Gradio sizes the chart to the box and clips the legend below it.
    plot = gr.LinePlot(x="step", y="loss", color="split", label="Loss (train and eval)", elem_id="loss-plot",
                       color_map=SPLIT_COLOURS)
    samples = gr.Dataframe(label="Checkpoint samples (prompt by step)", interactive=False, wrap=True,
                           elem_id="run-samples")
    with gr.Accordion("Log tail", open=False):
        log = gr.Code(language=None, elem_id="run-log", interactive=False)
    compare = build_compare(store)

    def render(run_id: str | None, newest_if_none: bool = True):
        """The tab for `run_id`. None opens the newest run (`newest_if_none`: on opening the tab, not on the
        timer's refreshes); a run that is gone (deleted, here or in another tab) leaves no run chosen, since
        jumping to another one would put its Delete button under the person's pointer."""
        runs = jobs.refresh(store)
        ids = [run["id"] for run in runs]
        if run_id is None and newest_if_none:
            run_id = ids[0] if ids else None
        elif run_id not in ids:
            run_id = None
        choice = gr.Dropdown(choices=[(f"{r['id']} · {r['name']} · {r['status']}", r["id"]) for r in runs],
                             value=run_id)
        frame = run_view.runs_table(runs, store)
        if run_id is None:
            empty = "Choose a run in the table." if runs else "No runs yet. Start one in the Train tab."
            off = gr.Button(interactive=False)
            return frame, choice, "", empty, None, None, "", off, off, off
        run = next(r for r in runs if r["id"] == run_id)
        status = run["status"]
        return (
            frame, choice, run_view.progress_html(run, store), run_view.stats_markdown(run, store),
            run_view.loss_frame(store, run_id), run_view.samples_frame(store, run_id), run_view.log_tail(run),
            gr.Button(interactive=status in ACTIVE), gr.Button(interactive=status in jobs.RESUMABLE),
            gr.Button(interactive=status not in ACTIVE),
        )

    outputs = [table, selected, bar, stats, plot, samples, log, stop, resume, delete]

    def act(action, run_id: str | None, done):
        """Run `action` on the chosen run, then tell the person `done(run_id)`."""
        if not run_id:
            raise refusal("Choose a run first.")
        try:
            action(store, run_id)
        except LoraForgeError as error:
            raise refusal(str(error)) from None
        gr.Info(done(run_id))
        return render(run_id)

    def resumed(run_id: str) -> str:
        step = resume_step(Path(store.get_run(run_id)["run_dir"]))
        if step:
            return f"Run {run_id} queued again; it continues after its checkpoint at step {step}."
        return f"Run {run_id} queued again. It stopped before its first checkpoint, so it starts over from step 1."

    def delete_confirmed(run_id: str | None):
        if run_id is None:  # the person kept the run
            return tuple(gr.skip() for _ in outputs)
        return act(delete_run, run_id, lambda r: f"Run {r} deleted.")

    def pick(frame, event: gr.SelectData):
        return render(frame.iloc[event.index[0], 0])

    timer.tick(lambda run_id: render(run_id, newest_if_none=False), selected, outputs, show_progress="hidden")
    selected.input(render, selected, outputs)
    table.select(pick, table, outputs)
    stop.click(lambda r: act(jobs.cancel, r, lambda r: f"Run {r} stopped."), selected, outputs)
    resume.click(lambda r: act(jobs.resume_in_background, r, resumed), selected, outputs)
    delete.click(delete_confirmed, selected, outputs, js=CONFIRM_DELETE).then(compare.refresh, compare.select,
                                                                             compare.select)
    return RunsTab(selected=selected, timer=timer, render=render, outputs=outputs, compare=compare)
