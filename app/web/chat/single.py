"""One model: a plain chat with one contender, the base model, an adapter or a weighted set.

Each chat mode is a module of its own, in three parts: its components (layout), what it does when a person acts
(handlers) and the events between them (wire). The modes share no components, so each reads whole in one file,
and app.web.chat.tab only assembles them.
"""

from dataclasses import dataclass

import gradio as gr

from app.web.chat.picker import Picker, build_picker, picker_inputs, resolve
from app.web.chat.stream import SharedSettings, stream, wire_prompt
from core.models.loading import LoadedModel
from core.store.database import Store


@dataclass
class SingleLayout:
    picker: Picker
    chatbot: gr.Chatbot
    prompt: gr.Textbox
    send: gr.Button


def build_single_layout() -> SingleLayout:
    picker = build_picker("Model", "single")
    chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=460, buttons=["copy"])
    with gr.Row():
        prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="prompt", autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
    return SingleLayout(picker=picker, chatbot=chatbot, prompt=prompt, send=send)


class SingleHandlers:
    def __init__(self, loaded: LoadedModel, store: Store, settings: SharedSettings, ui: SingleLayout) -> None:
        self.loaded, self.store, self.settings, self.ui = loaded, store, settings, ui

    def respond(self, data: dict):
        ui = self.ui
        text = data[ui.prompt]
        sampling = self.settings.sampling(data, text)
        [(_, gains)] = resolve(self.loaded, self.store, [ui.picker], data)
        for shown in stream(self.loaded, gains, text, data[ui.chatbot], data[self.settings.system], sampling):
            yield {ui.prompt: "", ui.chatbot: shown}


def wire_single(ui: SingleLayout, act: SingleHandlers, settings: SharedSettings) -> None:
    inputs = {ui.prompt, ui.chatbot, *picker_inputs([ui.picker]), *settings.components}
    wire_prompt(ui.prompt, ui.send, act.respond, inputs, [ui.prompt, ui.chatbot])
