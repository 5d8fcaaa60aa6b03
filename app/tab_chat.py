"""The Chat tab: one model (the base, an adapter or a weighted set); side by side in 2 to 4 columns; or a blind
A/B test that stores votes and shows win rates. One system prompt and one set of sampling settings (seed included)
serve every mode.

There is one base model in memory. An adapter is loaded into it the first time a column asks for it and
stays loaded; each reply runs under its own active adapter set, and every generating event shares one
queue slot, so one model never serves two replies at once.
"""

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app.chat_blind import build_blind
from app.chat_columns import build_columns
from app.chat_picker import Picker, build_picker, picker_options, resolve
from app.chat_stream import MODEL_QUEUE, SharedSettings, shared_settings, stream
from core.contenders import BASE_CHOICE
from core.models import LoadedModel
from core.store import Store


@dataclass
class ChatTab:
    """What the page wires to: re-reading the adapter list into every contender selector (`choices`, whose
    current values `adapter_choices` takes)."""

    adapter_choices: Callable
    choices: list[gr.Dropdown]


def build_chat_tab(loaded: LoadedModel, store: Store) -> ChatTab:
    settings = shared_settings()
    with gr.Tabs():
        with gr.Tab("One model", id="single"):
            single, single_picker = _build_single(loaded, store, settings)
        with gr.Tab("Side by side", id="side-by-side") as side_tab:
            columns = build_columns(loaded, store, settings)
        with gr.Tab("Blind A/B", id="blind") as blind_tab:
            blind = build_blind(loaded, store, settings)
    clear = gr.Button("Clear conversations", elem_id="clear", size="sm")  # not in the closed accordion below
    with gr.Accordion("Sampling settings", open=False):
        settings.render()
    choices = [picker.choice for picker in (single_picker, *columns.pickers, *blind.pickers)]

    def adapter_choices(*values: str):
        """Every selector offers the adapters registered now. A blind pair still both on the base, which it
        cannot compare, starts its second contender on the newest adapter."""
        options = picker_options(store)
        updates = [gr.Dropdown(choices=options) for _ in choices]
        if values[-2] == values[-1] == BASE_CHOICE and len(options) > 2:
            updates[-1] = gr.Dropdown(choices=options, value=options[1][1])
        return updates

    side_tab.select(adapter_choices, choices, choices)
    blind_tab.select(adapter_choices, choices, choices).then(blind.render, None, blind.table)
    conversations = [single, *columns.chats]
    clear.click(lambda: {**{chat: [] for chat in conversations}, **blind.clear()}, None,
                [*conversations, *blind.cleared])
    return ChatTab(adapter_choices=adapter_choices, choices=choices)


def _build_single(loaded: LoadedModel, store: Store, settings: SharedSettings) -> tuple[gr.Chatbot, Picker]:
    """A plain chat with one contender: the base model, an adapter, or a weighted set."""
    picker = build_picker("Model", "single")
    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=460, buttons=["copy"])
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="prompt", autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")

    def respond(data: dict):
        text = data[prompt]
        sampling = settings.sampling(data, text)
        [(_, gains)] = resolve(loaded, store, [picker], data)
        for shown in stream(loaded, gains, text, data[chatbot], data[settings.system], sampling):
            yield {prompt: "", chatbot: shown}

    inputs = {prompt, chatbot, picker.choice, picker.weights, *settings.components}
    for event in (prompt.submit, send.click):
        event(respond, inputs, [prompt, chatbot], concurrency_id=MODEL_QUEUE)
    return chatbot, picker
