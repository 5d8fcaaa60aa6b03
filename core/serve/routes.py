"""The OpenAI-compatible routes over one loaded base model: GET /v1/models, POST /v1/chat/completions and
POST /v1/completions, whole answers or server-sent events.

    request ─► API key check ─► body checked (core.serve.body) ─► `model` resolved from the store
            ─► prompt tokens (the model's chat template) ─► Job on the engine ─► JSON, or SSE as the text grows

Every refusal is OpenAI's error shape with its status (400, 401, 404, 413, 429); a client that disconnects
cancels its job, which leaves the batch at the next step.
"""

import asyncio
import hmac
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from core.data.template import apply_template
from core.errors import LoraForgeError
from core.models.loading import LoadedModel
from core.serve import body as bodies
from core.serve import catalog, responses
from core.serve.engine import Engine, Finished, Job, server_error
from core.serve.errors import ApiError, as_api_error
from core.serve.key_guard import KeyGuard

KEY_ENV = "LORAFORGE_API_KEY"
DISCONNECT_POLL_S = 0.5


def api_router(loaded: LoadedModel, engine: Engine, api_key: str | None, exposed: bool) -> APIRouter:
    """The routes. `exposed`: the server listens beyond this machine, where requests need `api_key` (and are all
    refused, naming the fix, when there is none)."""
    router = APIRouter()
    base_name = loaded.facts.name
    context = getattr(loaded.model.config, "max_position_embeddings", None) or loaded.tokenizer.model_max_length

    guard = KeyGuard()

    def check_key(request: Request) -> None:
        if api_key is None and exposed:
            raise ApiError(f"This server listens beyond this machine and no API key is set, so the API is off. Set "
                           f"{KEY_ENV} (or --api-key-file) and restart.", status=401, code="invalid_api_key")
        if api_key is not None:
            address = request.client.host if request.client else "unknown"
            guard.check_allowed(address)
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
                guard.record_failure(address)
                raise ApiError("Missing or wrong API key: send 'Authorization: Bearer <key>' with the key this "
                               "server was started with.", status=401, code="invalid_api_key",
                               kind="authentication_error")

    @router.get("/v1/models")
    async def list_models(request: Request):
        try:
            check_key(request)
            return {"object": "list", "data": await run_in_threadpool(catalog.models, base_name)}
        except LoraForgeError as error:
            return _refusal(error)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, chat=True)

    @router.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, chat=False)

    async def answer(request: Request, chat: bool):
        try:
            check_key(request)
            body = bodies.read_body(await _capped_body(request))
            model = bodies.model_name(body)
            prompt = await run_in_threadpool(_prompt_tokens, loaded.tokenizer, body, chat, context)
            settings = bodies.options(body, len(prompt), context)
            adapters = await run_in_threadpool(catalog.resolve, model, base_name)
            events: asyncio.Queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            job = Job(prompt, adapters, settings.sampling, settings.stops,
                      emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
            engine.submit(job)
        except LoraForgeError as error:
            return _refusal(error)
        except Exception as error:  # noqa: BLE001 - a bug of ours still answers in OpenAI's shape
            return _refusal(server_error(error))
        answer_id = responses.new_id(chat)
        if settings.stream:
            return StreamingResponse(_streamed(job, events, answer_id, model, chat, settings.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _whole(request, job, events, answer_id, model, chat)

    @router.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown(rest: str):
        return _refusal(ApiError(f"There is no route /v1/{rest} here. Routes: GET /v1/models, POST "
                                 "/v1/chat/completions, POST /v1/completions.", status=404, code="unknown_url"))

    return router


async def _capped_body(request: Request) -> bytes:
    """The request body, refused (413) once it passes the limit rather than read whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > bodies.MAX_BODY_BYTES:
        raise ApiError(f"The request body is {int(declared):,} bytes; the limit is {bodies.MAX_BODY_BYTES:,}.",
                       status=413)
    received = bytearray()
    async for part in request.stream():
        received += part
        if len(received) > bodies.MAX_BODY_BYTES:
            raise ApiError(f"The request body passes the limit of {bodies.MAX_BODY_BYTES:,} bytes.", status=413)
    return bytes(received)


def _prompt_tokens(tokenizer, body: dict, chat: bool, context: int) -> list[int]:
    """The prompt's tokens: chat messages through the model's own chat template, as `launch.py chat` renders
    them; a completion's prompt as plain text. Runs off the event loop: a long prompt takes seconds."""
    if not chat:
        prompt = bodies.completion_prompt(body)
        bodies.check_length(prompt, context)
        return tokenizer(prompt)["input_ids"]
    messages = bodies.chat_messages(body)
    bodies.check_length("".join(message["content"] for message in messages), context)
    try:
        return list(apply_template(tokenizer, messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    except Exception as error:  # noqa: BLE001 - a template may refuse some conversations (e.g. no system role)
        raise ApiError(f"The model's chat template refused these messages: {error}", param="messages") from None


async def _whole(request: Request, job: Job, events: asyncio.Queue, answer_id: str, model: str, chat: bool):
    """Collect the answer; a client that went away (checked every DISCONNECT_POLL_S, tokens flowing or not)
    cancels its job."""
    text, checked = "", time.monotonic()
    while True:
        try:
            kind, value = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
        except TimeoutError:
            kind, value = None, None
        if time.monotonic() - checked >= DISCONNECT_POLL_S:
            checked = time.monotonic()
            if await request.is_disconnected():
                job.cancelled.set()
                return JSONResponse({}, status_code=499)
        if kind is None:
            continue
        if kind == "text":
            text += value
        elif kind == "error":
            return _refusal(value)
        else:
            return responses.answer(answer_id, model, chat, text, value)


async def _streamed(job: Job, events: asyncio.Queue, answer_id: str, model: str, chat: bool, include_usage: bool):
    try:
        if chat:
            yield responses.event(responses.chunk(answer_id, model, chat, None))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield responses.event(responses.chunk(answer_id, model, chat, value))
            elif kind == "error":
                yield responses.event(as_api_error(value).body())
                break
            else:
                finished: Finished = value
                yield responses.event(responses.chunk(answer_id, model, chat, "", finished.reason))
                if include_usage:
                    yield responses.event(responses.usage_chunk(answer_id, model, chat, finished))
                break
        yield responses.event("[DONE]")
    finally:  # also when the client went away mid-stream: the engine drops the job at its next step
        job.cancelled.set()


def _refusal(error: LoraForgeError) -> JSONResponse:
    refusal = as_api_error(error)
    return JSONResponse(refusal.body(), status_code=refusal.status)
