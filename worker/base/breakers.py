"""Circuit breakers: what a process knows of a dependency that stopped answering.

Every call to Redis or the broker has a deadline (``AGENTQ_DEPENDENCY_TIMEOUT_S``), but a
request that makes three calls to a Redis whose link hangs would wait three deadlines. So a
process keeps one breaker per server address, shared by all its clients of that server (the
bus, the rate limiter, Celery's publisher when the broker is the same Redis): a call that
fails for want of an answer (a timeout, a refused or broken connection) opens it, and for
the next ``reset_s`` calls fail at once, each caller doing what it does without the
dependency (the rate limit is not checked, an announcement is left to Postgres polling, a
publish to the sweeper). Then one call (one only) tries again; its success closes the
breaker.

The breaker's lock guards its state only, never a call: calls run side by side (pybreaker,
tried first, holds its lock through the call, which made every Redis command of a process
wait for the one before it).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import TypeVar
from urllib.parse import urlsplit

import kombu.exceptions
import redis

log = logging.getLogger("agentq.breakers")

T = TypeVar("T")

# What says "no answer": redis-py's and the sockets' (kombu raises these, or wraps them).
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError, socket.timeout,
                TimeoutError, ConnectionError, kombu.exceptions.OperationalError)


class Unreachable(redis.ConnectionError):
    """The dependency did not answer lately; the call was not made (a redis-py
    ``ConnectionError``, so code that survives Redis trouble survives this too)."""


class Breaker:
    """Closed (calls go through), open (calls fail at once) until ``reset_s`` after the
    last failure, then half-open: one trial call goes through, the others fail at once."""

    def __init__(self, name: str, reset_s: float) -> None:
        self.name = name
        self._reset_s = reset_s
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._trying = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def call(self, work: Callable[[], T], *,
             unreachable: tuple[type[BaseException], ...] = _UNREACHABLE) -> T:
        """``work()``; ``Unreachable`` at once while the breaker is open. An error in
        ``unreachable`` says the dependency did not answer (and opens the breaker)."""
        with self._lock:
            until = self._open_until
            if until is not None and (self._trying or monotonic() < until):
                raise Unreachable(f"{self.name} did not answer lately "
                                  "(AGENTQ_DEPENDENCY_TIMEOUT_S); not called")
            self._trying = until is not None  # half-open: this call is the trial
        try:
            result = work()
        except unreachable:
            self._failed()
            raise
        except BaseException:
            self._answered()  # an error of its own: the server answered
            raise
        self._answered()
        return result

    def _failed(self) -> None:
        with self._lock:
            opened = self._open_until is None
            self._open_until = monotonic() + self._reset_s
            self._trying = False
        if opened:
            log.warning("dependency unreachable; calls fail at once for a while",
                        extra={"dependency": self.name})

    def _answered(self) -> None:
        with self._lock:
            closed = self._open_until is not None
            self._open_until = None
            self._trying = False
        if closed:
            log.warning("dependency reachable again", extra={"dependency": self.name})


_breakers: dict[str, Breaker] = {}
_lock = threading.Lock()


def of(url: str, *, reset_s: float) -> Breaker:
    """This process's breaker for the server ``url`` names (its host and port)."""
    parts = urlsplit(url)
    address = f"{parts.scheme}://{parts.hostname}:{parts.port or ''}"
    with _lock:
        breaker = _breakers.get(address)
        if breaker is None:
            breaker = _breakers[address] = Breaker(address, reset_s)
        return breaker

