"""Chat generation: render a conversation with the model's chat template and stream the reply.

One path serves the CLI (which waits for the whole reply) and the web page (which shows it growing):
`stream_reply` runs `model.generate` on a worker thread and yields the text so far.
"""

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from threading import Thread

import torch
from transformers import TextIteratorStreamer

from core.chat.turns import model_turns
from core.data.template import apply_template
from core.errors import LoraForgeError
from core.lora.model import active_adapters

Message = dict[str, str]


class GenerationSettingsError(LoraForgeError):
    """A sampling setting is out of range."""


@dataclass
class Sampling:
    """Sampling settings. temperature 0 means greedy decoding (the same answer every time)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise GenerationSettingsError(f"max_new_tokens is {self.max_new_tokens}; use 1 or more.")
        if self.temperature < 0:
            raise GenerationSettingsError(f"temperature is {self.temperature}; use 0 (greedy) or more.")
        if not 0 < self.top_p <= 1:
            raise GenerationSettingsError(f"top_p is {self.top_p}; use a value in (0, 1].")


def conversation(prompt: str, history: list[Message] | None = None, system: str | None = None) -> list[Message]:
    """Messages for the chat template: an optional system prompt, earlier turns, then the new user prompt."""
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, *(history or []), {"role": "user", "content": prompt}]


def stream_reply(model, tokenizer, messages: list[Message], sampling: Sampling | None = None,
                 gains: dict[str, float] | None = None) -> Iterator[str]:
    """Yield the assistant's reply as it grows (each item is the whole text so far), under the active set `gains`
    when given ({} = the plain base), else the model's own. The set is switched inside the model's turn, so the
    API server's engine, sharing the model, never steps while it is half set."""
    sampling = sampling or Sampling()
    sampling.check()
    inputs = apply_template(
        tokenizer, messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    greedy = sampling.temperature == 0
    options = dict(
        **inputs,
        streamer=streamer,
        max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy,
        pad_token_id=tokenizer.pad_token_id,
    )
    if not greedy:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    else:  # the model's generation_config may carry sampling defaults that greedy decoding would warn about
        options.update(temperature=None, top_p=None, top_k=None)

    errors: list[BaseException] = []

    def run() -> None:
        try:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with model_turns(model), torch.inference_mode():
                with nullcontext() if gains is None else active_adapters(model, gains):
                    model.generate(**options)
        except BaseException as error:  # surfaced on the caller's thread below
            errors.append(error)
            streamer.on_finalized_text("", stream_end=True)

    worker = Thread(target=run, daemon=True)
    worker.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    worker.join()
    if errors:
        raise errors[0]


def greedy_answers(
    model, tokenizer, conversations: list[list[Message]], max_new_tokens: int, batch_size: int = 16,
) -> list[str]:
    """Greedy replies to many conversations, a batch at a time (left padding), for evaluation and samples."""
    answers = []
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [apply_template(tokenizer, c, add_generation_prompt=True, tokenize=False)
                     for c in conversations[start : start + batch_size]]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                        top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers
