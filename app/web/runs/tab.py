"""The Runs tab: every run with its status, the selected run's live progress, curves, samples and log, and a
view comparing several runs (app.web.runs.compare). This module wires the layout's events to the handlers.

It only reads the store and run folders (through app.web.runs.view) and calls core.jobs.background for Stop and Resume,
so closing or reloading the page never touches a job; a timer re-reads everything while the tab is shown.
Delete asks the browser to confirm first: a misclick must not lose a run.
"""

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app.web.runs.compare import CompareView, build_compare
from app.web.runs.handlers import RunsHandlers
from app.web.runs.layout import build_layout
from core import jobs
from core.store.database import Store

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
    ui = build_layout()
    compare = build_compare(store)
    outputs = [ui.table, ui.selected, ui.bar, ui.stats, ui.plot, ui.preference_plot, ui.samples, ui.log, ui.stop,
               ui.resume, ui.delete]
    act = RunsHandlers(store, outputs)

    ui.timer.tick(lambda run_id: act.render(run_id, newest_if_none=False), ui.selected, outputs, show_progress="hidden")
    ui.selected.input(act.render, ui.selected, outputs)
    ui.table.select(act.pick, ui.table, outputs)
    ui.stop.click(lambda r: act.run_action(jobs.cancel, r, lambda r: f"Run {r} stopped."), ui.selected, outputs)
    ui.resume.click(lambda r: act.run_action(jobs.resume_in_background, r, act.resumed), ui.selected, outputs)
    ui.delete.click(act.delete_confirmed, ui.selected, outputs, js=CONFIRM_DELETE).then(
        compare.refresh, compare.select, compare.select)
    return RunsTab(selected=ui.selected, timer=ui.timer, render=act.render, outputs=outputs, compare=compare)
