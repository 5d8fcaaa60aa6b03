"""The Train tab's base-model picker: a models folder to scan, a table of the models found there (family, size,
and whether they train, with QLoRA, per-example packing and which GGUF export types), and a choice that fills the
base-model setting with the model's path, which the preflight then uses.

The page lists metadata only (core.export.targets reads headers, never weights) and serves no file from the
folder; it scans only a folder it may read (app.web.readable: no hidden or system folders). The last folder
scanned is remembered in settings.json for the next visit.
"""

from dataclasses import dataclass

import gradio as gr

from app.web.readable import check_readable
from core.errors import LoraForgeError
from core.export.targets import COLUMNS, base_model_rows
from core.settings_file import remember, remembered

SETTING = "models_folder"
WIDTHS = ["16%", "9%", "15%", "18%", "10%", "16%", "16%"]  # the columns wrap within the page's width
ASK = "Type the folder that holds your model folders and .gguf files, then **Scan**."


@dataclass
class ModelPicker:
    folder: gr.Textbox
    scan: gr.Button
    note: gr.Markdown
    table: gr.Dataframe
    choice: gr.Dropdown


def build_model_picker() -> ModelPicker:
    with gr.Row(equal_height=True):
        folder = gr.Textbox(lambda: remembered(SETTING), label="Models folder", placeholder="e.g. ~/models",
                            elem_id="models-folder", scale=4)
        scan = gr.Button("Scan", elem_id="models-scan", scale=1)
    note = gr.Markdown(elem_id="models-note")
    table = gr.Dataframe(headers=list(COLUMNS.values()), interactive=False, wrap=True, visible=False,
                         column_widths=WIDTHS, elem_id="models-table", max_height=400)
    choice = gr.Dropdown([], value=None, label="Train on a model found", visible=False, elem_id="models-choice")
    return ModelPicker(folder=folder, scan=scan, note=note, table=table, choice=choice)


def scan_folder(typed: str):
    """The table, the choice of trainable models and a note, for the folder typed."""
    folder = typed.strip()
    if not folder:
        return _nothing(ASK)
    try:
        rows, notes = base_model_rows(check_readable(folder, what="The models folder"))
    except LoraForgeError as error:
        return _nothing(f"**Cannot scan this folder:**\n```\n{error}\n```")
    remember(SETTING, folder)
    choices = [(f"{row.name} · {row.family} · {row.size}", row.path) for row in rows if row.trainable]
    found = (f"Found {len(rows)} model(s), {len(choices)} trainable. Choose one below to train on it."
             if rows else f"No model folders (config.json with weights) or .gguf files in {folder}.")
    table = [[getattr(row, key) for key in COLUMNS] for row in rows]
    return (gr.Dataframe(value=table, visible=bool(rows)),
            gr.Dropdown(choices=choices, value=None, visible=bool(choices)),
            "\n".join([found, *(f"- {note}" for note in notes)]))


def _nothing(note: str):
    return gr.Dataframe(visible=False), gr.Dropdown(choices=[], value=None, visible=False), note


def choose(path: str | None):
    """The chosen model's path, for the base-model setting."""
    return path if path else gr.skip()
