"""Streamed chat completions: the endpoint's Server-Sent Events read as they arrive.

The HTTP client stays aiohttp (``worker.llm.client``); the SSE parsing is httpx-sse's, fed
the aiohttp body through an ``httpx.Response`` (its public API: no parser written here).
Each chunk's ``choices[0].delta`` is merged into one message (content, tool calls), which is
returned in the non-streamed answer's shape, so a streamed call's step result is what the
same call made without ``stream`` would store. ``TokenSink`` publishes the text's pieces as
token frames while they come (``worker.base.tokens``).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from httpx_sse import EventSource, SSEError

from worker.base.bus import Bus
from worker.base.errors import LLMError
from worker.base.tokens import RESET, TOKEN, Token

OnText = Callable[[str], None]


class TokenSink:
    """Where one attempt's streamed calls publish their text: the run's token frames."""

    MAX_TEXT = 1_000_000  # characters of one try published at most (the result has all)

    def __init__(self, bus: Bus, *, run_id: str, attempt: int) -> None:
        self._bus = bus
        self._run_id = run_id
        self._attempt = attempt
        self._tries = itertools.count(1)  # every try of every call: each its own g
        self._begun: set[str] = set()

    def begin(self, step: str, number: int) -> OnText:
        """A try of the call ``step`` begins (``number`` from 1 within this call): anything
        but the first try of the run's first call of that name starts with a
        ``token.reset`` (a retry, a new attempt, a call made again after a failure).
        Returns where its text goes."""
        g = self._attempt * 1_000_000 + next(self._tries)
        again = self._attempt > 1 or step in self._begun or number > 1
        self._begun.add(step)
        self._bus.call_started(Token(self._run_id, step, RESET, g=g), announce=again)
        numbers, size = itertools.count(1), 0

        def on_text(text: str) -> None:
            nonlocal size
            size += len(text)
            if size <= self.MAX_TEXT:
                self._bus.token(Token(self._run_id, step, TOKEN, next(numbers), text, g))

        return on_text

    def end(self, step: str) -> None:
        """The call ended: once this returns, its pieces are in Redis (a listener that
        reads the step's end from Postgres finds them all), within a second at most."""
        self._bus.call_ended(self._run_id, step)
        self._bus.sync(timeout_s=1.0)


@dataclass
class Streamed:
    """A streamed call's answer, as the non-streamed endpoint would have sent it."""

    answer: dict[str, Any]
    first_text_s: float | None  # from the request to the first piece of text
    chunks: int


MAX_STREAM_BYTES = 32 * 1024 * 1024  # a streamed answer longer than this is refused


class _Body(httpx.AsyncByteStream):
    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        async for data in self._content.iter_any():
            size += len(data)
            if size > MAX_STREAM_BYTES:  # an endpoint gone wrong must not fill the worker
                raise LLMError(f"the LLM endpoint's stream passed {MAX_STREAM_BYTES} bytes")
            yield data


async def read(response: aiohttp.ClientResponse, on_text: OnText, *,
               began: float) -> Streamed:
    """Read a 2xx answer to a ``stream: true`` request, calling ``on_text`` with each piece
    of text. An endpoint that answered with plain JSON after all is taken as one piece."""
    content_type = response.headers.get("Content-Type", "")
    if "text/event-stream" not in content_type:
        try:
            answer = json.loads(await response.read())
            text = answer["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise LLMError("the LLM endpoint answered a streamed call with neither events "
                           "nor a chat completion") from None
        if isinstance(text, str) and text:
            on_text(text)
        return Streamed(answer, time.monotonic() - began, 1)
    source = EventSource(httpx.Response(response.status, headers={"content-type": content_type},
                                        stream=_Body(response.content)))
    merged, done = _Merged(), False
    try:
        async for event in source.aiter_sse():
            if event.data.strip() == "[DONE]":
                done = True
                break
            if event.data.strip():
                merged.add(_chunk(event.data), on_text, began)
    except SSEError as error:
        raise LLMError(f"the LLM endpoint's event stream is malformed: {error}") from None
    except (aiohttp.ClientError, TimeoutError):
        if merged.finish_reason is None:
            raise  # cut off before the answer ended: tried again, as a lost answer
        done = True  # the answer was whole; only the stream's end went missing
    if not done and merged.finish_reason is None:  # cut off: tried again, as a lost answer
        raise aiohttp.ClientPayloadError("the LLM endpoint's stream ended before its answer")
    return Streamed(merged.answer(), merged.first_text_s, merged.chunks)


def _chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise LLMError("the LLM endpoint sent an event that is not JSON") from None
    if not isinstance(chunk, dict):
        raise LLMError("the LLM endpoint sent an event that is not a JSON object")
    if chunk.get("error"):
        raise LLMError(f"the LLM endpoint's stream ended on an error: {str(chunk['error'])[:300]}")
    return chunk


class _Merged:
    """The chunks' deltas added up into one message."""

    def __init__(self) -> None:
        self.role = "assistant"
        self.parts: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.model: str | None = None
        self.first_text_s: float | None = None
        self.chunks = 0

    def add(self, chunk: dict[str, Any], on_text: OnText, began: float) -> None:
        try:
            self._add(chunk, on_text, began)
        except (TypeError, ValueError, AttributeError, KeyError):
            raise LLMError("the LLM endpoint sent a chunk that is not a chat completion "
                           f"chunk: {json.dumps(chunk)[:300]}") from None

    def _add(self, chunk: dict[str, Any], on_text: OnText, began: float) -> None:
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):  # the last chunk, with include_usage
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            self.role = delta.get("role") or self.role
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.first_text_s is None:
                    self.first_text_s = time.monotonic() - began
                self.parts.append(text)
                self.chunks += 1
                on_text(text)
            for call in delta.get("tool_calls") or []:
                self._tool_call(call)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def _tool_call(self, delta: dict[str, Any]) -> None:
        """A tool call arrives in pieces: its id and name first, its arguments in parts."""
        call = self.tool_calls.setdefault(int(delta.get("index", 0)), {
            "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = delta.get("id") or call["id"]
        call["type"] = delta.get("type") or call["type"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def answer(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role,
                                   "content": "".join(self.parts) if self.parts else None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        return {"model": self.model, "usage": self.usage, "choices": [
            {"index": 0, "message": message, "finish_reason": self.finish_reason}]}
