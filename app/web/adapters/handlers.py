"""What the Adapters & Export tab does when a person acts or the timer ticks: each handler returns what the tab's
outputs show (adapters table, adapter choice, exports table, report, downloads, timer), re-read from the store.
Import registers a folder; compose and export start background jobs (core.export.jobs); a refused action raises
app.web.refusal."""

import hashlib
from pathlib import Path

import gradio as gr

from app.web.adapters.report import adapters_frame, download_files, exports_frame, report_markdown
from app.web.readable import check_readable
from app.web.refusal import refusal
from core import paths
from core.errors import LoraForgeError
from core.export.composition import COMPOSED
from core.export.extraction import EXTRACTED, rank_choice
from core.export.jobs import RUNNING, ExportRequest, refresh, start
from core.export.merged import AUTO_DTYPE
from core.jobs.adapters import import_adapter
from core.models.loading import LoadedModel
from core.store.database import Store


class AdaptersHandlers:
    def __init__(self, loaded: LoadedModel, store: Store) -> None:
        self.loaded, self.store = loaded, store

    def render(self, selected: list[str] | None = None):
        """Everything from the store; the timer runs while a job does, so its stage and result appear."""
        exports = refresh(self.store)
        adapters = self.store.adapters()
        ids = [str(a["id"]) for a in adapters]
        keep = [value for value in selected or [] if value in ids]  # none chosen for the person: picking one
        # more in a list with a preset choice made a blend of both, exported without a second look
        choice = gr.Dropdown(choices=[(f"{a['name']} · {a['id']}", str(a["id"])) for a in adapters], value=keep)
        latest = exports[0] if exports else None
        files = download_files(latest)
        return (adapters_frame(adapters), choice, exports_frame(exports, adapters), report_markdown(latest),
                gr.File(value=files or None, visible=bool(files)),
                gr.Timer(active=any(e["status"] == RUNNING for e in exports)))

    def import_folder(self, path: str, selected: list[str]):
        if not path.strip():
            raise refusal("Type the path of an adapter folder first.")
        try:
            adapter = import_adapter(self.store, check_readable(path.strip(), what="The adapter folder"))
        except LoraForgeError as error:
            raise refusal(error) from None
        gr.Info(f"Imported adapter {adapter['name']} (id {adapter['id']}).")
        return self.render([*(selected or []), str(adapter["id"])])

    def start_job(self, selected: list[str], request: ExportRequest):
        try:
            export_id = start(request)
        except LoraForgeError as error:  # kept on screen: it names the fix (another output, Force overwrite, ...)
            raise refusal(error, duration=None) from None
        gr.Info(f"Job {export_id} started in the background; it goes on if you close the page.")
        return self.render(selected)

    def export(self, selected: list[str], weights_text: str, format: str, quant: str, dtype: str, target: str,
               overwrite: bool):
        rows = _chosen(self.store, selected)
        request = ExportRequest(_references(rows), format, target.strip() or str(default_out(rows, format)),
                                weights=_weights(weights_text), gguf_type=quant, base=_base(rows, self.loaded),
                                force=overwrite, merged_dtype=dtype if format == "merged" else AUTO_DTYPE)
        return self.start_job(selected, request)

    def compose(self, selected: list[str], weights_text: str, new_name: str, rank: str = ""):
        """Compose the chosen adapters: the exact sum, or (a rank given) its SVD compression."""
        rows = _chosen(self.store, selected)
        rank = rank.strip()
        if rank and not rank.isdigit():
            raise refusal(f"The rank {rank!r} is not a whole number. Give e.g. 16, or leave it empty for the "
                          "exact sum.")
        request = ExportRequest(_references(rows), COMPOSED, weights=_weights(weights_text),
                                base=_base(rows, self.loaded), name=new_name, rank=int(rank) if rank else None)
        return self.start_job(selected, request)

    def extract(self, selected: list[str], tuned: str, base: str, rank: str, energy: str, new_name: str):
        """Extract an adapter from a fine-tuned model's folder, as a background job like the exports."""
        try:
            rank_value, energy_value = rank_choice(rank, _share(energy))
            request = ExportRequest([], EXTRACTED, base=check_readable(base.strip(), what="The base model"),
                                    tuned=check_readable(tuned.strip(), what="The fine-tuned model"),
                                    name=new_name, rank=rank_value, energy=energy_value)
        except LoraForgeError as error:
            raise refusal(error) from None
        return self.start_job(selected, request)

    def suggest_out(self, selected: list[str], format: str) -> str:
        rows = [a for a in self.store.adapters() if str(a["id"]) in (selected or [])]
        return str(default_out(rows, format)) if rows else ""


def _share(text: str) -> float | None:
    """An energy share typed in the page: empty for none, else a number ('90%' reads as 0.9)."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise LoraForgeError(f"The energy share {text!r} is not a number. Give e.g. 0.9 (or 90%).") from None


def default_out(adapters: list[dict], format: str) -> Path:
    """LORAFORGE_HOME/exports/<adapter-name>-<format> (the exports folder made here, as the export needs an
    existing parent); a PEFT export is a zip, so the page can offer it for download."""
    name = paths.slug("+".join(a["name"] for a in adapters)) or "adapter"
    if len(name) > 80:  # a blend of many adapters: its start, and a short digest so two blends differ
        name = f"{name[:64]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    folder = paths.home() / "exports"
    folder.mkdir(exist_ok=True)
    return paths.named_path(folder, f"{name}-{format}", ".zip" if format == "peft" else "", what="The export name")


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
