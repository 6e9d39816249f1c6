"""worker.base.breakers: calls run side by side; an unanswered call opens the breaker; one
trial closes it again."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from worker.base.breakers import Breaker, Unreachable


def test_calls_through_a_closed_breaker_run_side_by_side() -> None:
    breaker, inside, both = Breaker("test", reset_s=1), threading.Barrier(2, timeout=2), []

    def call() -> None:
        both.append(breaker.call(lambda: inside.wait()))  # each waits for the other

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert len(both) == 2  # neither waited for the other's call to end


def test_an_unanswered_call_opens_it_and_one_trial_closes_it() -> None:
    breaker = Breaker("test", reset_s=0.3)

    def hang() -> None:
        raise redis.TimeoutError("no answer")

    with pytest.raises(redis.TimeoutError):
        breaker.call(hang)
    with pytest.raises(Unreachable):  # open: not called at all
        breaker.call(lambda: pytest.fail("called while open"))
    with pytest.raises(ValueError):  # an error of the call's own is an answer
        Breaker("other", reset_s=1).call(lambda: (_ for _ in ()).throw(ValueError("x")))
    time.sleep(0.35)
    trial = threading.Event()
    results: list[object] = []

    def slow_trial() -> str:
        trial.set()
        time.sleep(0.2)
        return "answered"

    thread = threading.Thread(target=lambda: results.append(breaker.call(slow_trial)))
    thread.start()
    trial.wait(2)
    with pytest.raises(Unreachable):  # half-open: one trial at a time, the rest fail at once
        breaker.call(lambda: "not tried")
    thread.join(timeout=5)
    assert results == ["answered"] and not breaker.is_open
    assert breaker.call(lambda: 42) == 42
