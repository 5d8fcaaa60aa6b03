"""The Adapters & Export tab: every adapter (trained and imported) with its facts, importing a PEFT folder, and
exporting one adapter, or a weighted set, as a merged folder, a GGUF file or a PEFT zip with its parity report.

An export runs in the server process (it loads its own full-precision copy of the base, so it takes a while
and memory) with its stage shown as progress; one export at a time. Everything shown is re-read from the
store, so a reload or a second tab shows the same truth, and a failed parity check is a visible warning.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from core import paths
from core.errors import LoraForgeError
from core.export import STATUS_DONE, ExportResult, export_adapters
from core.export_gguf import GGUF_TYPES
from core.models import LoadedModel
from core.store import Store

ADAPTER_COLUMNS = ["Id", "Name", "Run", "Base", "Rank", "Alpha", "Targets", "Parameters", "Size"]
EXPORT_COLUMNS = ["Id", "Format", "Adapter", "Status", "Largest logit diff", "Greedy", "Template", "Path", "Created"]
FORMATS = [("Merged model folder", "merged"), ("GGUF file (+ Ollama Modelfile)", "gguf"),
           ("PEFT adapter (.zip)", "peft")]
WARNING_STYLE = "color:#c2410c;font-weight:600"


@dataclass
class AdaptersTab:
    """What the page wires to: re-reading the adapters and exports when the tab is shown."""

    render: Callable
    outputs: list


def build_adapters_tab(loaded: LoadedModel, store: Store) -> AdaptersTab:
    table = gr.Dataframe(headers=ADAPTER_COLUMNS, label="Adapters (trained and imported)", interactive=False,
                         elem_id="adapters-table", wrap=True)
    with gr.Row(equal_height=True):
        folder = gr.Textbox(label="Import adapter folder", scale=6, elem_id="import-path",
                            placeholder="/path/to/adapter (holds adapter_config.json and adapter_model.safetensors)")
        import_button = gr.Button("Import adapter folder", scale=1, elem_id="import")
    gr.Markdown("### Merge and export")
    with gr.Row():
        chosen = gr.Dropdown(label="Adapter (choose several to merge them with weights)", multiselect=True,
                             choices=[], elem_id="export-adapters", scale=2)
        weights = gr.Textbox(label="Weights, one per adapter (empty: 1 each)", placeholder="1, 0.5",
                             elem_id="export-weights", scale=1)
    with gr.Row():
        fmt = gr.Radio(FORMATS, value="merged", label="Format", elem_id="export-format")
        gguf_type = gr.Radio(list(GGUF_TYPES), value="f16", label="GGUF type", elem_id="export-gguf-type")
    with gr.Row(equal_height=True):
        out = gr.Textbox(label="Output folder", elem_id="export-out", scale=6)
        force = gr.Checkbox(label="Force overwrite", elem_id="export-force", scale=1)
    export_button = gr.Button("Export", variant="primary", elem_id="export")
    report = gr.Markdown(elem_id="export-report")
    download = gr.File(label="Download", visible=False, interactive=False, elem_id="export-download")
    history = gr.Dataframe(headers=EXPORT_COLUMNS, label="Exports", interactive=False, elem_id="exports-table",
                           wrap=True)

    def render(selected: list[str] | None = None):
        adapters = store.adapters()
        ids = [str(a["id"]) for a in adapters]
        keep = [value for value in selected or [] if value in ids] or ids[:1]
        choice = gr.Dropdown(choices=[(f"{a['name']} · {a['id']}", str(a["id"])) for a in adapters], value=keep)
        return adapters_frame(adapters), choice, exports_frame(store.exports(), adapters)

    outputs = [table, chosen, history]

    def import_folder(path: str, selected: list[str]):
        if not path.strip():
            raise gr.Error("Type the path of an adapter folder first.")
        try:
            adapter = store.import_adapter(path.strip())
        except LoraForgeError as error:
            raise gr.Error(str(error)) from None
        gr.Info(f"Imported adapter {adapter['name']} (id {adapter['id']}).")
        return render([*(selected or []), str(adapter["id"])])

    def export(selected: list[str], weights_text: str, format: str, quant: str, target: str, overwrite: bool,
               progress=gr.Progress()):
        rows = _chosen(store, selected)
        base = None if any(row["run_id"] for row in rows) else loaded.facts.source  # runs know their base
        try:
            result = export_adapters([row["run_id"] or row["path"] for row in rows], format,
                                     target.strip() or default_out(rows, format), weights=_weights(weights_text),
                                     gguf_type=quant, base=base, force=overwrite,
                                     progress=lambda line: progress(None, desc=line))
        except LoraForgeError as error:
            raise gr.Error(str(error)) from None
        for warning in result.warnings:
            gr.Warning(warning)
        file = _download(result)
        return (report_markdown(result), gr.File(value=file, visible=file is not None),
                exports_frame(store.exports(), store.adapters()))

    def suggest_out(selected: list[str], format: str) -> str:
        rows = [a for a in store.adapters() if str(a["id"]) in (selected or [])]
        return str(default_out(rows, format)) if rows else ""

    import_button.click(import_folder, [folder, chosen], outputs)
    for event in (chosen.change, fmt.change):
        event(suggest_out, [chosen, fmt], out, show_progress="hidden")
    export_button.click(export, [chosen, weights, fmt, gguf_type, out, force], [report, download, history])
    return AdaptersTab(render=lambda: render(), outputs=outputs)


def adapters_frame(adapters: list[dict]) -> pd.DataFrame:
    rows = [[a["id"], a["name"], a["run_id"] or "imported", a["base_model"], a["rank"], a["alpha"],
             ", ".join(a["targets"] or []), f"{a['parameters']:,}", _size(a["size_bytes"])] for a in adapters]
    return pd.DataFrame(rows, columns=ADAPTER_COLUMNS)


def exports_frame(exports: list[dict], adapters: list[dict]) -> pd.DataFrame:
    names = {a["id"]: a["name"] for a in adapters}
    rows = []
    for e in exports:
        check = ((e["parity"] or {}).get("checks") or [{}])[0]
        rows.append([e["id"], e["format"], names.get(e["adapter_id"], e["run_id"] or "several"), e["status"],
                     _figure(check.get("max_logit_diff")), _yes(check.get("greedy_agree"), "agree", "DIFFER"),
                     _yes(check.get("template_same"), "kept", "CHANGED"), e["path"], e["created"]])
    return pd.DataFrame(rows, columns=EXPORT_COLUMNS)


def default_out(adapters: list[dict], format: str) -> Path:
    """LORAFORGE_HOME/exports/<adapter-name>-<format> (the exports folder made here, as the export needs an
    existing parent); a PEFT export is a zip, so the page can offer it for download."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", "+".join(a["name"] for a in adapters)).strip("-") or "adapter"
    folder = paths.home() / "exports"
    folder.mkdir(exist_ok=True)
    return folder / f"{name}-{format}{'.zip' if format == 'peft' else ''}"


def report_markdown(result: ExportResult) -> str:
    """Where the export went and how it compares with the live adapter; a failed check stands out in orange."""
    lines = [f"**Exported** `{result.format}` to `{result.path}` ({_size(result.size_bytes)}) · status "
             f"**{result.status}**", "",
             "| Check | Largest logit difference (tolerance) | Greedy answers | Chat template |", "|---|---|---|---|"]
    for check in result.parity["checks"]:
        lines.append(f"| {check['target']} | {_figure(check['max_logit_diff'])} ({_figure(check['tolerance'])}) | "
                     f"{_yes(check['greedy_agree'], 'agree', 'DIFFER')} ({check['greedy_matches']}/{check['prompts']}"
                     f" prompts) | {_yes(check['template_same'], 'kept', 'CHANGED')} |")
    if result.status != STATUS_DONE:
        lines += ["", *(f'<p style="{WARNING_STYLE}">⚠ {warning}</p>' for warning in result.warnings)]
    return "\n".join(lines)


def _chosen(store: Store, selected: list[str] | None) -> list[dict]:
    by_id = {str(a["id"]): a for a in store.adapters()}
    rows = [by_id[value] for value in selected or [] if value in by_id]
    if not rows:
        raise gr.Error("Choose an adapter to export first (train one, or import an adapter folder above).")
    return rows


def _weights(text: str) -> list[float] | None:
    if not text.strip():
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise gr.Error(f"Weights {text!r} are not comma-separated numbers, e.g. 1, 0.5.") from None


def _download(result: ExportResult) -> str | None:
    """The single file worth downloading: the GGUF, or the PEFT zip; a merged folder has none."""
    path = Path(result.path)
    if path.is_file():
        return str(path)
    return next((str(file) for file in sorted(path.glob("*.gguf"))), None)


def _size(size_bytes: int | None) -> str:
    if size_bytes is None:
        return ""
    return f"{size_bytes / 2**10:,.0f} KB" if size_bytes < 2**20 else f"{size_bytes / 2**20:,.1f} MB"


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def _yes(value: bool | None, good: str, bad: str) -> str:
    return "" if value is None else (good if value else bad)
