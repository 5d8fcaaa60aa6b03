"""Blind A/B: two contenders answer one prompt as "A" and "B", assigned at random for every prompt; the user
votes before seeing who was who, the vote is stored, and the win-rate table follows.

Which contender is A lives only in the server-side round state (`pending`), never in the page, until the vote
is cast. Like every chat mode (see app.web.chat.single), its layout, handlers and wiring are the three parts
of this module.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.web.chat.picker import Picker, build_picker, picker_inputs, resolve
from app.web.chat.stream import SharedSettings, stream, wire_prompt
from app.web.refusal import refusal
from core.chat.votes import standings
from core.errors import LoraForgeError
from core.models.loading import LoadedModel
from core.store.database import Store

VOTES = [("A is better", "left", "vote-a"), ("B is better", "right", "vote-b"), ("Tie", "tie", "vote-tie"),
         ("Both bad", "both_bad", "vote-bad")]
WIN_RATE_COLUMNS = ["Contender", "Votes", "Wins", "Losses", "Ties", "Both bad", "Win rate"]


@dataclass
class BlindLayout:
    pickers: list[Picker]
    chats: list[gr.Chatbot]  # A, B
    prompt: gr.Textbox
    send: gr.Button
    buttons: list[gr.Button]  # in VOTES order
    reveal: gr.Markdown
    table: gr.Dataframe
    pending: gr.State  # {"prompt", "left": A, "right": B} until voted

    @property
    def cleared(self) -> list:
        """What clearing the conversations resets: the round, its answers, and the vote they were waiting for."""
        return [self.pending, self.reveal, *self.chats, *self.buttons]


def build_blind_layout() -> BlindLayout:
    gr.Markdown("Pick two contenders. For every prompt they answer as **A** and **B** in a random order; "
                "vote to see who was who.")
    with gr.Row():
        pickers = [build_picker("Contender 1", "blind-1"), build_picker("Contender 2", "blind-2")]
    with gr.Row(equal_height=True):
        chats = [gr.Chatbot(label=side, elem_id=f"blind-{side.lower()}-chat", height=320) for side in "AB"]
    with gr.Row():
        prompt = gr.Textbox(placeholder="One prompt, A and B answer…", show_label=False, scale=8,
                            elem_id="blind-prompt")
        send = gr.Button("Ask both", variant="primary", scale=1, elem_id="blind-send")
    with gr.Row():
        buttons = [gr.Button(label, interactive=False, elem_id=elem_id) for label, _, elem_id in VOTES]
    reveal = gr.Markdown(elem_id="blind-reveal")
    table = gr.Dataframe(headers=WIN_RATE_COLUMNS, label="Win rates from blind votes (a tie or both bad counts "
                         "half a win)", interactive=False, elem_id="win-rates")
    return BlindLayout(pickers=pickers, chats=chats, prompt=prompt, send=send, buttons=buttons, reveal=reveal,
                       table=table, pending=gr.State(None))


class BlindHandlers:
    def __init__(self, loaded: LoadedModel, store: Store, settings: SharedSettings, ui: BlindLayout) -> None:
        self.loaded, self.store, self.settings, self.ui = loaded, store, settings, ui

    def voting(self, open_: bool) -> dict:
        return {button: gr.Button(interactive=open_) for button in self.ui.buttons}

    def ask(self, data: dict):
        ui = self.ui
        text = data[ui.prompt]
        sampling = self.settings.sampling(data, text)
        first, second = resolve(self.loaded, self.store, ui.pickers, data)
        if first[0].key == second[0].key:
            raise refusal(f"Both contenders are {first[0].label}; choose two different ones to compare.")
        sides = random.sample([first, second], 2)
        yield {ui.prompt: "", ui.pending: None, ui.reveal: "A and B are answering…", **{chat: [] for chat in ui.chats},
               **self.voting(False)}
        system, answers = (data[self.settings.system] or "").strip(), []
        for chat, (_, gains) in zip(ui.chats, sides):
            for history in stream(self.loaded, gains, text, [], system, sampling):
                yield {chat: history}
            answers.append(history[-1]["content"] if history[-1]["role"] == "assistant" else "")
        # each side keeps its answer (and the system prompt it answered under): a vote is then a preference pair
        left, right = ({**contender.describe(), "answer": answer, "system": system}
                       for (contender, _), answer in zip(sides, answers))
        yield {ui.pending: {"prompt": text, "left": left, "right": right},
               ui.reveal: "Which answer is better? Vote to see who was who.", **self.voting(True)}

    def voter(self, winner: str, verdict: str) -> Callable:
        """One vote button's handler: it stores the vote on the pending round, then tells who was who."""
        def cast(round_: dict | None):
            if round_ is None:
                raise refusal("Ask both contenders a prompt first; each pair of answers takes one vote.")
            try:
                self.store.add_vote(round_["prompt"], round_["left"], round_["right"], winner)
            except LoraForgeError as error:
                raise refusal(error) from None
            told = (f"**A** was **{round_['left']['label']}**, **B** was **{round_['right']['label']}**. "
                    f"You voted: {verdict}. Saved.")
            ui = self.ui
            return {ui.pending: None, ui.reveal: told, ui.table: self.render(), **self.voting(False)}
        return cast

    def render(self) -> pd.DataFrame:
        rows = [[s.label, s.votes, s.wins, s.losses, s.ties, s.both_bad, f"{s.win_rate:.0%}"]
                for s in standings(self.store.votes())]
        return pd.DataFrame(rows, columns=WIN_RATE_COLUMNS)

    def clear(self) -> dict:
        """Values for `cleared`."""
        ui = self.ui
        return {ui.pending: None, ui.reveal: "", **{chat: [] for chat in ui.chats}, **self.voting(False)}


def wire_blind(ui: BlindLayout, act: BlindHandlers, settings: SharedSettings) -> None:
    inputs = {ui.prompt, *settings.components, *picker_inputs(ui.pickers)}
    wire_prompt(ui.prompt, ui.send, act.ask, inputs, [ui.prompt, ui.pending, ui.reveal, *ui.chats, *ui.buttons])
    for button, (verdict, winner, _) in zip(ui.buttons, VOTES):
        button.click(act.voter(winner, verdict), ui.pending, [ui.pending, ui.reveal, ui.table, *ui.buttons])
