"""The Adapters & Export tab: every adapter (trained, imported or composed) with its facts, importing a PEFT
folder, composing a weighted set into a new adapter, and exporting one adapter, or a weighted set, as a merged
folder, a GGUF file or a PEFT zip with its parity report.

Compositions and exports run as background jobs (core/export_jobs.py): each loads its own full-precision
base in its own process, so the page stays responsive and can be closed or reloaded meanwhile. Everything
shown is re-read from the store, a timer follows a running job, and a failed check or job is an orange warning.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from app.export_report import (ADAPTER_COLUMNS, EXPORT_COLUMNS, adapters_frame, download_files, exports_frame,
                               report_markdown)
from app.refusal import refusal
from core import paths
from core.composed_adapters import COMPOSED
from core.errors import LoraForgeError
from core.export_gguf import GGUF_TYPES
from core.export_jobs import RUNNING, ExportRequest, refresh, start
from core.devices import DTYPES
from core.export_merged import AUTO_DTYPE
from core.models import LoadedModel
from core.store import Store

FORMATS = [("Merged model folder", "merged"), ("GGUF file (+ Ollama Modelfile)", "gguf"),
           ("PEFT adapter (.zip)", "peft")]
REFRESH_SECONDS = 1.0


@dataclass
class AdaptersTab:
    """What the page wires to: re-reading the adapters and exports when the tab is shown."""

    render: Callable
    outputs: list


def build_adapters_tab(loaded: LoadedModel, store: Store) -> AdaptersTab:
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

    def render(selected: list[str] | None = None):
        """Everything from the store; the timer runs while a job does, so its stage and result appear."""
        exports = refresh(store)
        adapters = store.adapters()
        ids = [str(a["id"]) for a in adapters]
        keep = [value for value in selected or [] if value in ids]  # none chosen for the person: picking one
        # more in a list with a preset choice made a blend of both, exported without a second look
        choice = gr.Dropdown(choices=[(f"{a['name']} · {a['id']}", str(a["id"])) for a in adapters], value=keep)
        latest = exports[0] if exports else None
        files = download_files(latest)
        return (adapters_frame(adapters), choice, exports_frame(exports, adapters), report_markdown(latest),
                gr.File(value=files or None, visible=bool(files)),
                gr.Timer(active=any(e["status"] == RUNNING for e in exports)))

    outputs = [table, chosen, history, report, download, timer]

    def import_folder(path: str, selected: list[str]):
        if not path.strip():
            raise refusal("Type the path of an adapter folder first.")
        try:
            adapter = store.import_adapter(path.strip())
        except LoraForgeError as error:
            raise refusal(str(error)) from None
        gr.Info(f"Imported adapter {adapter['name']} (id {adapter['id']}).")
        return render([*(selected or []), str(adapter["id"])])

    def start_job(selected: list[str], request: ExportRequest):
        try:
            export_id = start(request)
        except LoraForgeError as error:  # kept on screen: it names the fix (another output, Force overwrite, ...)
            raise refusal(str(error), duration=None) from None
        gr.Info(f"Job {export_id} started in the background; it goes on if you close the page.")
        return render(selected)

    def export(selected: list[str], weights_text: str, format: str, quant: str, dtype: str, target: str,
               overwrite: bool):
        rows = _chosen(store, selected)
        request = ExportRequest(_references(rows), format, target.strip() or str(default_out(rows, format)),
                                weights=_weights(weights_text), gguf_type=quant, base=_base(rows, loaded),
                                force=overwrite, merged_dtype=dtype if format == "merged" else AUTO_DTYPE)
        return start_job(selected, request)

    def compose(selected: list[str], weights_text: str, new_name: str):
        rows = _chosen(store, selected)
        request = ExportRequest(_references(rows), COMPOSED, weights=_weights(weights_text), base=_base(rows, loaded),
                                name=new_name)
        return start_job(selected, request)

    def suggest_out(selected: list[str], format: str) -> str:
        rows = [a for a in store.adapters() if str(a["id"]) in (selected or [])]
        return str(default_out(rows, format)) if rows else ""

    import_button.click(import_folder, [folder, chosen], outputs)
    for event in (chosen.change, fmt.change):
        event(suggest_out, [chosen, fmt], out, show_progress="hidden")
    export_button.click(export, [chosen, weights, fmt, gguf_type, merged_dtype, out, force], outputs)
    compose_button.click(compose, [chosen, weights, name], outputs)
    timer.tick(render, chosen, outputs, show_progress="hidden")
    return AdaptersTab(render=lambda: render(), outputs=outputs)


def default_out(adapters: list[dict], format: str) -> Path:
    """LORAFORGE_HOME/exports/<adapter-name>-<format> (the exports folder made here, as the export needs an
    existing parent); a PEFT export is a zip, so the page can offer it for download."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "+".join(a["name"] for a in adapters)).strip("-") or "adapter"
    folder = paths.home() / "exports"
    folder.mkdir(exist_ok=True)
    return folder / f"{name}-{format}{'.zip' if format == 'peft' else ''}"


def _chosen(store: Store, selected: list[str] | None) -> list[dict]:
    by_id = {str(a["id"]): a for a in store.adapters()}
    rows = [by_id[value] for value in selected or [] if value in by_id]
    if not rows:
        raise refusal("Choose one or more adapters in the list first (train one, or import an adapter folder above).")
    return rows


def _weights(text: str) -> list[float] | None:
    if not text.strip():
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise refusal(f"Weights {text!r} are not comma-separated numbers, e.g. 1, 0.5.") from None


def _references(rows: list[dict]) -> list[str]:
    """What core takes for each adapter: its run id when trained here, else its folder."""
    return [row["run_id"] or row["path"] for row in rows]


def _base(rows: list[dict], loaded: LoadedModel) -> str | None:
    """Adapters from runs know their base; imported or composed ones are taken to fit the served base."""
    return None if any(row["run_id"] for row in rows) else loaded.facts.source
