"""The Chat tab: one model; side by side in 2 to 4 columns; or a blind A/B test that stores votes and shows
win rates. One system prompt and one set of sampling settings (seed included) serve every mode.

There is one base model in memory. An adapter is loaded into it the first time a column asks for it and
stays loaded; each reply runs under its own active adapter set, and every generating event shares one
queue slot, so one model never serves two replies at once.
"""

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app.chat_blind import build_blind
from app.chat_columns import build_columns
from app.chat_picker import picker_options
from app.chat_stream import MODEL_QUEUE, SharedSettings, shared_settings, stream
from core.models import LoadedModel
from core.store import Store


@dataclass
class ChatTab:
    """What the page wires to: re-reading the adapter list into every contender selector."""

    adapter_choices: Callable
    choices: list[gr.Dropdown]


def build_chat_tab(loaded: LoadedModel, store: Store) -> ChatTab:
    settings = shared_settings()
    with gr.Tabs():
        with gr.Tab("One model", id="single"):
            single = _build_single(loaded, settings)
        with gr.Tab("Side by side", id="side-by-side") as side_tab:
            columns = build_columns(loaded, store, settings)
        with gr.Tab("Blind A/B", id="blind") as blind_tab:
            blind = build_blind(loaded, store, settings)
    with gr.Accordion("Sampling settings", open=False):
        settings.render()
        clear = gr.Button("Clear conversations", elem_id="clear")
    choices = [picker.choice for picker in (*columns.pickers, *blind.pickers)]

    def adapter_choices():
        options = picker_options(store)
        return [gr.Dropdown(choices=options) for _ in choices]

    side_tab.select(adapter_choices, None, choices)
    blind_tab.select(adapter_choices, None, choices).then(blind.render, None, blind.table)
    conversations = [single, *columns.chats]
    clear.click(lambda: {**{chat: [] for chat in conversations}, **blind.clear()}, None,
                [*conversations, *blind.cleared])
    return ChatTab(adapter_choices=adapter_choices, choices=choices)


def _build_single(loaded: LoadedModel, settings: SharedSettings) -> gr.Chatbot:
    """A plain chat with the base model."""
    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=460, buttons=["copy"])
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="prompt", autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")

    def respond(data: dict):
        text = data[prompt]
        sampling = settings.sampling(data, text)
        for shown in stream(loaded, {}, text, data[chatbot], data[settings.system], sampling):
            yield {prompt: "", chatbot: shown}

    for event in (prompt.submit, send.click):
        event(respond, {prompt, chatbot, *settings.components}, [prompt, chatbot], concurrency_id=MODEL_QUEUE)
    return chatbot
