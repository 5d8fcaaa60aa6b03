"""Blind A/B: two contenders answer one prompt as "A" and "B", assigned at random for every prompt; the user
votes before seeing who was who, the vote is stored, and the win-rate table follows.

Which contender is A lives only in the server-side round state, never in the page, until the vote is cast.
"""

import random
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.chat_picker import Picker, build_picker, resolve
from app.chat_stream import MODEL_QUEUE, SharedSettings, stream
from app.refusal import refusal
from core.errors import LoraForgeError
from core.models import LoadedModel
from core.store import Store
from core.votes import standings

VOTES = [("A is better", "left", "vote-a"), ("B is better", "right", "vote-b"), ("Tie", "tie", "vote-tie"),
         ("Both bad", "both_bad", "vote-bad")]
WIN_RATE_COLUMNS = ["Contender", "Votes", "Wins", "Losses", "Ties", "Both bad", "Win rate"]


@dataclass
class Blind:
    """What the tab wires to: the two selectors, re-reading the win rates when the tab is shown, and clearing
    the round (its answers, and the vote they were waiting for) with the other conversations."""

    pickers: list[Picker]
    render: Callable[[], pd.DataFrame]
    table: gr.Dataframe
    clear: Callable[[], dict]
    cleared: list


def build_blind(loaded: LoadedModel, store: Store, settings: SharedSettings) -> Blind:
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
    pending = gr.State(None)  # {"prompt", "left": A, "right": B} until voted

    def voting(open_: bool) -> dict:
        return {button: gr.Button(interactive=open_) for button in buttons}

    def ask(data: dict):
        text = data[prompt]
        sampling = settings.sampling(data, text)
        first, second = resolve(loaded, store, pickers, data)
        if first[0].key == second[0].key:
            raise refusal(f"Both contenders are {first[0].label}; choose two different ones to compare.")
        sides = random.sample([first, second], 2)
        yield {prompt: "", pending: None, reveal: "A and B are answering…", **{chat: [] for chat in chats},
               **voting(False)}
        for chat, (_, gains) in zip(chats, sides):
            for history in stream(loaded, gains, text, [], data[settings.system], sampling):
                yield {chat: history}
        yield {pending: {"prompt": text, "left": sides[0][0].describe(), "right": sides[1][0].describe()},
               reveal: "Which answer is better? Vote to see who was who.", **voting(True)}

    def voter(winner: str, verdict: str) -> Callable:
        def cast(round_: dict | None):
            if round_ is None:
                raise refusal("Ask both contenders a prompt first; each pair of answers takes one vote.")
            try:
                store.add_vote(round_["prompt"], round_["left"], round_["right"], winner)
            except LoraForgeError as error:
                raise refusal(str(error)) from None
            told = (f"**A** was **{round_['left']['label']}**, **B** was **{round_['right']['label']}**. "
                    f"You voted: {verdict}. Saved.")
            return {pending: None, reveal: told, table: render(), **voting(False)}
        return cast

    def render() -> pd.DataFrame:
        rows = [[s.label, s.votes, s.wins, s.losses, s.ties, s.both_bad, f"{s.win_rate:.0%}"]
                for s in standings(store.votes())]
        return pd.DataFrame(rows, columns=WIN_RATE_COLUMNS)

    inputs = {prompt, *settings.components}
    inputs |= {component for picker in pickers for component in (picker.choice, picker.weights)}
    for event in (prompt.submit, send.click):
        event(ask, inputs, [prompt, pending, reveal, *chats, *buttons], concurrency_id=MODEL_QUEUE)
    for button, (verdict, winner, _) in zip(buttons, VOTES):
        button.click(voter(winner, verdict), pending, [pending, reveal, table, *buttons])
    def clear() -> dict:
        return {pending: None, reveal: "", **{chat: [] for chat in chats}, **voting(False)}

    return Blind(pickers, render, table, clear, [pending, reveal, *chats, *buttons])
