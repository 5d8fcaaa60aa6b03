"""The Train tab: choose base and data, see the data and the preflight, set the adapter up, and queue the run.
This module wires the layout's events to the handlers.

Start calls core.jobs.submit, which records the run and hands it to a separate job process: this (UI) process
never runs a training step.
"""

from dataclasses import dataclass

import gradio as gr

from app.web.train.handlers import TrainHandlers
from app.web.train.layout import build_layout
from app.web.train.models import choose, scan_folder
from core.models.loading import LoadedModel
from core.store.database import Store

# Every setting re-runs the preflight as it is typed (its checks are Start's, its estimates depend on most of
# them), except these: the dataset has its own change event, and a run's name and sample prompts change neither.
NOT_PREFLIGHT_INPUTS = ("dataset", "name", "sample_prompts")
# One preflight at a time, in the order asked for, so the last one asked for is the one shown. Each listener was
# its own concurrency group, and two settings typed in quick succession raced: the earlier preflight could finish
# last and leave figures for settings no longer in the form.
PREFLIGHT = dict(concurrency_id="train-preflight")


@dataclass
class TrainTab:
    """What the page wires to: Start's event (chain `.success`) and the id of the run it queued."""

    started: object
    run_id: gr.State


def build_train_tab(loaded: LoadedModel, store: Store) -> TrainTab:
    ui = build_layout(loaded)
    fields, inputs, preflight = ui.fields, list(ui.fields.values()), ui.preflight
    act = TrainHandlers(loaded, store, list(fields))

    models = ui.models
    for event in (models.scan.click, models.folder.submit):
        event(scan_folder, models.folder, [models.table, models.choice, models.note])
    models.choice.input(choose, models.choice, fields["base"]).then(act.run_preflight, inputs, preflight, **PREFLIGHT)
    ui.sample.input(act.choose_sample, ui.sample, [fields["dataset"], fields["eval_file"]])
    ui.upload.upload(act.keep_upload, ui.upload, [fields["dataset"], fields["eval_file"]])
    fields["dataset"].input(act.forget_sample_eval, fields["eval_file"], fields["eval_file"])
    fields["dataset"].change(act.show_dataset, fields["dataset"], [ui.table, ui.summary]).then(
        act.run_preflight, inputs, preflight, **PREFLIGHT)
    for name in (name for name in fields if name not in NOT_PREFLIGHT_INPUTS):
        fields[name].input(act.run_preflight, inputs, preflight, trigger_mode="always_last", **PREFLIGHT)
    for button in ui.presets:
        button.click(act.apply_preset, button, inputs).then(act.run_preflight, inputs, preflight, **PREFLIGHT)
    ui.save.click(act.save_config, inputs, ui.saved)
    ui.load.upload(act.load_config, ui.load, inputs).then(act.run_preflight, inputs, preflight, **PREFLIGHT)
    started = ui.start.click(act.start_run, inputs, [ui.note, ui.run_id])
    return TrainTab(started=started, run_id=ui.run_id)
