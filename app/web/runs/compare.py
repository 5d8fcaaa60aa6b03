"""The Runs tab's compare view: two or more runs' loss curves in one plot, and a table with the settings that
differ between them (one column per run) and how each run ended. The differences come from core.store.compare."""

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.web.refusal import refusal
from core.errors import LoraForgeError
from core.store.compare import config_differences, final_figures
from core.store.database import Store

HINT = "Choose two or more runs to overlay their loss curves and list the settings that differ."
OUTCOMES = (("final train loss", "train_loss", "{:.4f}"), ("final eval loss", "eval_loss", "{:.4f}"),
            ("tokens per second", "tokens_per_s", "{:,.0f}"))
# DPO and ORPO runs' own outcomes, listed when a compared run has them
PREFERENCE_OUTCOMES = (("final preference accuracy", "preference_accuracy", "{:.0%}"),
                       ("final reward margin", "reward_margin", "{:.3f}"))


@dataclass
class CompareView:
    """What the tab wires to: the run picker, and `refresh(chosen)` which re-reads the runs it offers."""

    select: gr.Dropdown
    refresh: Callable


def build_compare(store: Store) -> CompareView:
    with gr.Accordion("Compare runs", open=False, elem_id="compare"):
        select = gr.Dropdown(label="Runs to compare", multiselect=True, choices=[], elem_id="compare-select")
        note = gr.Markdown(HINT, elem_id="compare-note")
        plot = gr.LinePlot(x="step", y="loss", color="curve", label="Loss by run (train and eval)",
                           elem_id="compare-plot")
        table = gr.Dataframe(label="Settings that differ, and how each run ended", interactive=False, wrap=True,
                             elem_id="compare-table")

    def refresh(chosen: list[str] | None) -> gr.Dropdown:
        runs = store.list_runs()
        ids = {run["id"] for run in runs}
        return gr.Dropdown(choices=[(f"{run['name']} · {run['id']}", run["id"]) for run in runs],
                           value=[run_id for run_id in chosen or [] if run_id in ids])

    def compare(chosen: list[str] | None):
        try:
            runs = [store.get_run(run_id) for run_id in chosen or []]
        except LoraForgeError as error:  # deleted meanwhile, e.g. from another tab
            raise refusal(error) from None
        if len(runs) < 2:
            return HINT, None, None
        labels = run_labels(runs)
        differences = config_differences([run["config"] or {} for run in runs])
        summary = f"{len(differences)} setting(s) differ." if differences else "All settings are equal."
        return summary, loss_curves(store, runs, labels), diff_table(store, runs, labels, differences)

    # Gradio only swaps the data of a plot already drawn, keeping its legend: clearing it first makes it draw the
    # newly chosen runs' curves afresh.
    select.change(lambda: None, None, plot).then(compare, select, [note, plot, table])
    return CompareView(select=select, refresh=refresh)


def run_labels(runs: list[dict]) -> list[str]:
    """Each run's name, with its id where two chosen runs share a name (legend and columns must stay distinct)."""
    names = [run["name"] for run in runs]
    return [name if names.count(name) == 1 else f"{name} ({run['id']})" for name, run in zip(names, runs)]


def loss_curves(store: Store, runs: list[dict], labels: list[str]) -> pd.DataFrame | None:
    """Every run's train and eval loss by step, one curve per run and split, named for the legend."""
    rows = [(metric["step"], metric["loss"], f"{label} · {metric['split']}")
            for run, label in zip(runs, labels) for metric in store.metrics(run["id"]) if metric["loss"] is not None]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["step", "loss", "curve"]).astype({"step": int, "loss": float})


def diff_table(store: Store, runs: list[dict], labels: list[str], differences: dict[str, list]) -> pd.DataFrame:
    """One row per differing setting, then the final figures; one column per run."""
    rows = [[key, *map(show, values)] for key, values in differences.items()]
    figures = [final_figures(store, run) for run in runs]
    shown = OUTCOMES + tuple(outcome for outcome in PREFERENCE_OUTCOMES if any(f[outcome[1]] is not None
                                                                               for f in figures))
    rows += [[title, *("—" if f[key] is None else form.format(f[key]) for f in figures)]
             for title, key, form in shown]
    return pd.DataFrame(rows, columns=["Setting", *labels])


def show(value) -> str:
    """A setting's value as the table shows it."""
    if value is None or value == []:
        return "—"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)
