"""What every chat mode shares: the sampling settings (one set for all columns, so answers are comparable),
the model's queue slot, and streaming one reply into a Chatbot under an active adapter set.

Every generating event uses concurrency_id MODEL_QUEUE, so the one model never serves two replies at once.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gradio as gr

from app.web.refusal import refusal
from core.chat.generate import Sampling, conversation, stream_reply
from core.errors import LoraForgeError
from core.models.loading import LoadedModel

MODEL_QUEUE = "model"


@dataclass
class SharedSettings:
    """System prompt and sampling, built unrendered so every mode can wire them before the panel shows them."""

    system: gr.Textbox
    temperature: gr.Slider
    max_new_tokens: gr.Slider
    seed: gr.Number

    @property
    def components(self) -> list:
        return [self.system, self.temperature, self.max_new_tokens, self.seed]

    def render(self) -> None:
        for component in self.components:
            component.render()

    def sampling(self, data: dict, text: str) -> Sampling:
        """The settings as the page shows them now; an empty prompt is refused before anything runs."""
        if not text.strip():
            raise refusal("Type a message first.")
        seed = data[self.seed]
        return Sampling(int(data[self.max_new_tokens]), float(data[self.temperature]),
                        seed=None if seed is None else int(seed))


def shared_settings() -> SharedSettings:
    return SharedSettings(
        system=gr.Textbox("", label="System prompt", placeholder="Optional, e.g. 'Answer in one sentence.'",
                          render=False),
        temperature=gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature (0 = greedy, repeatable)", render=False),
        max_new_tokens=gr.Slider(16, 1024, value=256, step=16, label="Max new tokens", render=False),
        seed=gr.Number(0, label="Seed (the same for every column, so answers are comparable)", precision=0,
                       render=False),
    )


def wire_prompt(prompt: gr.Textbox, send: gr.Button, respond: Callable, inputs: set, outputs: list) -> None:
    """Enter in a mode's prompt box and its send button both run `respond`, in the model's queue slot."""
    for event in (prompt.submit, send.click):
        event(respond, inputs, outputs, concurrency_id=MODEL_QUEUE)


def stream(loaded: LoadedModel, gains: dict[str, float], text: str, history: list[dict], system: str | None,
           sampling: Sampling) -> Iterator[list[dict]]:
    """The conversation with the prompt shown at once and the reply growing, generated under `gains` ({} = base).
    `system` is None when the page never showed the (collapsed) settings panel."""
    earlier = [{"role": m["role"], "content": message_text(m)} for m in history]
    messages = conversation(text, earlier, (system or "").strip() or None)
    shown = [*history, {"role": "user", "content": text}]
    yield shown
    try:
        for reply in stream_reply(loaded.model, loaded.tokenizer, messages, sampling, gains):
            yield [*shown, {"role": "assistant", "content": reply}]
    except LoraForgeError as error:
        raise refusal(error) from None


def message_text(message: dict) -> str:
    """The text of a chat message; Gradio may hand content back as a list of typed parts."""
    content = message["content"]
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts)
