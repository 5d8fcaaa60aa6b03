"""The Train tab's components, top to bottom: base, dataset, adapter and training settings, preflight, Start.
Nothing here reacts to anything: app.web.train.tab wires the events to app.web.train.handlers."""

from dataclasses import dataclass

import gradio as gr
import torch

from app.web.model_facts import describe_model
from app.web.readable import SAMPLES
from app.web.train.form import PRESET_VALUES, build_form
from app.web.train.models import ModelPicker, build_model_picker
from app.web.train.preview import PREVIEW_COLUMNS
from core.models.loading import LoadedModel
from core.training.config import TrainConfig
from core.training.distributed import default_processes

DATASET_TYPES = [".jsonl", ".json", ".csv", ".parquet"]
NO_DATASET = "Choose a dataset to see what the run would train on."


@dataclass
class TrainLayout:
    fields: dict[str, gr.Component]  # one per TrainConfig setting shown, by field name
    models: ModelPicker
    sample: gr.Dropdown
    upload: gr.File
    summary: gr.Markdown
    table: gr.Dataframe
    presets: list[gr.Button]
    preflight: list[gr.Component]  # figures, length histogram, memory gauge, highlighted example
    save: gr.Button
    load: gr.UploadButton
    saved: gr.File
    start: gr.Button
    note: gr.Markdown
    run_id: gr.State


def sample_names() -> list[str]:
    return sorted(path.name.removesuffix(".train.jsonl") for path in SAMPLES.glob("*.train.jsonl"))


def build_layout(loaded: LoadedModel) -> TrainLayout:
    defaults = TrainConfig(base=loaded.facts.source, quant="nf4" if torch.cuda.is_available() else "none",
                           nproc=default_processes())
    gr.Markdown("### 1 · Base model")
    fields = {"base": gr.Textbox(defaults.base, label="Base model: 'default', a model folder, a .gguf file or a hub id",
                                 elem_id="cfg-base")}
    gr.Markdown(f"Served now: {describe_model(loaded.facts)}")
    models = build_model_picker()
    gr.Markdown("### 2 · Dataset")
    with gr.Row():
        sample = gr.Dropdown(sample_names(), value=None, label="Bundled sample", elem_id="sample-select")
        upload = gr.File(label="Or upload a file (JSONL, JSON, CSV, Parquet)", file_types=DATASET_TYPES,
                         type="filepath", elem_id="dataset-upload", height=120)
    fields["dataset"] = gr.Textbox(label="Dataset file (or type a local path)", elem_id="cfg-dataset")
    summary = gr.Markdown(elem_id="dataset-summary")
    table = gr.Dataframe(headers=PREVIEW_COLUMNS, label="First rows", interactive=False, wrap=True,
                         elem_id="dataset-preview", max_height=260)
    gr.Markdown("### 3 · Adapter and training")
    with gr.Row():
        presets = [gr.Button(name, size="sm", elem_id=f"preset-{name.lower().replace(' ', '-')}")
                   for name in PRESET_VALUES]
    fields.update(build_form(defaults))
    gr.Markdown("### 4 · Preflight")
    checks = gr.Markdown(NO_DATASET, elem_id="preflight")
    with gr.Row(equal_height=False):
        lengths = gr.HTML(elem_id="preflight-lengths", scale=3)
        memory = gr.HTML(elem_id="preflight-memory", scale=2)
    example = gr.HTML(elem_id="preflight-example")
    with gr.Row():
        save = gr.Button("Save config as YAML", elem_id="save-config")
        load = gr.UploadButton("Load config YAML", file_types=[".yaml", ".yml"], elem_id="load-config")
        saved = gr.File(label="Config file", interactive=False, elem_id="config-file", visible=False)
    start = gr.Button("Start training", variant="primary", elem_id="start")
    note = gr.Markdown(elem_id="start-note")
    return TrainLayout(fields=fields, models=models, sample=sample, upload=upload, summary=summary, table=table,
                       presets=presets, preflight=[checks, lengths, memory, example], save=save, load=load,
                       saved=saved, start=start, note=note, run_id=gr.State())
