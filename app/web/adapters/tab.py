"""The Adapters & Export tab: every adapter (trained, imported or composed) with its facts, importing a PEFT
folder, composing a weighted set into a new adapter, and exporting one adapter, or a weighted set, as a merged
folder, a GGUF file or a PEFT zip with its parity report. This module wires the layout's events to the handlers.

Compositions and exports run as background jobs (core/export_jobs.py): each loads its own full-precision
base in its own process, so the page stays responsive and can be closed or reloaded meanwhile. Everything
shown is re-read from the store, a timer follows a running job, and a failed check or job is an orange warning.
"""

from collections.abc import Callable
from dataclasses import dataclass

from app.web.adapters.handlers import AdaptersHandlers
from app.web.adapters.layout import build_layout
from core.models.loading import LoadedModel
from core.store.database import Store


@dataclass
class AdaptersTab:
    """What the page wires to: re-reading the adapters and exports when the tab is shown."""

    render: Callable
    outputs: list


def build_adapters_tab(loaded: LoadedModel, store: Store) -> AdaptersTab:
    ui = build_layout(loaded.facts.source)
    outputs = [ui.table, ui.chosen, ui.history, ui.report, ui.download, ui.timer]
    act = AdaptersHandlers(loaded, store)

    ui.import_button.click(act.import_folder, [ui.folder, ui.chosen], outputs)
    for event in (ui.chosen.change, ui.fmt.change):
        event(act.suggest_out, [ui.chosen, ui.fmt], ui.out, show_progress="hidden")
    ui.export_button.click(act.export, [ui.chosen, ui.weights, ui.fmt, ui.gguf_type, ui.merged_dtype, ui.out, ui.force],
                           outputs)
    ui.compose_button.click(act.compose, [ui.chosen, ui.weights, ui.name, ui.rank], outputs)
    ui.extract_button.click(act.extract, [ui.chosen, ui.tuned, ui.extract_base, ui.extract_rank, ui.extract_energy,
                                          ui.extract_name], outputs)
    ui.timer.tick(act.render, ui.chosen, outputs, show_progress="hidden")
    return AdaptersTab(render=lambda: act.render(), outputs=outputs)
