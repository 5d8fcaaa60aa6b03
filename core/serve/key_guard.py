"""Wrong API keys, counted per client address: past MAX_FAILURES in WINDOW_S seconds that address is refused
(429) until the window has passed, right key or not, so a key cannot be guessed at network speed."""

import threading
import time
from collections import deque

from core.serve.errors import ApiError

MAX_FAILURES = 10
WINDOW_S = 60.0


class KeyGuard:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S, clock=time.monotonic) -> None:
        self.max_failures, self.window_s, self.clock = max_failures, window_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def check_allowed(self, address: str) -> None:
        """Refuse an address that failed too often lately, saying when to try again."""
        with self._lock:
            recent = self._recent(address)
            if len(recent) >= self.max_failures:
                wait = int(recent[0] + self.window_s - self.clock()) + 1
                raise ApiError(f"Too many wrong API keys from {address}; try again in {wait} s with the right key.",
                               status=429, code="rate_limit_exceeded", kind="rate_limit_error")

    def record_failure(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self.clock())

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and times[0] <= self.clock() - self.window_s:
            times.popleft()
        return times
