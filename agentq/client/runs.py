"""The runs calls, as flows (``agentq.client.protocol``): what ``client.runs`` does, once
for both clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx

from agentq.client.errors import WaitTimeout
from agentq.client.follow import Follow
from agentq.client.models import Event, Page, Run, RunOptions, RunStatus, Waitpoint
from agentq.client.protocol import Core, Flow, Pause, parsed, segment
from agentq.client.retries import retry_after

IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_HELD_S = 30.0  # the longest POST /v1/runs?wait= the server holds a request
POLL_S = 2.0  # between reads of a run still going, unless the server says (Retry-After)


class Keep:
    """``runs.fork``'s input when none is given: the original run's."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = Keep()


class RunCalls:
    """Build each runs request, send it as a flow step, read its answer."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def create(self, agent: str, input: Any, *, idempotency_key: str | None,
               wait: float | None, options: RunOptions) -> Flow[Run]:
        """POST /v1/runs with a key (made here if none is given, so that a retry cannot
        make a second run); with ``wait``, the run once it ended or as it stands then."""
        body = run_body(agent, input, options)
        held = min(wait or 0.0, MAX_HELD_S)
        deadline = time.monotonic() + wait if wait else None
        request = self.core.request(
            "POST", "/v1/runs", json=body, params={"wait": held} if held else None,
            headers={IDEMPOTENCY_KEY: idempotency_key or new_key()},
            read_s=self.core.timeout + held)
        run = parsed(Run, (yield from self.core.call(request, safe=True, deadline=deadline)))
        if deadline is None or run.terminal:
            return run
        return (yield from self._poll(run.id, deadline))

    def get(self, run_id: str) -> Flow[Run]:
        response = yield from self.core.call(self._get(run_id), safe=True)
        return parsed(Run, response)

    def page(self, *, status: RunStatus | None, agent: str | None, session_id: str | None,
             limit: int, cursor: str | None) -> Flow[Page]:
        query = {"status": status, "agent": agent, "session_id": session_id, "limit": limit,
                 "cursor": cursor}
        request = self.core.request("GET", "/v1/runs", params={
            name: value for name, value in query.items() if value is not None})
        return parsed(Page, (yield from self.core.call(request, safe=True)))

    def pages(self, *, status: RunStatus | None, agent: str | None, session_id: str | None,
              limit: int | None, page_size: int) -> Pages:
        def read(size: int, cursor: str | None) -> Flow[Page]:
            return self.page(status=status, agent=agent, session_id=session_id, limit=size,
                             cursor=cursor)

        return Pages(read, limit=limit, page_size=page_size)

    def children(self, run_id: str, *, limit: int | None, page_size: int) -> Pages:
        """The run's children (``ctx.start``), oldest first, page by page."""
        path = f"/v1/runs/{segment(run_id)}/children"

        def read(size: int, cursor: str | None) -> Flow[Page]:
            request = self.core.request("GET", path, params={
                "limit": size, **({} if cursor is None else {"cursor": cursor})})
            return parsed(Page, (yield from self.core.call(request, safe=True)))

        return Pages(read, limit=limit, page_size=page_size)

    def fork(self, run_id: str, from_step: str, *, input: Any,
             idempotency_key: str | None) -> Flow[Run]:
        """POST .../fork with a key (made here if none is given), so that a retry is
        answered with the fork it made, not a second one."""
        body = {"from_step": from_step, **({} if input is KEEP else {"input": input})}
        request = self.core.request("POST", f"/v1/runs/{segment(run_id)}/fork", json=body,
                                    headers={IDEMPOTENCY_KEY: idempotency_key or new_key()})
        return parsed(Run, (yield from self.core.call(request, safe=True)))

    def cancel(self, run_id: str) -> Flow[Run]:
        """POST .../cancel: idempotent by contract, so it may be repeated."""
        request = self.core.request("POST", f"/v1/runs/{segment(run_id)}/cancel")
        return parsed(Run, (yield from self.core.call(request, safe=True)))

    def replay(self, run_id: str) -> Flow[Run]:
        """POST .../replay: a repeat would be refused (409), so it is not repeated."""
        request = self.core.request("POST", f"/v1/runs/{segment(run_id)}/replay")
        return parsed(Run, (yield from self.core.call(request, safe=False)))

    def wait(self, run_id: str, timeout: float) -> Flow[Run]:
        """The run once it has ended; WaitTimeout if it has not within ``timeout``."""
        run = yield from self._poll(run_id, time.monotonic() + timeout)
        if not run.terminal:
            raise WaitTimeout(run, timeout)
        return run

    def events(self, run_id: str, after: int) -> Flow[list[Event]]:
        request = self.core.request("GET", f"/v1/runs/{segment(run_id)}/events",
                                    params={"after": after})
        response = yield from self.core.call(request, safe=True)
        return [Event.model_validate(item) for item in response.json()["items"]]

    def follow(self, run_id: str, *, tokens: bool) -> Follow:
        return Follow(self.core, f"/v1/runs/{segment(run_id)}/events", tokens=tokens)

    def waitpoints(self, run_id: str) -> Flow[list[Waitpoint]]:
        request = self.core.request("GET", f"/v1/runs/{segment(run_id)}/waitpoints")
        response = yield from self.core.call(request, safe=True)
        return [Waitpoint.model_validate(item) for item in response.json()["items"]]

    def complete_waitpoint(self, run_id: str, name: str, data: Any, *,
                           idempotency_key: str | None) -> Flow[Waitpoint]:
        request = self.core.request(
            "POST", f"/v1/runs/{segment(run_id)}/waitpoints/{segment(name)}",
            json={"data": data}, headers={IDEMPOTENCY_KEY: idempotency_key or new_key()})
        return parsed(Waitpoint, (yield from self.core.call(request, safe=True)))

    def _get(self, run_id: str, *, within: float | None = None) -> httpx.Request:
        read_s = None if within is None else max(0.5, min(self.core.timeout, within))
        return self.core.request("GET", f"/v1/runs/{segment(run_id)}", read_s=read_s)

    def _poll(self, run_id: str, deadline: float) -> Flow[Run]:
        """Read the run until it has ended or ``deadline`` has passed, each read and each
        pause within it; the run as it stood last. (GET /v1/runs/{id} has no long-poll:
        between reads the client waits as long as its Retry-After says.)"""
        while True:
            left = deadline - time.monotonic()
            response = yield from self.core.call(self._get(run_id, within=left), safe=True,
                                                 deadline=deadline)
            run = parsed(Run, response)
            left = deadline - time.monotonic()
            if run.terminal or left <= 0:
                return run
            yield Pause(min(retry_after(response.headers) or POLL_S, left))


class Pages:
    """Where a walk through runs, page by page along ``next_cursor``, stands. ``read``
    is the flow of one page: its size and cursor in, the page out."""

    def __init__(self, read: Callable[[int, str | None], Flow[Page]], *, limit: int | None,
                 page_size: int) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit cannot be negative")
        self._read_page = read
        self._left, self._page_size = limit, page_size
        self._cursor: str | None = None
        self._done = limit == 0

    def next(self) -> Flow[list[Run]] | None:
        """The flow that reads the next page's runs, or None after the last."""
        return None if self._done else self._read()

    def _read(self) -> Flow[list[Run]]:
        size = self._page_size if self._left is None else min(self._page_size, self._left)
        page = yield from self._read_page(size, self._cursor)
        items = page.items if self._left is None else page.items[:self._left]
        if self._left is not None:
            self._left -= len(items)
        self._cursor = page.next_cursor
        self._done = self._cursor is None or self._left == 0 or not items
        return items


def new_key() -> str:
    """A fresh Idempotency-Key, for a request the caller gave none."""
    return f"agentq-client-{uuid.uuid4()}"


def run_body(agent: str, input: Any, options: RunOptions) -> dict[str, Any]:
    """What ``POST /v1/runs`` (or a batch's item) is sent for a run of ``agent``."""
    return {"agent": agent, "input": {} if input is None else input,
            **{name: _jsonable(value) for name, value in options.items()}}


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
