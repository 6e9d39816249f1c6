"""HTTP requests with a wall-clock deadline, whatever the peer does.

httpx's timeouts bound each network operation (connect, one read, one write), not the
request: a peer that sends one byte a second never trips a read timeout, and holds the
caller for as long as it likes. ``client()`` makes an httpx client whose every socket
operation is bounded by what is left of the deadline set with ``within(seconds)``, so the
whole request (connecting, sending, the headers, the body as far as the caller reads it)
ends in time, with ``httpx.TimeoutException``.

The deadline is a context variable: it belongs to the thread (or greenlet) making the
request, so one client serves many threads, each with its own deadline.

Name lookups are bounded too (``lookup``): ``getaddrinfo`` cannot be interrupted, so it runs
on a daemon thread of its own, and the caller stops waiting for it when the deadline passes
(a resolver that never answers holds that thread until the system's own resolver timeout,
not the caller). Callers looking up one name at once share one lookup, so a name that never
resolves holds one thread however many deliveries wait for it, and no other name waits
behind it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_ENDS: ContextVar[float | None] = ContextVar("agentq_http_deadline", default=None)
_Lookup = Future[list[tuple[Any, ...]]]
_lookups: dict[tuple[str, int], _Lookup] = {}  # (host, port) -> the lookup under way
_lookups_lock = threading.Lock()


def _forked() -> None:  # the child has none of the parent's lookup threads
    global _lookups_lock
    _lookups.clear()
    _lookups_lock = threading.Lock()


os.register_at_fork(after_in_child=_forked)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Requests made in this block end within ``seconds`` of its start."""
    token = _ENDS.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _ENDS.reset(token)


def left() -> float | None:
    """Seconds left of the deadline set with ``within`` (0 if it passed), or None."""
    ends = _ENDS.get()
    return None if ends is None else max(0.0, ends - time.monotonic())


def lookup(host: str, port: int, *, timeout: float | None) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo(host, port)`` for a TCP connection, given up after ``timeout``
    seconds or what is left of the deadline, if less (``TimeoutError``). ``socket.gaierror``
    as ``getaddrinfo`` raises it."""
    timeout = _left(timeout, TimeoutError)
    key = (host, port)
    with _lookups_lock:
        future = _lookups.get(key)
        if future is None:
            future = _lookups[key] = Future()
            threading.Thread(target=_look_up, args=(key, future), daemon=True,
                             name="agentq-lookup").start()
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        raise TimeoutError(f"looking up {host!r} took longer than {timeout:g} s") from None


def _look_up(key: tuple[str, int], future: _Lookup) -> None:
    try:
        future.set_result(socket.getaddrinfo(*key, type=socket.SOCK_STREAM))
    except BaseException as error:  # handed to every caller waiting
        future.set_exception(error)
    finally:
        with _lookups_lock:
            if _lookups.get(key) is future:
                del _lookups[key]


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
        """Connect to ``host`` (a name is looked up within the deadline first, and its
        addresses tried in turn) within what is left of the deadline."""
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                infos = lookup(host, port, timeout=_left(timeout, httpcore.ConnectTimeout))
            except TimeoutError as error:
                raise httpcore.ConnectTimeout(str(error)) from None
            except OSError as error:
                raise httpcore.ConnectError(str(error)) from None
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses[:-1]:
            try:
                return _Stream(super().connect_tcp(
                    address, port, _left(timeout, httpcore.ConnectTimeout), local_address,
                    socket_options))
            except httpcore.ConnectError:
                continue  # the next address, in what is left
        return _Stream(super().connect_tcp(addresses[-1], port,
                                           _left(timeout, httpcore.ConnectTimeout),
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
