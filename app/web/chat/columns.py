"""Side by side: 2 to 4 columns, each the base model, an adapter or a weighted set; one prompt, every shown
column answers in turn (the one model serves one reply at a time), each keeping its own conversation.

Like every chat mode (see app.web.chat.single), its layout, handlers and wiring are the three parts of this module.
"""

from dataclasses import dataclass

import gradio as gr

from app.web.chat.picker import Picker, build_picker, picker_inputs, resolve
from app.web.chat.stream import SharedSettings, stream, wire_prompt
from core.models.loading import LoadedModel
from core.store.database import Store

COLUMN_IDS = ("left", "right", "third", "fourth")  # element ids; the first two are those of the two-column page
SHOWN_AT_START = 2


@dataclass
class ColumnsLayout:
    count: gr.Radio
    boxes: list[gr.Column]  # each column's selector box, then each column's conversation box
    pickers: list[Picker]
    chats: list[gr.Chatbot]
    prompt: gr.Textbox
    send: gr.Button


def build_columns_layout() -> ColumnsLayout:
    count = gr.Radio([2, 3, 4], value=SHOWN_AT_START, label="Columns", elem_id="sbs-columns")
    boxes, pickers, chats = [], [], []
    with gr.Row():  # selectors and conversations in rows of their own, so a weighted-set box keeps chats aligned
        for index, name in enumerate(COLUMN_IDS):
            with gr.Column(visible=index < SHOWN_AT_START, min_width=220) as box:
                pickers.append(build_picker(f"Column {index + 1}", name))
            boxes.append(box)
    with gr.Row(equal_height=True):
        for index, name in enumerate(COLUMN_IDS):
            with gr.Column(visible=index < SHOWN_AT_START, min_width=220) as box:
                chats.append(gr.Chatbot(label=f"Column {index + 1}", elem_id=f"{name}-chat", height=400))
            boxes.append(box)
    with gr.Row():
        prompt = gr.Textbox(placeholder="One prompt, every column answers…", show_label=False, scale=8,
                            elem_id="sbs-prompt")
        send = gr.Button("Send to all", variant="primary", scale=1, elem_id="sbs-send")
    return ColumnsLayout(count=count, boxes=boxes, pickers=pickers, chats=chats, prompt=prompt, send=send)


class ColumnsHandlers:
    def __init__(self, loaded: LoadedModel, store: Store, settings: SharedSettings, ui: ColumnsLayout) -> None:
        self.loaded, self.store, self.settings, self.ui = loaded, store, settings, ui

    def respond(self, data: dict):
        """The shown columns answer one after another, all their contenders checked before the first answers."""
        ui = self.ui
        text = data[ui.prompt]
        sampling = self.settings.sampling(data, text)
        answering = resolve(self.loaded, self.store, ui.pickers[: data[ui.count]], data)
        for chat, (_, gains) in zip(ui.chats, answering):
            for history in stream(self.loaded, gains, text, data[chat], data[self.settings.system], sampling):
                yield {ui.prompt: "", chat: history}


def wire_columns(ui: ColumnsLayout, act: ColumnsHandlers, settings: SharedSettings) -> None:
    inputs = {ui.prompt, ui.count, *ui.chats, *settings.components, *picker_inputs(ui.pickers)}
    wire_prompt(ui.prompt, ui.send, act.respond, inputs, [ui.prompt, *ui.chats])
    ui.count.change(lambda shown: [gr.Column(visible=i % len(COLUMN_IDS) < shown) for i in range(len(ui.boxes))],
                    ui.count, ui.boxes, queue=False)
    for picker, chat in zip(ui.pickers, ui.chats):
        for event in (picker.choice.input, picker.weights.input):  # another contender: a fresh conversation
            event(lambda: [], None, chat, queue=False, show_progress="hidden")
