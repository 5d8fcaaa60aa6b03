"""Stopping a training run cleanly: SIGTERM (a cancel from the page or `launch.py cancel`) or Ctrl-C asks the
loop to checkpoint and stop; the loop asks `StopFlag.requested` between steps and marks the regions a stop may cut
short (a step's forward and backward passes, an evaluation) with `abandonable()`."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StepAbandoned(Exception):
    """A stop request arrived during a step's forward and backward passes."""


class StopFlag:
    """SIGTERM (a cancel) or Ctrl-C asks the loop to save a checkpoint and stop; a second Ctrl-C stops at once.
    Between steps the loop stops after the current one; during a step's forward and backward passes (minutes
    for a large batch on a CPU, longer than a cancel waits before SIGKILL) the step is abandoned at once, since
    nothing of it has been applied yet, and so is an evaluation in progress.

    With `abandon=False` (ranks of a distributed run, which must all take the same passes and collectives) nothing
    is cut short: the ranks agree at each step's start whether any of them was asked to stop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, abandon: bool = True) -> None:
        self.requested = False
        self._abandon = abandon
        self._abandonable = False
        self._previous = {sig: signal.signal(sig, self._request) for sig in self.SIGNALS} if _main_thread() else {}

    def _request(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self._abandonable:
            raise StepAbandoned

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        """The region a stop request may cut short by raising StepAbandoned where the program is."""
        if self.requested and self._abandon:
            raise StepAbandoned
        self._abandonable = self._abandon
        try:
            yield
        finally:
            self._abandonable = False

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
