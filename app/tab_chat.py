"""The Chat tab: chat with the base model, or side by side with two columns (base or any adapter) that get
the same prompt.

There is one base model in memory. An adapter is loaded into it the first time a column asks for it and
stays loaded; each column's reply runs under `active_adapters`, and every generating event shares one
queue slot (concurrency_id "model"), so one model never serves two replies at once.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from core.adapters import active_adapters, adapter_names
from core.errors import LoraForgeError
from core.generate import Sampling, conversation, stream_reply
from core.models import LoadedModel
from core.peft_format import load_adapter
from core.store import Store

BASE = "base"
MODEL_QUEUE = "model"


@dataclass
class ChatTab:
    """What the page wires to: re-reading the adapter list into both column choosers."""

    adapter_choices: Callable
    choices: list[gr.Dropdown]


def build_chat_tab(loaded: LoadedModel, store: Store) -> ChatTab:
    with gr.Tabs():
        with gr.Tab("One model", id="single"):
            chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=460, buttons=["copy"])
            with gr.Row():
                prompt = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="prompt",
                                    autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        with gr.Tab("Side by side", id="side-by-side") as side_tab:
            columns = []
            with gr.Row(equal_height=True):
                for side in ("left", "right"):
                    with gr.Column():
                        choice = gr.Dropdown([("Base model", BASE)], value=BASE, label=f"{side.title()} column",
                                             elem_id=f"{side}-model")
                        columns += [choice, gr.Chatbot(label=side.title(), elem_id=f"{side}-chat", height=400)]
            with gr.Row():
                both_prompt = gr.Textbox(placeholder="One prompt, both columns answer…", show_label=False, scale=8,
                                         elem_id="sbs-prompt")
                both_send = gr.Button("Send to both", variant="primary", scale=1, elem_id="sbs-send")
    with gr.Accordion("Sampling settings", open=False):
        system = gr.Textbox(label="System prompt", placeholder="Optional, e.g. 'Answer in one sentence.'")
        temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0 = greedy, repeatable)")
        max_new_tokens = gr.Slider(16, 1024, value=256, step=16, label="Max new tokens")
        seed = gr.Number(0, label="Seed (the same for every column, so answers are comparable)", precision=0)
        clear = gr.Button("Clear conversations", elem_id="clear")
    left_choice, left_chat, right_choice, right_chat = columns
    settings = [system, temperature, max_new_tokens, seed]

    def respond(text: str, history: list[dict], system_prompt: str, temp: float, max_new: int, seed_value):
        sampling = _sampling(text, temp, max_new, seed_value)
        for shown in _stream(loaded, {}, text, history, system_prompt, sampling):
            yield "", shown

    def respond_both(text: str, left: str, left_history: list[dict], right: str, right_history: list[dict],
                     system_prompt: str, temp: float, max_new: int, seed_value):
        sampling = _sampling(text, temp, max_new, seed_value)
        gains = [_gains(loaded, store, left), _gains(loaded, store, right)]
        left_shown = left_history
        for left_shown in _stream(loaded, gains[0], text, left_history, system_prompt, sampling):
            yield "", left_shown, right_history
        for right_shown in _stream(loaded, gains[1], text, right_history, system_prompt, sampling):
            yield "", left_shown, right_shown

    def adapter_choices():
        choices = [("Base model", BASE)] + [(_label(a), str(a["id"])) for a in store.adapters()]
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

    single_inputs = [prompt, chatbot, *settings]
    for event in (prompt.submit, send.click):
        event(respond, single_inputs, [prompt, chatbot], concurrency_id=MODEL_QUEUE)
    both_inputs = [both_prompt, left_choice, left_chat, right_choice, right_chat, *settings]
    for event in (both_prompt.submit, both_send.click):
        event(respond_both, both_inputs, [both_prompt, left_chat, right_chat], concurrency_id=MODEL_QUEUE)
    side_tab.select(adapter_choices, None, [left_choice, right_choice])
    for choice, chat in ((left_choice, left_chat), (right_choice, right_chat)):
        choice.input(lambda: [], None, chat)  # another model: its column starts a fresh conversation
    clear.click(lambda: ([], [], []), None, [chatbot, left_chat, right_chat])
    return ChatTab(adapter_choices=adapter_choices, choices=[left_choice, right_choice])


def _sampling(text: str, temperature: float, max_new: int, seed: float | None) -> Sampling:
    if not text.strip():
        raise gr.Error("Type a message first.")
    return Sampling(int(max_new), float(temperature), seed=None if seed is None else int(seed))


def _stream(loaded: LoadedModel, gains: dict[str, float], text: str, history: list[dict], system: str,
            sampling: Sampling) -> Iterator[list[dict]]:
    """The conversation with the reply growing, generated under the adapter set `gains` ({} = base)."""
    earlier = [{"role": m["role"], "content": message_text(m)} for m in history]
    messages = conversation(text, earlier, system.strip() or None)
    shown = [*history, {"role": "user", "content": text}]
    try:
        with active_adapters(loaded.model, gains):
            for reply in stream_reply(loaded.model, loaded.tokenizer, messages, sampling):
                yield [*shown, {"role": "assistant", "content": reply}]
    except LoraForgeError as error:
        raise gr.Error(str(error)) from None


def _gains(loaded: LoadedModel, store: Store, choice: str) -> dict[str, float]:
    """The active set for a column: {} for the base, else the adapter (loaded into the model on first use)."""
    if choice == BASE:
        return {}
    adapter = next((a for a in store.adapters() if str(a["id"]) == choice), None)
    if adapter is None:
        raise gr.Error("That adapter is no longer registered (was its run deleted?). Choose another one.")
    name = f"adapter-{adapter['id']}"
    if name not in adapter_names(loaded.model):
        try:
            load_adapter(loaded.model, adapter["path"], name=name, activate=False)
        except LoraForgeError as error:
            raise gr.Error(f"Cannot load adapter {adapter['name']}: {error}") from None
    return {name: 1.0}


def _label(adapter: dict) -> str:
    origin = adapter["run_id"] or "imported"
    return f"{adapter['name']} · r{adapter['rank']} · {origin}"


def message_text(message: dict) -> str:
    """The text of a chat message; Gradio may hand content back as a list of typed parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
