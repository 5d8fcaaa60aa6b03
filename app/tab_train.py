"""The Train tab: choose base and data, see the data and the preflight, set the adapter up, and queue the run.

Start calls core.jobs.submit, which records the run and hands it to a separate job process: this (UI)
process never runs a training step.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from app.model_facts import describe_model
from app.refusal import refusal
from app.train_form import PRESET_VALUES, build_form, form_values, to_config
from app.train_preview import PREVIEW_COLUMNS, preflight_view, preview
from core import jobs, paths
from core.errors import LoraForgeError
from core.models import LoadedModel, load_tokenizer
from core.runs import file_sha256
from core.store import Store
from core.train_config import TrainConfig

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"
DATASET_TYPES = [".jsonl", ".json", ".csv", ".parquet"]
NO_DATASET = "Choose a dataset to see what the run would train on."
# Settings whose change alters the preflight figures (steps, lengths, memory).
# Every setting re-runs the preflight as it is typed (its checks are Start's, its estimates depend on most of
# them), except these: the dataset has its own change event, and a run's name and sample prompts change neither.
NOT_PREFLIGHT_INPUTS = ("dataset", "name", "sample_prompts")


@dataclass
class TrainTab:
    """What the page wires to: Start's event (chain `.success`) and the id of the run it queued."""

    started: object
    run_id: gr.State


def sample_names() -> list[str]:
    return sorted(path.name.removesuffix(".train.jsonl") for path in SAMPLES.glob("*.train.jsonl"))


def build_train_tab(loaded: LoadedModel, store: Store) -> TrainTab:
    defaults = TrainConfig(base=loaded.facts.source, quant="nf4" if torch.cuda.is_available() else "none")
    gr.Markdown("### 1 · Base model")
    fields = {"base": gr.Textbox(defaults.base, label="Base model: 'default', a model folder, a .gguf file or a hub id",
                                 elem_id="cfg-base")}
    gr.Markdown(f"Served now: {describe_model(loaded.facts)}")
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
    preflight_outputs = [checks, lengths, memory, example]
    with gr.Row():
        save = gr.Button("Save config as YAML", elem_id="save-config")
        load = gr.UploadButton("Load config YAML", file_types=[".yaml", ".yml"], elem_id="load-config")
        saved = gr.File(label="Config file", interactive=False, elem_id="config-file", visible=False)
    start = gr.Button("Start training", variant="primary", elem_id="start")
    note = gr.Markdown(elem_id="start-note")
    run_id = gr.State()

    names = list(fields)
    inputs = list(fields.values())

    def values_of(values: tuple) -> dict:
        return dict(zip(names, values))

    def fill(config: TrainConfig) -> list:
        shown = {**form_values(config), "base": config.base, "dataset": config.dataset}
        return [shown[name] for name in names]

    def show_dataset(source: str):
        if not source.strip():
            return None, ""
        try:
            return preview(source.strip())
        except LoraForgeError as error:
            gr.Warning(str(error))
            return None, f"**Cannot read this dataset:**\n```\n{error}\n```"

    def run_preflight(*values):
        current = values_of(values)
        if not current["dataset"].strip():
            return NO_DATASET, "", "", ""
        try:
            return preflight_view(to_config(current), loaded)
        except LoraForgeError as error:
            return f"**Not ready:**\n```\n{error}\n```", "", "", ""

    def choose_sample(name: str | None):
        if not name:
            return gr.skip(), gr.skip()
        evals = SAMPLES / f"{name}.eval.jsonl"
        return str(SAMPLES / f"{name}.train.jsonl"), str(evals) if evals.is_file() else ""

    def forget_sample_eval(eval_file: str):
        """Typing another dataset drops the bundled sample's eval file that choosing the sample filled in."""
        return "" if eval_file and Path(eval_file).parent == SAMPLES else gr.skip()

    def keep_upload(path: str | None):
        if not path:
            return gr.skip(), gr.skip()
        return str(copy_upload(Path(path))), ""

    def start_run(*values):
        try:
            config = to_config(values_of(values))
            # the rows are rendered with the run's own tokenizer: the served one when the run's base is served
            tokenizer = loaded.tokenizer if config.base == loaded.facts.source else load_tokenizer(config.base)
            new_id = jobs.submit(store, config, tokenizer=tokenizer)
        except LoraForgeError as error:
            raise refusal(str(error), duration=None) from None
        return f"Run `{new_id}` is queued. Follow it in the **Runs** tab.", new_id

    def save_config(*values):
        try:
            config = to_config(values_of(values), need_dataset=False)  # settings alone make a template
        except LoraForgeError as error:
            raise refusal(str(error)) from None
        folder = paths.home() / "configs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{config.name or Path(config.dataset).stem or 'train'}.yaml"
        config.to_yaml(path)
        return gr.File(value=str(path), visible=True)

    def load_config(path: str):
        try:
            return fill(TrainConfig.from_yaml(Path(path), name=Path(path).name))
        except LoraForgeError as error:
            raise refusal(str(error)) from None

    def apply_preset(name: str):
        return [PRESET_VALUES[name].get(n, gr.skip()) for n in names]

    sample.input(choose_sample, sample, [fields["dataset"], fields["eval_file"]])
    upload.upload(keep_upload, upload, [fields["dataset"], fields["eval_file"]])
    fields["dataset"].input(forget_sample_eval, fields["eval_file"], fields["eval_file"])
    fields["dataset"].change(show_dataset, fields["dataset"], [table, summary]).then(
        run_preflight, inputs, preflight_outputs)
    for name in (name for name in fields if name not in NOT_PREFLIGHT_INPUTS):
        fields[name].input(run_preflight, inputs, preflight_outputs, trigger_mode="always_last")
    for button in presets:
        button.click(apply_preset, button, inputs).then(run_preflight, inputs, preflight_outputs)
    save.click(save_config, inputs, saved)
    load.upload(load_config, load, inputs).then(run_preflight, inputs, preflight_outputs)
    started = start.click(start_run, inputs, [note, run_id])
    return TrainTab(started=started, run_id=run_id)


def copy_upload(path: Path) -> Path:
    """Keep an uploaded dataset under LORAFORGE_HOME/uploads (Gradio's temp copy may vanish before a resume)."""
    target = paths.home() / "uploads" / file_sha256(path)[:12] / path.name  # messages and run names keep its name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(path, target)
    return target
