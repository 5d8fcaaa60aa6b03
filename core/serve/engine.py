"""The API server's engine: one thread decodes every request, all of them in one batch whatever their adapters.

    submit(job) ─► waiting (FIFO; full: ServerBusy) ─► engine thread, each turn at the model:
        admit waiting jobs into the batch (their adapters loaded on first use, at most `max_adapters` kept)
        one decoding step for every running job (core.chat.decoding: the base product once per step)
        each job's text grows (end-of-turn tokens, stop strings, max_tokens) and is emitted as it grows
        finished and cancelled jobs leave the batch; the others go on

Jobs hear back through their `emit` callable: ("text", piece), then ("done", Finished) or ("error", error). The
thread takes the model's turn (core.chat.turns) for each step, so the page's chat on the same model waits at
most one step.
"""

import threading
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

    def __init__(self, model, tokenizer, max_batch: int = 16, max_waiting: int = 64, max_adapters: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.slots = AdapterSlots(model, max_adapters)
        self.end_tokens = _end_tokens(model, tokenizer)
        self._waiting: deque[Job] = deque()
        self._running: list[tuple[Job, ReplyText]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        """Queue `job`; ServerBusy (HTTP 429) when `max_waiting` jobs already wait."""
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise ServerBusy(f"The server is busy: {len(self._waiting)} requests are waiting. Retry shortly.",
                                 status=429, code="rate_limit_exceeded", kind="rate_limit_error")
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="loraforge-api-engine", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _serve(self) -> None:
        batch = DecodingBatch(self.model)
        while True:
            with self._wake:
                while not self._waiting and not self._running:
                    self._wake.wait()
                arrivals = [self._waiting.popleft()
                            for _ in range(min(len(self._waiting), self.max_batch - len(self._running)))]
            try:
                with model_turns(self.model):
                    for job in arrivals:
                        self._admit(batch, job)
                    if self._running:
                        self._step(batch)
            except Exception as error:  # noqa: BLE001 - every job hears of it; the engine goes on
                failure = ApiError(f"Generation failed: {error}", status=500, kind="server_error")
                for job, _ in self._running:
                    job.emit(("error", failure))
                self._running, batch = [], DecodingBatch(self.model)

    def _admit(self, batch: DecodingBatch, job: Job) -> None:
        if job.cancelled.is_set():
            return
        try:
            gains = self.slots.gains(job.adapters, pinned={name for row in batch.rows for name in row.gains})
        except LoraForgeError as error:
            job.emit(("error", error))
            return
        row = Row(job.prompt, gains, job.sampling)
        token = batch.admit(row)
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
            job.emit(("text", piece))
        if ended or stopped or full:
            reason = "stop" if ended or stopped else "length"
            job.emit(("done", Finished(reason, len(row.prompt), len(tokens))))
            return True
        return False

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
    """The tokens that end a turn: the generation config's end-of-sequence ids and the tokenizer's."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {token for token in ids if token is not None}
