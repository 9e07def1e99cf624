"""The gate user code runs behind: one request at a time, in arrival order, bounded, with deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from serving.errors import QueueFull, RequestTimeout
from serving.frontend.handlers import OneAtATime, user_code_waiting_limit
from serving.service import request_deadline


@pytest.mark.parametrize("attempt", range(3))
def test_a_request_arriving_as_the_gate_frees_waits_behind_the_one_already_waiting(attempt):
    """A plain lock lets whoever asks first after a release win; the thread that just finished a request and
    reads the next one asks before a sleeping waiter wakes, so under steady load a waiter can starve."""
    gate = OneAtATime(max_waiting=16)
    order: list[str] = []

    def waiting():
        with gate.turn():
            order.append("waiting")

    token = request_deadline.set(time.monotonic() + 10)  # this thread's own deadline, not one left by another test
    try:
        with gate.turn():
            waiter = threading.Thread(target=waiting)
            waiter.start()
            time.sleep(0.05)  # it waits for the gate
        with gate.turn():  # arrives right as the gate frees
            order.append("newcomer")
    finally:
        request_deadline.reset(token)
    waiter.join(5)
    assert order == ["waiting", "newcomer"]


def test_the_waiting_limit_and_the_deadline_hold_and_free_their_places():
    gate = OneAtATime(max_waiting=2)
    inside, release = threading.Event(), threading.Event()

    def holder():
        with gate.turn():
            inside.set()
            release.wait(5)

    threading.Thread(target=holder).start()
    inside.wait(5)
    outcomes: list = []

    def waiter(seconds):
        token = request_deadline.set(time.monotonic() + seconds)
        try:
            with gate.turn():
                outcomes.append("ran")
        except (QueueFull, RequestTimeout) as exc:
            outcomes.append(type(exc).__name__)
        finally:
            request_deadline.reset(token)

    waiters = [threading.Thread(target=waiter, args=(s,)) for s in (0.2, 5)]
    for thread in waiters:
        thread.start()
    time.sleep(0.05)
    with pytest.raises(QueueFull):
        with gate.turn():
            pass
    waiters[0].join(5)
    assert outcomes == ["RequestTimeout"]  # its deadline passed while the holder ran; its place is free again
    release.set()
    waiters[1].join(5)
    assert outcomes == ["RequestTimeout", "ran"]  # the one behind the timed-out one still gets its turn


def test_the_waiting_limit_stays_below_the_request_threads():
    assert user_code_waiting_limit(2048, 128) == 64
    assert user_code_waiting_limit(6, 128) == 6
    assert user_code_waiting_limit(2048, 1) == 1
