"""Votes to data, under the Blind A/B test: the decided votes export as a preference dataset (prompt, chosen,
rejected), downloadable, and one more click queues a DPO run on it with the served base model.

Ties and "both bad" votes prefer neither answer: they are left out and counted, as `launch.py votes export` does.
Like the other chat modes, its layout, handlers and wiring are the three parts of this module.
"""

import time
from dataclasses import dataclass

import gradio as gr

from app.web.refusal import refusal
from core import jobs, paths
from core.chat.votes import write_preference_dataset
from core.errors import LoraForgeError
from core.models.loading import LoadedModel
from core.store.database import Store
from core.training.config import TrainConfig

DPO_EPOCHS = 3  # a few votes make a small dataset: one pass over it would be a handful of steps


@dataclass
class VotesDataLayout:
    export: gr.Button
    note: gr.Markdown
    file: gr.File
    train: gr.Button
    exported: gr.State  # the exported file's path


def build_votes_data_layout() -> VotesDataLayout:
    gr.Markdown("#### Votes as training data\nEvery A or B vote is a preference pair: the winning answer is *chosen*, "
                "the other *rejected*. Ties and 'both bad' are left out.")
    with gr.Row():
        export = gr.Button("Export votes as preference data", elem_id="votes-export")
        train = gr.Button("Train DPO on the exported votes", variant="primary", interactive=False,
                          elem_id="votes-train")
    note = gr.Markdown(elem_id="votes-note")
    file = gr.File(label="Preference dataset (JSONL)", interactive=False, visible=False, elem_id="votes-file")
    return VotesDataLayout(export=export, note=note, file=file, train=train, exported=gr.State(None))


class VotesDataHandlers:
    def __init__(self, loaded: LoadedModel, store: Store, ui: VotesDataLayout) -> None:
        self.loaded, self.store, self.ui = loaded, store, ui

    def export(self) -> dict:
        votes = self.store.votes()
        folder = paths.home() / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"votes-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        counts = write_preference_dataset(votes, path)
        if not counts.pairs:
            path.unlink()
            raise refusal(f"None of the {len(votes)} vote(s) is an A or B vote with both answers kept, so there is "
                          "no preference pair yet. Ask both contenders and vote A or B first.")
        ui = self.ui
        note = (f"**{counts.pairs} preference pair(s)** from {len(votes)} vote(s) in `{path.name}`. Left out: "
                f"{counts.ties} tie(s), {counts.both_bad} both bad, {counts.without_answers} without answers, "
                f"{counts.same_answers} with the same answer on both sides.")
        return {ui.note: note, ui.file: gr.File(value=str(path), visible=True), ui.exported: str(path),
                ui.train: gr.Button(interactive=True)}

    def train(self, exported: str | None) -> str:
        if not exported:
            raise refusal("Export the votes first; the run trains on that file.")
        config = TrainConfig(base=self.loaded.facts.source, dataset=exported, method="dpo", epochs=DPO_EPOCHS,
                             name=f"dpo-{exported.rsplit('/', 1)[-1].removesuffix('.jsonl')}")
        try:
            run_id = jobs.submit(self.store, config, tokenizer=self.loaded.tokenizer)
        except LoraForgeError as error:
            raise refusal(error, duration=None) from None
        return f"DPO run `{run_id}` is queued on the exported votes. Follow it in the **Runs** tab."


def wire_votes_data(ui: VotesDataLayout, act: VotesDataHandlers) -> None:
    ui.export.click(act.export, None, [ui.note, ui.file, ui.exported, ui.train])
    ui.train.click(act.train, ui.exported, ui.note)
