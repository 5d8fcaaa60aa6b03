"""The Runs tab's components, top to bottom: the runs table, the chosen run, its progress, Stop, Resume and Delete,
its loss curves, samples and log. Nothing here reacts to anything: app.web.runs.tab wires the events to
app.web.runs.handlers."""

from dataclasses import dataclass

import gradio as gr

from app.web.runs import view as run_view

REFRESH_SECONDS = 2.5
SPLIT_COLOURS = {"train": "#4c78a8", "eval": "#f58518"}  # the same colour for a split whichever comes first


@dataclass
class RunsLayout:
    timer: gr.Timer
    table: gr.Dataframe
    selected: gr.Dropdown
    bar: gr.HTML
    stats: gr.Markdown
    stop: gr.Button
    resume: gr.Button
    delete: gr.Button
    plot: gr.LinePlot
    preference_plot: gr.LinePlot  # DPO and ORPO runs: preference accuracy and reward margin by step
    samples: gr.Dataframe
    log: gr.Code


def build_layout() -> RunsLayout:
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
    preference_plot = gr.LinePlot(x="step", y="value", color="curve", visible=False, elem_id="preference-plot",
                                  label="Preference accuracy and reward margin (train and eval)")
    samples = gr.Dataframe(label="Checkpoint samples (prompt by step)", interactive=False, wrap=True,
                           elem_id="run-samples")
    with gr.Accordion("Log tail", open=False):
        log = gr.Code(language=None, elem_id="run-log", interactive=False)
    return RunsLayout(timer=timer, table=table, selected=selected, bar=bar, stats=stats, stop=stop, resume=resume,
                      delete=delete, plot=plot, preference_plot=preference_plot, samples=samples, log=log)
