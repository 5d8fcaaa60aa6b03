"""Turn examples into token ids and labels with the tokenizer's own chat template.

Assistant turns are found by rendering prefixes: for the assistant message at index i,
`template(messages[:i], add_generation_prompt=True)` ends exactly where the answer starts and
`template(messages[:i+1])` ends just after it. This holds for multi-turn conversations and for
templates that inject their own system prompt, because both renderings carry the same injection.
The text is cut at those character positions into prompt and answer segments, and each segment is
tokenized on its own, so labels line up exactly with answer tokens and each answer tokenizes just as
the model will generate it after the generation prompt.

Each answer ends with the template's end-of-turn token (appended as the tokenizer's EOS when the
template writes none), and that token is trained: it is how the model learns to stop.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from core.data.formats import Example
from core.data.problems import RowProblem
from core.data.template import apply_template

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all")


@dataclass(frozen=True)
class RenderedExample:
    """Token ids and labels (IGNORE_INDEX where not trained) of one example, cut at max_length."""

    number: int
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def render_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int, train_on: str = "assistant"
) -> RenderedExample:
    """Tokenize one example; raises RowProblem when its chat template cannot render it."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        ids = ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        segments = (_whole_chat(example.messages, tokenizer) if train_on == "all"
                    else chat_segments(example.messages, tokenizer))
        ids, labels = [], []
        for segment_ids, (_, trained) in zip(
            tokenizer([text for text, _ in segments], add_special_tokens=False)["input_ids"], segments
        ):
            ids += segment_ids
            labels += segment_ids if trained else [IGNORE_INDEX] * len(segment_ids)
    # The first token is never a prediction target; masking it also keeps packed examples from
    # learning to predict the start of their neighbour.
    labels[0] = IGNORE_INDEX
    return RenderedExample(example.number, ids[:max_length], labels[:max_length], len(ids))


def chat_segments(messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces; trained pieces are answers plus their end token."""
    full = _render(tokenizer, messages)
    segments: list[tuple[str, bool]] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1])
        if not (through.startswith(before) and full.startswith(through) and len(before) >= cursor):
            raise RowProblem(
                "the chat template renders earlier turns differently once later turns follow, so the "
                "assistant's answers cannot be located; train on all tokens (train_on='all') for this template"
            )
        answer = through[len(before) :].rstrip()
        segments.append((full[cursor : len(before)], False))
        segments.append((answer if _ends_with_special(answer, tokenizer) else answer + tokenizer.eos_token, True))
        cursor = len(before) + len(answer)
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text]


def _whole_chat(messages: Sequence[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[tuple[str, bool]]:
    return [(_render(tokenizer, messages), True)]


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]],
            add_generation_prompt: bool = False) -> str:
    try:
        return apply_template(tokenizer, messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except (TemplateError, ValueError, TypeError) as error:
        raise RowProblem(f"the chat template refused this conversation: {str(error).splitlines()[0]}") from None


def _ends_with_special(text: str, tokenizer: PreTrainedTokenizerBase) -> bool:
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    return any(text.endswith(token) for token in specials if token)
