"""When a request is tried again: after a 429 or a 503, or a connection that failed, at
most ``max_retries`` times, waiting what ``Retry-After`` says or else an exponential
backoff with jitter. Only a request that is safe to repeat is repeated (idempotent, or
carrying an ``Idempotency-Key``), except one that never left: a refused connection."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503})
# The request never reached the server: repeating it cannot do anything twice.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 8.0
# A longer Retry-After goes to the caller as the error (with its retry_after), not slept.
MAX_RETRY_AFTER_S = 60.0


def backoff(tries: int) -> float:
    """The pause after the ``tries``-th failure: doubling from 0.5 s to at most 8 s, each
    drawn from its upper half so that clients that failed together spread out."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (tries - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (a number of seconds or an HTTP date), if it says."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)


@dataclass(frozen=True)
class Retries:
    """The retry policy of one client."""

    max_retries: int

    def pause(self, tries: int, reply: httpx.Response | httpx.TransportError, *, safe: bool,
              deadline: float | None = None) -> float | None:
        """How long to wait before trying again after the ``tries``-th ``reply``, or None:
        do not (a final answer, retries used up, or no time left before ``deadline``)."""
        if tries > self.max_retries:
            return None
        wait = self._wait(tries, reply, safe=safe)
        if wait is None or (deadline is not None and time.monotonic() + wait > deadline):
            return None
        return wait

    def _wait(self, tries: int, reply: httpx.Response | httpx.TransportError, *,
              safe: bool) -> float | None:
        if isinstance(reply, httpx.TransportError):
            return backoff(tries) if safe or isinstance(reply, NOT_SENT) else None
        if reply.status_code not in RETRY_STATUSES or not safe:
            return None
        after = retry_after(reply.headers)
        if after is None:
            return backoff(tries)
        # Never sooner than asked; a little later, so that clients told the same moment
        # do not all come back at once.
        return after * random.uniform(1.0, 1.1) if after <= MAX_RETRY_AFTER_S else None
