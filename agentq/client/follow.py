"""Following a run's event stream (Server-Sent Events) across connections.

Each connection resumes after the last event seen (``Last-Event-ID``), so a dropped one
costs nothing: no event is missed, none comes twice. A reconnection waits what the server's
``retry:`` hint says (doubled for each drop in a row that brought nothing); the stream
ends at the run's terminal event.
"""

from __future__ import annotations

import json
import random

import httpx
from httpx_sse import ServerSentEvent

from agentq.client.errors import ConnectionFailed
from agentq.client.models import Event, StreamItem, Token, TokenReset
from agentq.client.protocol import Core, Flow, Pause

EVENT_STREAM = "text/event-stream"
RECONNECT_S = 2.0  # until the server's retry: hint says otherwise
MAX_RECONNECT_S = 30.0
# No byte for this long, though the server sends a keep-alive every 15 s: the connection
# is dead without having said so; reconnect.
STREAM_IDLE_S = 45.0


class Follow:
    """One run's stream: the request for each (re)connection, and what each message adds."""

    def __init__(self, core: Core, path: str, *, tokens: bool) -> None:
        self._core, self._path, self._tokens = core, path, tokens
        self.last_seq = 0
        self.done = False  # the terminal event has come
        self.hang_up = False  # the server asked to be called again (its log is unreadable)
        self._retry_s = RECONNECT_S
        self._drops = 0  # in a row, with nothing received in between
        self._pause = 0.0

    def connect(self) -> Flow[httpx.Response]:
        """Open the stream after the last event seen (after the pause a drop asked for)."""
        if self._pause:
            yield Pause(self._pause)
        self.hang_up, self._pause = False, 0.0
        headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-store"}
        if self.last_seq:
            headers["Last-Event-ID"] = str(self.last_seq)
        request = self._core.request("GET", self._path,
                                     params={"tokens": "1"} if self._tokens else None,
                                     headers=headers, read_s=STREAM_IDLE_S)
        return (yield from self._core.call(request, safe=True, stream=True))

    def receive(self, message: ServerSentEvent) -> tuple[StreamItem, ...]:
        """What one message adds to the stream: an event not seen before, a token frame,
        or nothing (a hint, a repeat, a kind this client does not know)."""
        self._drops = 0
        if message.retry is not None:
            self._retry_s = message.retry / 1000
        if message.event in ("status", "progress") and message.id.isdigit():
            seq = int(message.id)
            if seq <= self.last_seq:
                return ()
            event = Event.model_validate({"seq": seq, "type": message.event,
                                          "data": json.loads(message.data)})
            self.last_seq, self.done = seq, event.terminal
            return (event,)
        if message.event == "token" and self._tokens:
            return (Token.model_validate_json(message.data),)
        if message.event == "token.reset" and self._tokens:
            return (TokenReset.model_validate_json(message.data),)
        if message.event == "unavailable":
            self.hang_up = True
            self._pause = float(json.loads(message.data).get("retry_after_s", self._retry_s))
        return ()

    def ended(self) -> None:
        """The server ended the stream: unless it was the run's end, call again."""
        if not self.done and not self._pause:
            self._pause = self._retry_s

    def dropped(self, error: httpx.TransportError) -> None:
        """The connection broke: call again after a pause, or give up after
        ``max_retries`` drops in a row."""
        self._drops += 1
        if self._drops > self._core.retries.max_retries:
            raise ConnectionFailed(f"the event stream {self._path} dropped {self._drops} "
                                   f"times in a row: {error!r}") from error
        ceiling = min(MAX_RECONNECT_S, self._retry_s * 2 ** (self._drops - 1))
        self._pause = random.uniform(ceiling, ceiling * 1.25)
