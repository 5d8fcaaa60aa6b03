"""Turns at one model: the page's chat and the API server share one copy of the base, and each generation step
changes which adapters the layers apply (and may load adapters into the model), so one user at a time.

The lock is first come, first served: a server stepping a busy batch cannot starve a person's chat (a plain
lock lets the thread that just released it take it straight back). It is reentrant, so a step that loads
an adapter can take it again.
"""

import threading
from collections import deque

from torch import nn


class FairLock:
    """A reentrant lock handed to waiting threads in the order they asked."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiting: deque[tuple[int, threading.Event]] = deque()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._guard:
            if self._owner == me:
                self._depth += 1
                return
            if self._owner is None and not self._waiting:
                self._owner, self._depth = me, 1
                return
            handed = threading.Event()
            self._waiting.append((me, handed))
        handed.wait()  # release() made this thread the owner before setting the event

    def release(self) -> None:
        with self._guard:
            if self._owner != threading.get_ident():
                raise RuntimeError("release() of a FairLock this thread does not hold")
            self._depth -= 1
            if self._depth:
                return
            if self._waiting:
                self._owner, handed = self._waiting.popleft()
                self._depth = 1
                handed.set()
            else:
                self._owner = None

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_CREATING = threading.Lock()


def model_turns(model: nn.Module) -> FairLock:
    """The one lock of `model` (made on first use and kept on the model object)."""
    with _CREATING:
        if not hasattr(model, "_loraforge_turns"):
            model._loraforge_turns = FairLock()
        return model._loraforge_turns
