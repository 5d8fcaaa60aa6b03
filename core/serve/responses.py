"""OpenAI's response shapes: whole answers, streamed chunks (server-sent events) and usage counts."""

import json
import time
import uuid

from core.serve.engine import Finished


def new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"


def usage(finished: Finished) -> dict:
    return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens}


def answer(answer_id: str, model: str, chat: bool, text: str, finished: Finished) -> dict:
    """The whole answer: a chat.completion or a text_completion."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finished.reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finished.reason}
    return {"id": answer_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(finished)}


def chunk(answer_id: str, model: str, chat: bool, text: str | None, reason: str | None = None) -> dict:
    """One streamed piece; for chat, `text` None is the opening chunk that names the role."""
    if chat:
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": reason}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
    return {"id": answer_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}


def usage_chunk(answer_id: str, model: str, chat: bool, finished: Finished) -> dict:
    """The last chunk when the request asked for stream_options.include_usage: no choices, the counts."""
    return {"id": answer_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [], "usage": usage(finished)}


def event(payload: dict | str) -> str:
    """One server-sent event line pair."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
