"""Dataset formats: recognise each row's shape and turn it into chat messages.

    alpaca             {"instruction", "input"?, "output"}          -> user, assistant
    sharegpt           {"conversations": [{"from", "value"}, ...]}  -> roles human/gpt/system
    messages           {"messages": [{"role", "content"}, ...]}     -> OpenAI chat format
    prompt_completion  {"prompt", "completion"}                     -> user, assistant
    text               {"text"}                                     -> plain text, every token trained

A row's format is decided by which signature field it has; a file's format is the most common row
format, and rows of any other format are reported as mixed formats.
"""

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.data.problems import RowProblem
from core.data.read import describe_type

SIGNATURES = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
FORMATS = tuple(SIGNATURES)
CHAT_ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Example:
    """One valid row, normalised: chat messages, or plain text trained entirely (then messages is empty)."""

    number: int
    messages: tuple[dict[str, str], ...] = ()
    text: str | None = None


def row_format(record: dict[str, Any]) -> str | None:
    """The format whose signature field this row carries, or None."""
    for name, fields in SIGNATURES.items():
        if any(record.get(field) is not None for field in fields):
            return name
    return None


def dominant_format(records: Iterable[dict[str, Any]]) -> str | None:
    """The most common row format (the first seen wins a tie), or None when no row has a known shape."""
    counts = Counter(fmt for fmt in map(row_format, records) if fmt is not None)
    return counts.most_common(1)[0][0] if counts else None


def normalise(number: int, record: dict[str, Any], fmt: str) -> Example:
    """Check one row against `fmt` and convert it; raises RowProblem naming the field at fault."""
    found = row_format(record)
    if found is None:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise RowProblem(f"no known fields (has: {fields}); expected {_signature_hint(fmt)}")
    if found != fmt:
        raise RowProblem(f"mixed formats: this row is {found} but the file is {fmt}; "
                         f"convert it to {_signature_hint(fmt)}")
    if fmt == "text":
        return Example(number, text=_text(record, "text"))
    return Example(number, messages=tuple(_MESSAGE_BUILDERS[fmt](record)))


def _alpaca(record: dict[str, Any]) -> list[dict[str, str]]:
    instruction, extra = _text(record, "instruction"), _text(record, "input", optional=True)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(record, "output")}]


def _prompt_completion(record: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": _text(record, "prompt")},
            {"role": "assistant", "content": _text(record, "completion")}]


def _openai_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = turn_list(record["messages"], "messages")
    return _checked_chat([_turn(turn, f"messages[{i}]", "role", "content", {r: r for r in CHAT_ROLES})
                          for i, turn in enumerate(turns)])


def _sharegpt(record: dict[str, Any]) -> list[dict[str, str]]:
    turns = turn_list(record["conversations"], "conversations")
    return _checked_chat([_turn(turn, f"conversations[{i}]", "from", "value", SHAREGPT_ROLES)
                          for i, turn in enumerate(turns)])


_MESSAGE_BUILDERS = {
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "messages": _openai_messages,
    "sharegpt": _sharegpt,
}


def _text(record: dict[str, Any], field: str, optional: bool = False) -> str:
    value = record.get(field)
    if value is None:
        if optional:
            return ""
        raise RowProblem(f"missing field '{field}'")
    if not isinstance(value, str):
        raise RowProblem(f"field '{field}' must be text, got {describe_type(value)}")
    if not optional and not value.strip():
        raise RowProblem(f"field '{field}' is empty")
    return value


def turn_list(value: Any, field: str) -> list:
    """A field's non-empty list of turns, read from JSON text where a file stores it so."""
    if isinstance(value, str):  # CSV and some Parquet exports store the list as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem(f"field '{field}' must be a list of turns, got text that is not a JSON list") from None
    if not isinstance(value, list):
        raise RowProblem(f"field '{field}' must be a list of turns, got {describe_type(value)}")
    if not value:
        raise RowProblem(f"field '{field}' is empty")
    return value


def _turn(turn: Any, where: str, role_key: str, content_key: str, roles: dict[str, str]) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise RowProblem(f"{where} must be an object with '{role_key}' and '{content_key}', got {describe_type(turn)}")
    role = turn.get(role_key)
    if role is None:
        raise RowProblem(f"{where} is missing '{role_key}'")
    if not isinstance(role, str) or role not in roles:
        raise RowProblem(f"{where}: unknown role {role!r} (expected {', '.join(roles)})")
    try:
        content = _text(turn, content_key)
    except RowProblem as problem:
        raise RowProblem(f"{where}: {problem}") from None
    return {"role": roles[role], "content": content}


def _checked_chat(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """A conversation must give the model something to learn, and system text only at the start."""
    for i, message in enumerate(messages[1:], start=1):
        if message["role"] == "system":
            raise RowProblem(f"turn {i} is a system message; a system message may only be the first turn")
    if not any(message["role"] == "assistant" for message in messages):
        raise RowProblem("has no assistant turn, so there is nothing to train on")
    return messages


def _signature_hint(fmt: str) -> str:
    hints = {
        "messages": "'messages': [{'role', 'content'}, ...]",
        "sharegpt": "'conversations': [{'from', 'value'}, ...]",
        "alpaca": "'instruction', optional 'input', and 'output'",
        "prompt_completion": "'prompt' and 'completion'",
        "text": "'text'",
    }
    return hints[fmt]
