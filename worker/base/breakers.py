"""Circuit breakers: what a process knows of a dependency that stopped answering.

Every call to Redis or the broker has a deadline (``AGENTQ_DEPENDENCY_TIMEOUT_S``), but a
request that makes three calls to a Redis whose link hangs would wait three deadlines. So a
process keeps one breaker per server address, shared by all its clients of that server (the
bus, the rate limiter, Celery's publisher when the broker is the same Redis): a call that
fails for want of an answer (a timeout, a refused or broken connection) opens it, and for
the next ``reset_s`` calls fail at once, each caller doing what it does without the
dependency (the rate limit is not checked, an announcement is left to Postgres polling, a
publish to the sweeper). Then one call tries again, and a success closes the breaker.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import kombu.exceptions
import pybreaker
import redis

log = logging.getLogger("agentq.breakers")

T = TypeVar("T")

# What says "no answer": redis-py's and the sockets' (kombu raises these, or wraps them).
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError, socket.timeout,
                TimeoutError, ConnectionError, kombu.exceptions.OperationalError)


class Unreachable(redis.ConnectionError):
    """The dependency did not answer lately; the call was not made (a redis-py
    ``ConnectionError``, so code that survives Redis trouble survives this too)."""


class _Logged(pybreaker.CircuitBreakerListener):
    def state_change(self, breaker: pybreaker.CircuitBreaker, old: object,
                     new: object) -> None:
        name = getattr(new, "name", str(new))
        if name == pybreaker.STATE_OPEN:
            log.warning("dependency unreachable; calls fail at once for a while",
                        extra={"dependency": breaker.name})
        elif name == pybreaker.STATE_CLOSED:
            log.warning("dependency reachable again", extra={"dependency": breaker.name})


_breakers: dict[str, pybreaker.CircuitBreaker] = {}
_lock = threading.Lock()


def of(url: str, *, reset_s: float) -> pybreaker.CircuitBreaker:
    """This process's breaker for the server ``url`` names (its host and port)."""
    parts = urlsplit(url)
    address = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"
    with _lock:
        breaker = _breakers.get(address)
        if breaker is None:
            breaker = pybreaker.CircuitBreaker(
                fail_max=1, reset_timeout=reset_s, name=address, listeners=[_Logged()],
                exclude=[lambda error: not isinstance(error, _UNREACHABLE)],
                throw_new_error_on_trip=False)
            _breakers[address] = breaker
        return breaker


def call(breaker: pybreaker.CircuitBreaker, work: Callable[[], T]) -> T:
    """``work()`` through ``breaker``; ``Unreachable`` at once while it is open."""
    try:
        result: T = breaker.call(work)
    except pybreaker.CircuitBreakerError:
        raise Unreachable(f"{breaker.name} did not answer lately "
                          "(AGENTQ_DEPENDENCY_TIMEOUT_S); not called") from None
    return result
