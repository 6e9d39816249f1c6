"""The client's one implementation, with no I/O of its own.

Every call is a *flow*: a generator that yields what it needs done, a ``Send`` (an HTTP
request) or a ``Pause`` (a wait between tries), and is given back the response (or the
``httpx.TransportError`` the request met). It builds the requests, reads the answers,
retries and raises the typed errors. ``Client`` runs flows with ``httpx.Client`` and
``time.sleep``, ``AsyncClient`` with ``httpx.AsyncClient`` and ``asyncio.sleep``: the two
differ in nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel

from agentq.client.errors import BY_STATUS, ApiError, ConnectionFailed
from agentq.client.retries import Retries, retry_after

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

USER_AGENT = f"agentq-client/{version('agentq')} httpx/{httpx.__version__}"


@dataclass(frozen=True)
class Send:
    """Send this request (its body left unread if ``stream``, unless it is an error)."""

    request: httpx.Request
    stream: bool = False


@dataclass(frozen=True)
class Pause:
    """Wait this long before the next step."""

    seconds: float


Step = Send | Pause
Reply = httpx.Response | httpx.TransportError | None  # what a Send gets; a Pause gets None
Flow = Generator[Step, Reply, T]


@dataclass(frozen=True)
class Done(Generic[T]):
    """The flow has finished with this value."""

    value: T


def advance(flow: Flow[T], reply: Reply) -> Step | Done[T]:
    """Give the flow what its last step came to (None at the start): its next step, or
    its value once it has finished."""
    try:
        return flow.send(reply)
    except StopIteration as stop:
        return Done(stop.value)


class Runner(Protocol):
    """Runs a flow to its value (``Client``)."""

    def __call__(self, flow: Flow[T], /) -> T: ...


class AsyncRunner(Protocol):
    """Runs a flow to its value, awaited (``AsyncClient``)."""

    def __call__(self, flow: Flow[T], /) -> Awaitable[T]: ...


def segment(value: str) -> str:
    """An id or a name as one path segment."""
    if not value:
        raise ValueError("an id or a name cannot be empty")
    return quote(value, safe="")


def parsed(model: type[M], response: httpx.Response) -> M:
    return model.model_validate_json(response.content)


class Core:
    """What every call shares: where the server is, the key, the timeouts, the retries."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float,
                 max_retries: int) -> None:
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        if not api_key.strip():
            raise ValueError("api_key is empty")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries cannot be negative")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = Retries(max_retries)
        self._headers = {"Authorization": f"Bearer {api_key.strip()}",
                         "User-Agent": USER_AGENT, "Accept": "application/json"}

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None, headers: dict[str, str] | None = None,
                read_s: float | None = None) -> httpx.Request:
        """A request with the key and an explicit timeout (``read_s`` for its reads)."""
        timeout = httpx.Timeout(self.timeout, read=read_s or self.timeout)
        return httpx.Request(method, self.base_url + path, params=params, json=json,
                             headers={**self._headers, **(headers or {})},
                             extensions={"timeout": timeout.as_dict()})

    def call(self, request: httpx.Request, *, safe: bool, stream: bool = False,
             deadline: float | None = None) -> Flow[httpx.Response]:
        """Send the request, trying again as the retry policy says (``safe``: repeating it
        cannot do anything twice), not past ``deadline`` (``time.monotonic()``); the
        response if it succeeded, else its typed error."""
        tries = 0
        while True:
            reply = yield Send(request, stream)
            if reply is None:
                raise RuntimeError("the runner gave a Send no reply")
            tries += 1
            pause = self.retries.pause(tries, reply, safe=safe, deadline=deadline)
            if pause is None:
                return checked(request, reply)
            yield Pause(pause)


def checked(request: httpx.Request,
            reply: httpx.Response | httpx.TransportError) -> httpx.Response:
    """The response if it succeeded; else raise what went wrong, typed."""
    if isinstance(reply, httpx.TransportError):
        raise ConnectionFailed(f"{request.method} {request.url}: {reply!r}") from reply
    if reply.is_error:
        raise problem(reply)
    return reply


def problem(response: httpx.Response) -> ApiError:
    """The typed error of an error answer, from its problem+json (or what there is)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    kind = BY_STATUS.get(response.status_code, ApiError)
    return kind(status=response.status_code,
                title=str(body.get("title") or response.reason_phrase),
                detail=str(body.get("detail") or response.text[:500]),
                type=str(body.get("type") or "about:blank"),
                request_id=body.get("request_id"),
                retry_after=retry_after(response.headers), body=body)
