"""The Chat tab: one model (the base, an adapter or a weighted set); side by side in 2 to 4 columns; or a blind
A/B test that stores votes and shows win rates, and exports them as preference data to train on. One system
prompt and one set of sampling settings (seed included) serve every mode.

Each mode's module (single, columns, blind) holds its layout, handlers and wiring; this module builds the modes in
page order, wiring each right after its layout, then the parts they share: Clear, the settings panel, and the
adapter lists every contender selector re-reads.

There is one base model in memory. An adapter is loaded into it the first time a column asks for it and
stays loaded; each reply runs under its own active adapter set, and every generating event shares one
queue slot, so one model never serves two replies at once.
"""

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app.web.chat.blind import BlindHandlers, build_blind_layout, wire_blind
from app.web.chat.columns import ColumnsHandlers, build_columns_layout, wire_columns
from app.web.chat.picker import picker_options
from app.web.chat.single import SingleHandlers, build_single_layout, wire_single
from app.web.chat.stream import shared_settings
from app.web.chat.votes_data import VotesDataHandlers, build_votes_data_layout, wire_votes_data
from core.chat.contenders import BASE_CHOICE
from core.models.loading import LoadedModel
from core.store.database import Store


@dataclass
class ChatTab:
    """What the page wires to: re-reading the adapter list into every contender selector (`choices`, whose
    current values `adapter_choices` takes)."""

    adapter_choices: Callable
    choices: list[gr.Dropdown]


class ChatHandlers:
    def __init__(self, store: Store) -> None:
        self.store = store

    def adapter_choices(self, *values: str):
        """Every selector offers the adapters registered now. A blind pair (the last two) still both on the base,
        which it cannot compare, starts its second contender on the newest adapter."""
        options = picker_options(self.store)
        updates = [gr.Dropdown(choices=options) for _ in values]
        if values[-2] == values[-1] == BASE_CHOICE and len(options) > 2:
            updates[-1] = gr.Dropdown(choices=options, value=options[1][1])
        return updates


def build_chat_tab(loaded: LoadedModel, store: Store) -> ChatTab:
    settings = shared_settings()
    with gr.Tabs():
        with gr.Tab("One model", id="single"):
            single = build_single_layout()
        wire_single(single, SingleHandlers(loaded, store, settings, single), settings)
        with gr.Tab("Side by side", id="side-by-side") as side_tab:
            columns = build_columns_layout()
        wire_columns(columns, ColumnsHandlers(loaded, store, settings, columns), settings)
        with gr.Tab("Blind A/B", id="blind") as blind_tab:
            blind = build_blind_layout()
            votes_data = build_votes_data_layout()
        blind_act = BlindHandlers(loaded, store, settings, blind)
        wire_blind(blind, blind_act, settings)
        wire_votes_data(votes_data, VotesDataHandlers(loaded, store, votes_data))
    clear = gr.Button("Clear conversations", elem_id="clear", size="sm")  # not in the closed accordion below
    with gr.Accordion("Sampling settings", open=False):
        settings.render()
    choices = [picker.choice for picker in (single.picker, *columns.pickers, *blind.pickers)]
    act = ChatHandlers(store)

    side_tab.select(act.adapter_choices, choices, choices)
    blind_tab.select(act.adapter_choices, choices, choices).then(blind_act.render, None, blind.table)
    conversations = [single.chatbot, *columns.chats]
    clear.click(lambda: {**{chat: [] for chat in conversations}, **blind_act.clear()}, None,
                [*conversations, *blind.cleared])
    return ChatTab(adapter_choices=act.adapter_choices, choices=choices)
