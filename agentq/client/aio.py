"""``AsyncClient``: agentq's API from asyncio code, over ``httpx.AsyncClient``. Each call
does what ``Client``'s does (the same flows), awaited."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
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
from agentq.client.protocol import AsyncRunner, Core, Done, Flow, Pause, Reply, Step, advance
from agentq.client.runs import KEEP, RunCalls

T = TypeVar("T")


class AsyncClient:
    """As ``Client``, for asyncio: ``await client.runs.get(...)``; ``async with`` it, or
    ``await client.aclose()`` when done."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 30.0,
                 max_retries: int = 3, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._core = Core(base_url, api_key, timeout=timeout, max_retries=max_retries)
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=False)
        batches = BatchCalls(self._core)
        self.runs = AsyncRuns(RunCalls(self._core), batches, self._run)
        self.batches = AsyncBatches(batches, self._run)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        step = advance(flow, None)
        while not isinstance(step, Done):
            step = advance(flow, await self._perform(step))
        return step.value

    async def _perform(self, step: Step) -> Reply:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        try:
            response = await self._http.send(step.request, stream=step.stream)
            if step.stream and response.is_error:
                await response.aread()  # the problem+json, for the error
        except httpx.TransportError as error:
            return error
        return response


class AsyncRuns:
    """``Runs``, awaited: see each of its methods."""

    def __init__(self, calls: RunCalls, batches: BatchCalls, run: AsyncRunner) -> None:
        self._calls, self._batches, self._run = calls, batches, run

    async def create(self, agent: str, input: Any = None, *,
                     idempotency_key: str | None = None, wait: float | None = None,
                     **options: Unpack[RunOptions]) -> Run:
        return await self._run(self._calls.create(
            agent, input, idempotency_key=idempotency_key, wait=wait, options=options))

    async def batch(self, items: builtins.list[dict[str, Any] | BatchItem], *,
                    idempotency_key: str | None = None) -> BatchCreated:
        return await self._run(self._batches.create(items, idempotency_key=idempotency_key))

    async def get(self, run_id: str) -> Run:
        return await self._run(self._calls.get(run_id))

    async def list(self, *, status: RunStatus | None = None, agent: str | None = None,
                   session_id: str | None = None, limit: int | None = None,
                   page_size: int = 100) -> AsyncIterator[Run]:
        pages = self._calls.pages(status=status, agent=agent, session_id=session_id,
                                  limit=limit, page_size=page_size)
        while (flow := pages.next()) is not None:
            for run in await self._run(flow):
                yield run

    async def page(self, *, status: RunStatus | None = None, agent: str | None = None,
                   session_id: str | None = None, limit: int = 20,
                   cursor: str | None = None) -> Page:
        return await self._run(self._calls.page(
            status=status, agent=agent, session_id=session_id, limit=limit, cursor=cursor))

    async def children(self, run_id: str, *, limit: int | None = None,
                       page_size: int = 50) -> AsyncIterator[Run]:
        pages = self._calls.children(run_id, limit=limit, page_size=page_size)
        while (flow := pages.next()) is not None:
            for run in await self._run(flow):
                yield run

    async def fork(self, run_id: str, from_step: str, *, input: Any = KEEP,
                   idempotency_key: str | None = None) -> Run:
        return await self._run(self._calls.fork(run_id, from_step, input=input,
                                                idempotency_key=idempotency_key))

    async def cancel(self, run_id: str) -> Run:
        return await self._run(self._calls.cancel(run_id))

    async def replay(self, run_id: str) -> Run:
        return await self._run(self._calls.replay(run_id))

    async def wait(self, run_id: str, timeout: float) -> Run:
        return await self._run(self._calls.wait(run_id, timeout))

    async def events(self, run_id: str, *, after: int = 0) -> builtins.list[Event]:
        return await self._run(self._calls.events(run_id, after))

    async def stream(self, run_id: str, *, tokens: bool = False) -> AsyncIterator[StreamItem]:
        follow = self._calls.follow(run_id, tokens=tokens)
        while not follow.done:
            response = await self._run(follow.connect())
            try:
                async for message in EventSource(response).aiter_sse():
                    for item in follow.receive(message):
                        yield item
                    if follow.done or follow.hang_up:
                        break
                follow.ended()
            except httpx.TransportError as error:
                follow.dropped(error)
            finally:
                await response.aclose()

    async def waitpoints(self, run_id: str) -> builtins.list[Waitpoint]:
        return await self._run(self._calls.waitpoints(run_id))

    async def complete_waitpoint(self, run_id: str, name: str, data: Any, *,
                                 idempotency_key: str | None = None) -> Waitpoint:
        return await self._run(self._calls.complete_waitpoint(
            run_id, name, data, idempotency_key=idempotency_key))


class AsyncBatches:
    """``Batches``, awaited."""

    def __init__(self, calls: BatchCalls, run: AsyncRunner) -> None:
        self._calls, self._run = calls, run

    async def get(self, batch_id: str) -> Batch:
        return await self._run(self._calls.get(batch_id))
