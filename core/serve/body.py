"""OpenAI request bodies read and checked: every field the server uses, refused with OpenAI's 400 error naming
the field and the fix, so a malformed request never reaches the engine (and never shows a traceback).

Fields the server does not use are ignored, as OpenAI-compatible servers do, except those whose silent
neglect would change the answer (n > 1, penalties, logprobs, logit_bias, tools, a response_format other than
text): those are refused.
"""

import json
import math
from dataclasses import dataclass

from core.chat.generate import Message, Sampling
from core.serve.errors import ApiError

MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_TOKENS = 1024  # when a request names none: at most this, and never past the context
ROLES = ("system", "user", "assistant")
ROLE_NAMES = {"developer": "system"}  # OpenAI's newer name for the system role
MAX_STOPS = 4
MAX_SEED = 2**63 - 1
# Fields refused when set (non-empty), with the fix: ignoring them would silently change the answer.
UNSUPPORTED = {
    "logit_bias": "leave logit_bias out.",
    "top_logprobs": "leave top_logprobs out.",
    "tools": "these models are served without tool calling; leave tools out.",
    "functions": "these models are served without function calling; leave functions out.",
}
GREEDY_BELOW = 1e-5  # a temperature this small samples the likeliest token anyway; decoding it greedily avoids overflow
CHARS_PER_TOKEN_LIMIT = 64  # text longer than 64 characters per token of context cannot fit: refused untokenized


@dataclass(frozen=True)
class Options:
    """How to answer: sampling (its max_new_tokens is the request's max_tokens), stop strings, streaming."""

    sampling: Sampling
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool


def read_body(raw: bytes) -> dict:
    """The JSON object a request carries."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(f"The request body is {len(raw):,} bytes; the limit is {MAX_BODY_BYTES:,}.", status=413)
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise ApiError(f"The request body is not valid JSON ({error}). Send a JSON object, e.g. "
                       '{"model": "base", "messages": [{"role": "user", "content": "Hello"}]}.') from None
    if not isinstance(body, dict):
        raise ApiError(f"The request body is a JSON {type(body).__name__}; send a JSON object.")
    return body


def model_name(body: dict) -> str:
    name = body.get("model")
    if not isinstance(name, str) or not name.strip():
        raise ApiError("'model' is missing: name 'base', a registered adapter, or a weighted set such as "
                       "'pirate:0.7,dates:0.5' (GET /v1/models lists them).", param="model")
    return name.strip()


def chat_messages(body: dict) -> list[Message]:
    """`messages` as plain {role, content} text messages (content given as text parts is joined)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list of {\"role\", \"content\"} objects.", param="messages")
    plain = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(f"{where} is not an object; write {{\"role\": \"user\", \"content\": \"...\"}}.",
                           param=where)
        role = ROLE_NAMES.get(message.get("role"), message.get("role"))
        if role not in ROLES:
            raise ApiError(f"{where}.role is {role!r}; use one of {', '.join(ROLES)}.", param=f"{where}.role")
        plain.append({"role": role, "content": _text(message.get("content"), f"{where}.content")})
    return plain


def check_length(text: str, context: int) -> None:
    """Refuse text that cannot fit the context whatever the tokenizer makes of it, before spending time on it."""
    if len(text) > CHARS_PER_TOKEN_LIMIT * context:
        raise ApiError(f"The prompt is {len(text):,} characters, far past this model's context of {context} tokens. "
                       "Shorten it.", param="messages", code="context_length_exceeded")


def completion_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError("'prompt' must be a non-empty string (one prompt per request).", param="prompt")
    return prompt


def options(body: dict, prompt_tokens: int, context: int) -> Options:
    """Sampling, stops and streaming, with max_tokens checked against the room the prompt leaves."""
    room = context - prompt_tokens
    if room < 1:
        raise ApiError(f"The prompt is {prompt_tokens} tokens; this model's context is {context} tokens. Shorten "
                       "the conversation.", param="messages", code="context_length_exceeded")
    if body.get("n") not in (None, 1):
        raise ApiError("Only n = 1 is supported: send one request per answer.", param="n")
    if body.get("logprobs") not in (None, False):
        raise ApiError("logprobs are not supported by this server; leave 'logprobs' out.", param="logprobs")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if body.get(penalty) not in (None, 0, 0.0):
            raise ApiError(f"{penalty} is not supported by this server; leave it out or set it to 0.", param=penalty)
    for name, fix in UNSUPPORTED.items():
        if body.get(name):
            raise ApiError(f"{name} is not supported by this server: {fix}", param=name)
    answer_format = body.get("response_format")
    if answer_format not in (None, {}) and answer_format != {"type": "text"}:
        raise ApiError("This response_format is not supported: only {\"type\": \"text\"} is; JSON modes and "
                       "schemas are not enforced by this server; leave response_format out.", param="response_format")
    limit_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, limit_field, None, whole=True)
    if max_tokens is None:
        max_tokens = min(room, DEFAULT_MAX_TOKENS)
    elif max_tokens < 1:
        raise ApiError(f"{limit_field} is {max_tokens}; use 1 or more.", param=limit_field)
    elif max_tokens > room:
        raise ApiError(f"The prompt is {prompt_tokens} tokens and {limit_field} is {max_tokens}: together past this "
                       f"model's context of {context} tokens. Use {limit_field} <= {room}.", param=limit_field,
                       code="context_length_exceeded")
    temperature = _number(body, "temperature", 1.0)
    temperature = 0.0 if temperature < GREEDY_BELOW else temperature
    top_p = _number(body, "top_p", 1.0)
    if not 0 <= temperature <= 2:
        raise ApiError(f"temperature is {temperature}; use a value from 0 (greedy) to 2.", param="temperature")
    if not 0 < top_p <= 1:
        raise ApiError(f"top_p is {top_p}; use a value in (0, 1].", param="top_p")
    seed = _number(body, "seed", None, whole=True)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ApiError(f"seed is {seed}; use a whole number from 0 to {MAX_SEED}.", param="seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError("'stream' must be true or false.", param="stream")
    stream_options = body.get("stream_options") or {}
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return Options(Sampling(int(max_tokens), float(temperature), float(top_p), seed), _stops(body.get("stop")),
                   stream, include_usage)


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and
                                         isinstance(p.get("text"), str) for p in content):
        return "".join(part["text"] for part in content)
    raise ApiError(f"{where} must be a string or a list of text parts ({{\"type\": \"text\", \"text\": ...}}); this "
                   "server answers text only.", param=where)


def _number(body: dict, key: str, default, whole: bool = False):
    value = body.get(key)
    if value is None:
        return default
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        raise ApiError(f"{key} is {json.dumps(value)}; it must be {kind}.", param=key)
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        finite = False
    if not finite:
        raise ApiError(f"{key} is out of range; give an ordinary finite number.", param=key)
    return value


def _stops(stop) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > MAX_STOPS:
        raise ApiError(f"'stop' must be a string or a list of at most {MAX_STOPS} strings.", param="stop")
    return tuple(stops)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
