"""Which failures earn another attempt, and how long to wait before it.

Retryable: ``RetryableError`` (the agent asks), a timeout of the attempt, the agent's own
``retry_on`` types, and by default timeouts, connection errors, and HTTP 429 / 5xx answers
raised by httpx. Anything else fails the run at once: another attempt would not help.
"""

from __future__ import annotations

import email.utils
import math
import random
import socket
from datetime import UTC, datetime

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import InterfaceError, OperationalError

from worker.base.errors import RetryableError

DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (
    TimeoutError,
    ConnectionError,
    socket.timeout,
    httpx.TransportError,  # connect errors, read timeouts, protocol errors
    OperationalError,  # the database went away mid-attempt (an emit, say)
    InterfaceError,
)


def is_timeout(error: BaseException) -> bool:
    """The attempt ran out of time (Celery's soft time limit)."""
    return isinstance(error, SoftTimeLimitExceeded)


def is_retryable(error: BaseException, retry_on: tuple[type[BaseException], ...] = ()) -> bool:
    if isinstance(error, RetryableError) or is_timeout(error):
        return True
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status == 429 or status >= 500
    return isinstance(error, DEFAULT_RETRY_ON + retry_on)


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
    ceiling = min(max_s, base_s * 2 ** max(0, attempt - 1))
    return random.uniform(0, ceiling)


def delay_s(error: BaseException, attempt: int, *, base_s: float, max_s: float) -> float:
    """The wait before the next attempt: the error's own ``delay_s`` (capped), else backoff."""
    asked = getattr(error, "delay_s", None)
    if isinstance(error, RetryableError) and asked is not None:
        return min(float(asked), max_s)
    retry_after = _retry_after(error)
    if retry_after is not None:
        return min(retry_after, max_s)
    return backoff_s(attempt, base_s=base_s, max_s=max_s)


def _retry_after(error: BaseException) -> float | None:
    """Honour an HTTP 429/503 ``Retry-After`` from httpx."""
    if not isinstance(error, httpx.HTTPStatusError):
        return None
    return retry_after_s(error.response)


def retry_after_s(response: httpx.Response) -> float | None:
    """A response's ``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    return parse_retry_after(response.headers.get("Retry-After", ""))


def parse_retry_after(value: str) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
