"""worker.base.breakers: calls run side by side; an unanswered call opens the breaker; one
trial closes it again."""

from __future__ import annotations

import threading

import pytest
import redis

from worker.base import breakers
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


def test_an_unanswered_call_opens_it_and_one_trial_closes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(breakers, "monotonic", lambda: now[0])
    breaker = Breaker("test", reset_s=5)

    def hang() -> None:
        raise redis.TimeoutError("no answer")

    with pytest.raises(redis.TimeoutError):
        breaker.call(hang)
    with pytest.raises(Unreachable):  # open: not called at all
        breaker.call(lambda: pytest.fail("called while open"))
    now[0] += 5.1  # half-open: one trial goes through
    trying, answer = threading.Event(), threading.Event()
    results: list[object] = []

    def trial() -> str:
        trying.set()
        assert answer.wait(5)
        return "answered"

    thread = threading.Thread(target=lambda: results.append(breaker.call(trial)))
    thread.start()
    assert trying.wait(5)
    with pytest.raises(Unreachable):  # the others fail at once while it is out
        breaker.call(lambda: "not tried")
    answer.set()
    thread.join(timeout=5)
    assert results == ["answered"] and not breaker.is_open
    assert breaker.call(lambda: 42) == 42


def test_an_error_of_the_calls_own_is_an_answer() -> None:
    breaker = Breaker("test", reset_s=5)
    with pytest.raises(ValueError):
        breaker.call(lambda: int("not a number"))
    assert not breaker.is_open
