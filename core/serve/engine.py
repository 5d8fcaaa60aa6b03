"""The API server's engine: one thread decodes every request, all of them in one batch whatever their adapters.

    submit(job) ─► waiting (FIFO; full: ServerBusy) ─► engine thread, each turn at the model:
        admit waiting jobs into the batch (their adapters loaded on first use, at most `max_adapters` kept)
        one decoding step for every running job (core.chat.decoding: the base product once per step)
        each job's text grows (end-of-turn tokens, stop strings, max_tokens) and is emitted as it grows
        finished and cancelled jobs leave the batch; the others go on

Jobs hear back through their `emit` callable: ("text", piece), then ("done", Finished) or ("error", error); every
admitted job hears exactly one of the last two, and a failure reaches only the jobs it touched (a prefill that
fails fails its own job; a failed step, those in the batch). The thread takes the model's turn (core.chat.turns)
for each step: the page's chat on the same model waits at most one step, and the API waits while the page's
chat writes an answer (the page switches the model's adapters for the whole answer).
"""

import atexit
import sys
import threading
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from core.chat.contenders import load_registered
from core.chat.decoding import DecodingBatch, Row
from core.chat.generate import Sampling
from core.chat.turns import model_turns
from core.errors import LoraForgeError
from core.lora.model import delete_adapter
from core.serve.errors import ApiError
from core.serve.reply_text import ReplyText


@dataclass(frozen=True)
class Finished:
    """Why and after how many tokens a job ended: `reason` is "stop" (end of turn or a stop string) or
    "length" (max_tokens)."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    """One request's work: its prompt tokens, adapters as (store row, weight) pairs, sampling, stop strings."""

    prompt: list[int]
    adapters: tuple[tuple[dict, float], ...]
    sampling: Sampling
    stops: tuple[str, ...]
    emit: Callable[[tuple], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


class ServerBusy(ApiError):
    """More requests are waiting than the server takes."""


class Engine:
    """Decodes submitted jobs on its own thread; see the module docstring."""

    def __init__(self, model, tokenizer, max_batch: int = 16, max_waiting: int = 64, max_adapters: int = 8,
                 max_batch_tokens: int = 65536) -> None:
        """`max_batch_tokens` bounds rows x (longest prompt + max_tokens) in the batch, so one long prompt waits for
        room instead of running the device out of memory for everyone (a lone row is always admitted)."""
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_waiting, self.max_batch_tokens = max_batch, max_waiting, max_batch_tokens
        self.slots = AdapterSlots(model, max_adapters)
        self.end_tokens = _end_tokens(model, tokenizer)
        self._waiting: deque[Job] = deque()
        self._running: list[tuple[Job, ReplyText]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        atexit.register(self.close)  # a thread stopped mid-step at interpreter exit would abort the process

    def submit(self, job: Job) -> None:
        """Queue `job`; ServerBusy (HTTP 429) when `max_waiting` jobs already wait (cancelled ones do not count)."""
        with self._wake:
            self._waiting = deque(waiting for waiting in self._waiting if not waiting.cancelled.is_set())
            if len(self._waiting) >= self.max_waiting:
                raise ServerBusy(f"The server is busy: {len(self._waiting)} requests are waiting. Retry shortly.",
                                 status=429, code="rate_limit_exceeded", kind="rate_limit_error")
            self._waiting.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="loraforge-api-engine", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self, timeout: float = 30) -> None:
        """Stop after the current step; jobs still waiting or running hear that the server is shutting down."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _serve(self) -> None:
        batch = DecodingBatch(self.model)
        while True:
            arrivals = self._arrivals(batch)
            if self._closing:
                closing = ApiError("The server is shutting down; send the request again once it is back.",
                                   status=503, kind="server_error")
                for job in [*arrivals, *self._waiting, *(job for job, _ in self._running)]:
                    _tell(job, ("error", closing))
                return
            with model_turns(self.model):
                for job in arrivals:  # each hears of its own failure only
                    self._admit(batch, job)
                if not self._running:
                    continue
                try:
                    self._step(batch)
                except Exception as error:  # noqa: BLE001 - every running job hears of it; the engine goes on
                    failure = server_error(error)
                    for job, _ in self._running:
                        _tell(job, ("error", failure))
                    self._running, batch = [], DecodingBatch(self.model)

    def _arrivals(self, batch: DecodingBatch) -> list[Job]:
        """Waiting jobs to admit now, first come first served, as far as the batch's row and token bounds allow."""
        with self._wake:
            while not self._waiting and not self._running and not self._closing:
                self._wake.wait()
            taken: list[Job] = []
            width = max((row.length + row.sampling.max_new_tokens - len(row.generated) for row in batch.rows),
                        default=0)
            while self._waiting and len(self._running) + len(taken) < self.max_batch:
                job = self._waiting[0]
                wider = max(width, len(job.prompt) + job.sampling.max_new_tokens)
                rows = len(self._running) + len(taken) + 1
                if rows > 1 and rows * wider > self.max_batch_tokens:
                    break  # it waits for room
                taken.append(self._waiting.popleft())
                width = wider
            return taken

    def _admit(self, batch: DecodingBatch, job: Job) -> None:
        if job.cancelled.is_set():
            return
        try:
            gains = self.slots.gains(job.adapters, pinned={name for row in batch.rows for name in row.gains})
            row = Row(job.prompt, gains, job.sampling)
            token = batch.admit(row)  # changes the batch only once the row's prefill succeeded
        except LoraForgeError as error:
            _tell(job, ("error", error))
            return
        except Exception as error:  # noqa: BLE001 - out of memory on a long prompt, say: this job only
            _tell(job, ("error", server_error(error)))
            return
        self._running.append((job, ReplyText(self.tokenizer, job.stops)))
        if self._advance(len(self._running) - 1, row, token):
            self._finish(batch, [len(self._running) - 1])

    def _step(self, batch: DecodingBatch) -> None:
        tokens = batch.step()
        done = [i for i, (row, token) in enumerate(zip(batch.rows, tokens)) if self._advance(i, row, token)]
        self._finish(batch, done)

    def _advance(self, index: int, row: Row, token: int) -> bool:
        """Emit what `token` adds to job `index`'s text; True when the job is over (ended or cancelled)."""
        job, text = self._running[index]
        if job.cancelled.is_set():
            return True
        ended = token in self.end_tokens
        tokens = row.generated[:-1] if ended else row.generated
        full = ended or len(row.generated) >= job.sampling.max_new_tokens
        piece, stopped = text.update(tokens, final=full)
        if piece:
            _tell(job, ("text", piece))
        if ended or stopped or full:
            reason = "stop" if ended or stopped else "length"
            _tell(job, ("done", Finished(reason, len(row.prompt), len(tokens))))
            return True
        return job.cancelled.is_set()

    def _finish(self, batch: DecodingBatch, done: list[int]) -> None:
        if not done:
            return
        keep = [i for i in range(len(self._running)) if i not in done]
        batch.keep(keep)
        self._running = [self._running[i] for i in keep]


class AdapterSlots:
    """Registered adapters loaded into the served model as `serve-<id>`, least recently used dropped past
    `capacity` (never one a running row uses)."""

    def __init__(self, model, capacity: int) -> None:
        self.model, self.capacity = model, capacity
        self.loaded: OrderedDict[str, None] = OrderedDict()

    def gains(self, adapters: tuple[tuple[dict, float], ...], pinned: set[str]) -> dict[str, float]:
        """The active set for (store row, weight) pairs, loading what is missing."""
        gains = {}
        for row, weight in adapters:
            name = load_registered(self.model, row, "serve")
            self.loaded[name] = None
            self.loaded.move_to_end(name)
            gains[name] = weight
        for name in [n for n in self.loaded if n not in pinned and n not in gains][: self._surplus()]:
            delete_adapter(self.model, name)
            del self.loaded[name]
        return gains

    def _surplus(self) -> int:
        return max(0, len(self.loaded) - self.capacity)


def _end_tokens(model, tokenizer) -> set[int]:
    """The tokens that end a turn: the generation config's end-of-sequence ids, as `model.generate` (and so
    `launch.py chat`) stops on them; the tokenizer's when the config names none."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured]) - {None}
    return ids or {tokenizer.eos_token_id} - {None}


def _tell(job: Job, event: tuple) -> None:
    """Hand `event` to the job; a job whose listener is gone (its event loop closed) is cancelled instead."""
    try:
        job.emit(event)
    except Exception:  # noqa: BLE001 - nothing is listening any more
        job.cancelled.set()


def server_error(error: Exception) -> ApiError:
    """A 500 that says what kind of failure it was; the details (paths, device state) go to the server's log."""
    print(f"LoRA Forge API: generation failed: {error!r}", file=sys.stderr, flush=True)
    traceback.print_exc()
    return ApiError(f"Generation failed ({type(error).__name__}); the server's log has the details.", status=500,
                    kind="server_error")
