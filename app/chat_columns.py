"""Side by side: 2 to 4 columns, each the base model, an adapter or a weighted set; one prompt, every shown
column answers in turn (the one model serves one reply at a time), each keeping its own conversation."""

from dataclasses import dataclass

import gradio as gr

from app.chat_picker import Picker, build_picker, resolve
from app.chat_stream import MODEL_QUEUE, SharedSettings, stream
from core.models import LoadedModel
from core.store import Store

COLUMN_IDS = ("left", "right", "third", "fourth")  # element ids; the first two are those of the two-column page
SHOWN_AT_START = 2


@dataclass
class Columns:
    """What the tab wires to: the selectors whose adapter lists it refreshes, the conversations it clears."""

    pickers: list[Picker]
    chats: list[gr.Chatbot]


def build_columns(loaded: LoadedModel, store: Store, settings: SharedSettings) -> Columns:
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

    def respond(data: dict):
        text = data[prompt]
        sampling = settings.sampling(data, text)
        answering = resolve(loaded, store, pickers[: data[count]], data)
        for chat, (_, gains) in zip(chats, answering):
            for history in stream(loaded, gains, text, data[chat], data[settings.system], sampling):
                yield {prompt: "", chat: history}

    inputs = {prompt, count, *chats, *settings.components}
    inputs |= {component for picker in pickers for component in (picker.choice, picker.weights)}
    for event in (prompt.submit, send.click):
        event(respond, inputs, [prompt, *chats], concurrency_id=MODEL_QUEUE)
    count.change(lambda shown: [gr.Column(visible=i % len(COLUMN_IDS) < shown) for i in range(len(boxes))], count,
                 boxes, queue=False)
    for picker, chat in zip(pickers, chats):
        for event in (picker.choice.input, picker.weights.input):  # another contender: a fresh conversation
            event(lambda: [], None, chat, queue=False, show_progress="hidden")
    return Columns(pickers, chats)
