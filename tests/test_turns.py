"""The model's lock hands turns out in the order they were asked for, so a busy server cannot starve a chat."""

import threading
import time

import pytest

from core.chat.turns import FairLock


def test_waiting_threads_get_their_turn_in_arrival_order():
    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for name in "abcd":
        thread = threading.Thread(target=lambda n=name: (lock.acquire(), order.append(n), lock.release()))
        thread.start()
        threads.append(thread)
        time.sleep(0.05)  # each asks after the one before
    lock.release()
    lock.acquire()  # taking it straight back, as a stepping engine does, waits behind everyone who asked first
    assert order == list("abcd")
    lock.release()
    for thread in threads:
        thread.join(timeout=5)


def test_the_holder_may_take_it_again_and_others_may_not_release_it():
    lock = FairLock()
    with lock, lock:
        errors = []
        thread = threading.Thread(target=lambda: errors.append(pytest.raises(RuntimeError, lock.release)))
        thread.start()
        thread.join()
        assert errors
    with lock:  # free again after the nested exits
        pass
