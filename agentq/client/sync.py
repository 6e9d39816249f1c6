"""``Client``: agentq's API from synchronous code, over ``httpx.Client``."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx
from httpx_sse import EventSource

from agentq.client.batches import BatchCalls
from agentq.client.models import (
    Batch,
    BatchCreated,
    BatchItem,
    Event,
    Page,
    Run,
    RunOptions,
    RunStatus,
    StreamItem,
    Waitpoint,
)
from agentq.client.protocol import Core, Done, Flow, Pause, Reply, Runner, Step, advance
from agentq.client.runs import KEEP, RunCalls

T = TypeVar("T")


class Client:
    """agentq's API: ``client.runs``, ``client.batches``. Close it (or use it as a context
    manager) when done.

    ``timeout`` bounds each connect, read and write (a ``?wait`` request's read gets the
    wait on top); ``max_retries`` bounds the tries again after a 429, a 503 or a failed
    connection, for requests safe to repeat. ``transport`` replaces httpx's own (tests).
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 max_retries: int = 3, transport: httpx.BaseTransport | None = None) -> None:
        self._core = Core(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self._http = httpx.Client(transport=transport, follow_redirects=False)
        batches = BatchCalls(self._core)
        self.runs = Runs(RunCalls(self._core), batches, self._run)
        self.batches = Batches(batches, self._run)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _run(self, flow: Flow[T]) -> T:
        step = advance(flow, None)
        while not isinstance(step, Done):
            step = advance(flow, self._perform(step))
        return step.value

    def _perform(self, step: Step) -> Reply:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        try:
            response = self._http.send(step.request, stream=step.stream)
            if step.stream and response.is_error:
                response.read()  # the problem+json, for the error
        except httpx.TransportError as error:
            return error
        return response


class Runs:
    """Submit runs (one or a batch), read them, follow them, cancel, replay and fork them,
    walk their children, answer their waits."""

    def __init__(self, calls: RunCalls, batches: BatchCalls, run: Runner) -> None:
        self._calls, self._batches, self._run = calls, batches, run

    def create(self, agent: str, input: Any = None, *, idempotency_key: str | None = None,
               wait: float | None = None, **options: Unpack[RunOptions]) -> Run:
        """Submit a run of ``agent`` (``options``: what POST /v1/runs takes: session_id,
        priority, timeout_s, max_attempts, metadata, delay_s, start_at, ttl_s,
        concurrency_key, ...). With ``wait``, wait up to that many seconds for it to end;
        the run comes back as it stands either way. Without an ``idempotency_key`` one is
        made, so that a retry cannot create a second run."""
        return self._run(self._calls.create(agent, input, idempotency_key=idempotency_key,
                                            wait=wait, options=options))

    def batch(self, items: builtins.list[dict[str, Any] | BatchItem], *,
              idempotency_key: str | None = None) -> BatchCreated:
        """Submit up to 1,000 runs in one request, all or none: each item is a
        ``BatchItem`` (or a dict of what it takes), with its own key if it should be
        answered by the run that key made before. The batch comes back with a run per item,
        in the items' order; without an ``idempotency_key`` one is made for the request,
        so that a retry cannot create a second batch."""
        return self._run(self._batches.create(items, idempotency_key=idempotency_key))

    def get(self, run_id: str) -> Run:
        return self._run(self._calls.get(run_id))

    def list(self, *, status: RunStatus | None = None, agent: str | None = None,
             session_id: str | None = None, limit: int | None = None,
             page_size: int = 100) -> Iterator[Run]:
        """The tenant's runs, newest first, at most ``limit`` of them (all if None),
        read ``page_size`` at a time as the iteration goes."""
        pages = self._calls.pages(status=status, agent=agent, session_id=session_id,
                                  limit=limit, page_size=page_size)
        while (flow := pages.next()) is not None:
            yield from self._run(flow)

    def page(self, *, status: RunStatus | None = None, agent: str | None = None,
             session_id: str | None = None, limit: int = 20,
             cursor: str | None = None) -> Page:
        """One page of runs; pass its ``next_cursor`` as ``cursor`` for the next."""
        return self._run(self._calls.page(status=status, agent=agent, session_id=session_id,
                                          limit=limit, cursor=cursor))

    def children(self, run_id: str, *, limit: int | None = None,
                 page_size: int = 50) -> Iterator[Run]:
        """The runs ``run_id`` started (``ctx.start``), oldest first, at most ``limit`` of
        them (all if None), read ``page_size`` at a time as the iteration goes."""
        pages = self._calls.children(run_id, limit=limit, page_size=page_size)
        while (flow := pages.next()) is not None:
            yield from self._run(flow)

    def fork(self, run_id: str, from_step: str, *, input: Any = KEEP,
             idempotency_key: str | None = None) -> Run:
        """A new run of the run's agent that reuses its steps recorded before
        ``from_step`` (a step's name, as ``llm:3``) and runs from there, with ``input``
        (default: the original's). Without an ``idempotency_key`` one is made, so that a
        retry cannot make a second fork."""
        return self._run(self._calls.fork(run_id, from_step, input=input,
                                          idempotency_key=idempotency_key))

    def cancel(self, run_id: str) -> Run:
        """Cancel the run (harmless if it is cancelled already; Conflict if it ended)."""
        return self._run(self._calls.cancel(run_id))

    def replay(self, run_id: str) -> Run:
        """Queue a failed, dead-lettered, cancelled or expired run again."""
        return self._run(self._calls.replay(run_id))

    def wait(self, run_id: str, timeout: float) -> Run:
        """The run once it has ended; WaitTimeout if it has not within ``timeout`` s."""
        return self._run(self._calls.wait(run_id, timeout))

    def events(self, run_id: str, *, after: int = 0) -> builtins.list[Event]:
        """The run's event log so far, after seq ``after``."""
        return self._run(self._calls.events(run_id, after))

    def stream(self, run_id: str, *, tokens: bool = False) -> Iterator[StreamItem]:
        """The run's events as they happen, from its first, until its terminal event;
        with ``tokens``, its streamed LLM calls' text too (Token, TokenReset). A dropped
        connection is resumed where it broke off: no event is missed or repeated."""
        follow = self._calls.follow(run_id, tokens=tokens)
        while not follow.done:
            response = self._run(follow.connect())
            try:
                for message in EventSource(response).iter_sse():
                    yield from follow.receive(message)
                    if follow.done or follow.hang_up:
                        break
                follow.ended()
            except httpx.TransportError as error:
                follow.dropped(error)
            finally:
                response.close()

    def waitpoints(self, run_id: str) -> builtins.list[Waitpoint]:
        """The run's waitpoints, oldest first (one still waiting has its signed url)."""
        return self._run(self._calls.waitpoints(run_id))

    def complete_waitpoint(self, run_id: str, name: str, data: Any, *,
                           idempotency_key: str | None = None) -> Waitpoint:
        """Answer the waitpoint ``name`` with ``data``: the run goes on with it."""
        return self._run(self._calls.complete_waitpoint(run_id, name, data,
                                                        idempotency_key=idempotency_key))


class Batches:
    """Read how a batch (``runs.batch``) stands."""

    def __init__(self, calls: BatchCalls, run: Runner) -> None:
        self._calls, self._run = calls, run

    def get(self, batch_id: str) -> Batch:
        """The batch, its runs counted by status; ``completed_at`` is set once the last
        of them has ended."""
        return self._run(self._calls.get(batch_id))
