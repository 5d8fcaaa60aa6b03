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
    rank: gr.Textbox
    compose_button: gr.Button
    tuned: gr.Textbox
    extract_base: gr.Textbox
    extract_rank: gr.Textbox
    extract_energy: gr.Textbox
    extract_name: gr.Textbox
    extract_button: gr.Button
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


def build_layout(served_base: str) -> AdaptersLayout:
    table = gr.Dataframe(headers=ADAPTER_COLUMNS, label="Adapters (trained, imported, composed, extracted)",
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
        name = gr.Textbox(label="New adapter's name", placeholder="pirate-dates-mix", elem_id="compose-name", scale=5)
        rank = gr.Textbox(label="Rank (empty: the exact sum)", placeholder="e.g. 16", elem_id="compose-rank", scale=1)
        compose_button = gr.Button("Compose into a new adapter", scale=1, elem_id="compose")
    with gr.Accordion("Extract an adapter from a fully fine-tuned model", open=False):
        with gr.Row(equal_height=True):
            tuned = gr.Textbox(label="Fine-tuned model folder", elem_id="extract-tuned", scale=3,
                               placeholder="/path/to/fine-tuned (config.json and *.safetensors)")
            extract_base = gr.Textbox(served_base, label="Its base model ('default' or a folder)", scale=2,
                                      elem_id="extract-base")
        with gr.Row(equal_height=True):
            extract_rank = gr.Textbox("16", label="Rank (or 'auto' with an energy share)", elem_id="extract-rank")
            extract_energy = gr.Textbox(label="Energy share to keep (with 'auto')", placeholder="e.g. 0.9",
                                        elem_id="extract-energy")
            extract_name = gr.Textbox(label="New adapter's name", elem_id="extract-name", placeholder="from-full-tune")
            extract_button = gr.Button("Extract", elem_id="extract")
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
                          name=name, rank=rank, compose_button=compose_button, tuned=tuned,
                          extract_base=extract_base, extract_rank=extract_rank, extract_energy=extract_energy,
                          extract_name=extract_name, extract_button=extract_button, fmt=fmt, gguf_type=gguf_type,
                          merged_dtype=merged_dtype, out=out, force=force, export_button=export_button, report=report,
                          download=download, history=history, timer=timer)
