"""HTTP requests with a wall-clock deadline, whatever the peer does.

httpx's timeouts bound each network operation (connect, one read, one write), not the
request: a peer that sends one byte a second never trips a read timeout, and holds the
caller for as long as it likes. ``client()`` makes an httpx client whose every socket
operation is bounded by what is left of the deadline set with ``within(seconds)``, so the
whole request (connecting, sending, the headers, the body as far as the caller reads it)
ends in time, with ``httpx.TimeoutException``.

The deadline is a context variable: it belongs to the thread (or greenlet) making the
request, so one client serves many threads, each with its own deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_ENDS: ContextVar[float | None] = ContextVar("agentq_http_deadline", default=None)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Requests made in this block end within ``seconds`` of its start."""
    token = _ENDS.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _ENDS.reset(token)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """The operation's timeout, cut to what is left of the deadline (if one is set)."""
    ends = _ENDS.get()
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        raise error("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname,
                                              _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(super().connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                           local_address, socket_options))


def client(*, limits: httpx.Limits, proxy: str | None = None,
           **options: Any) -> httpx.Client:
    """An ``httpx.Client`` (``options`` as httpx takes them; through ``proxy`` if given)
    whose requests keep the deadline of ``within``."""
    transport = httpx.HTTPTransport(limits=limits, proxy=proxy)
    # httpx builds the pool (direct or through the proxy); only its network backend
    # differs. (httpx offers no other seam for it.)
    transport._pool._network_backend = _Backend()
    return httpx.Client(transport=transport, **options)
