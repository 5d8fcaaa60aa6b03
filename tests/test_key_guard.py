"""Wrong API keys are counted per address within a window; past the limit that address waits the window out."""

import pytest

from core.serve.errors import ApiError
from core.serve.key_guard import KeyGuard


def test_an_address_past_the_limit_waits_out_the_window_and_others_do_not():
    now = [0.0]
    guard = KeyGuard(max_failures=3, window_s=60, clock=lambda: now[0])
    for second in (0, 10, 20):
        now[0] = second
        guard.check_allowed("10.0.0.5")
        guard.record_failure("10.0.0.5")
    with pytest.raises(ApiError) as refused:
        guard.check_allowed("10.0.0.5")
    assert refused.value.status == 429 and "try again in 41 s" in str(refused.value)
    guard.check_allowed("10.0.0.6")  # another address is not held up
    now[0] = 60.5  # the first failure has left the window
    guard.check_allowed("10.0.0.5")
