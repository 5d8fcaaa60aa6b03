"""The Adapters & Export tab's components, top to bottom: the adapters table, importing a folder, composing and
exporting settings, the report, downloads and the exports table. Nothing here reacts to anything:
app.web.adapters.tab wires the events to app.web.adapters.handlers."""

from dataclasses import dataclass

import gradio as gr

from app.web.adapters.report import ADAPTER_COLUMNS, EXPORT_COLUMNS
from core.export.gguf import GGUF_TYPES
from core.export.merged import AUTO_DTYPE
from core.models.devices import DTYPES

FORMATS = [("Merged model folder", "merged"), ("GGUF file (+ Ollama Modelfile)", "gguf"),
           ("PEFT adapter (.zip)", "peft")]
REFRESH_SECONDS = 1.0


@dataclass
class AdaptersLayout:
    table: gr.Dataframe
    folder: gr.Textbox
    import_button: gr.Button
    chosen: gr.Dropdown
    weights: gr.Textbox
    name: gr.Textbox
    compose_button: gr.Button
    fmt: gr.Radio
    gguf_type: gr.Radio
    merged_dtype: gr.Radio
    out: gr.Textbox
    force: gr.Checkbox
    export_button: gr.Button
    report: gr.Markdown
    download: gr.File
    history: gr.Dataframe
    timer: gr.Timer


def build_layout() -> AdaptersLayout:
    table = gr.Dataframe(headers=ADAPTER_COLUMNS, label="Adapters (trained, imported and composed)",
                         interactive=False, elem_id="adapters-table", wrap=True)
    with gr.Row(equal_height=True):
        folder = gr.Textbox(label="Import adapter folder", scale=6, elem_id="import-path",
                            placeholder="/path/to/adapter (holds adapter_config.json and adapter_model.safetensors)")
        import_button = gr.Button("Import adapter folder", scale=1, elem_id="import")
    gr.Markdown("### Compose, merge and export")
    with gr.Row():
        chosen = gr.Dropdown(label="Adapter (choose several to combine them with weights)", multiselect=True,
                             choices=[], elem_id="export-adapters", scale=2)
        weights = gr.Textbox(label="Weights, one per adapter (empty: 1 each)", placeholder="1, 0.5",
                             elem_id="export-weights", scale=1)
    with gr.Row(equal_height=True):
        name = gr.Textbox(label="New adapter's name", placeholder="pirate-dates-mix", elem_id="compose-name", scale=6)
        compose_button = gr.Button("Compose into a new adapter", scale=1, elem_id="compose")
    with gr.Row():
        fmt = gr.Radio(FORMATS, value="merged", label="Format", elem_id="export-format")
        gguf_type = gr.Radio(list(GGUF_TYPES), value="f16", label="GGUF type", elem_id="export-gguf-type")
        merged_dtype = gr.Radio([AUTO_DTYPE, *DTYPES], value=AUTO_DTYPE, elem_id="export-merged-dtype",
                                label="Merged weights (auto: as the base is stored)")
    with gr.Row(equal_height=True):
        out = gr.Textbox(label="Output folder", elem_id="export-out", scale=6)
        force = gr.Checkbox(label="Force overwrite", elem_id="export-force", scale=1)
    export_button = gr.Button("Export", variant="primary", elem_id="export")
    report = gr.Markdown(elem_id="export-report")
    download = gr.File(label="Download", file_count="multiple", visible=False, interactive=False,
                       elem_id="export-download")
    history = gr.Dataframe(headers=EXPORT_COLUMNS, label="Exports and compositions", interactive=False,
                           elem_id="exports-table", wrap=True)
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    return AdaptersLayout(table=table, folder=folder, import_button=import_button, chosen=chosen, weights=weights,
                          name=name, compose_button=compose_button, fmt=fmt, gguf_type=gguf_type,
                          merged_dtype=merged_dtype, out=out, force=force, export_button=export_button, report=report,
                          download=download, history=history, timer=timer)
