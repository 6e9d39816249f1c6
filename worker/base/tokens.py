"""Token frames: an LLM call's text as it is written, carried by Redis, never by Postgres.

A streamed ``ctx.llm`` call publishes each delta as a ``Token`` (``worker.base.bus``): on the
run's token channel for live listeners, and appended to the call's list in Redis (with a
TTL) so a listener that connects mid-call can get the text so far. The durable event log is
untouched: token frames have no ``seq``, and the call's whole message is stored once, with
its step.

Numbering: the chunks of one try of a call are ``i`` = 1, 2, 3, ... A try other than the
first of the run starts with a ``token.reset`` (its ``g`` names the try: it only grows),
and the chunks after it count from 1 again. A frame sent to a client carries ``{step, i,
text}``: ``text`` is chunks ``i`` onwards (one chunk live; all of them in the frame that
catches a client up), so a client keeps each step's text by setting it when ``i`` is 1,
appending otherwise, and clearing it on ``token.reset``. ``Tracker`` makes that hold on
every connection: no chunk missing, none twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

TOKEN, RESET = "token", "token.reset"


@dataclass(frozen=True)
class Token:
    """A chunk of a call's text (``TOKEN``), or the start of a new try (``RESET``)."""

    run_id: str
    step: str
    kind: str = TOKEN
    i: int = 0  # the first chunk's number in this try (from 1); 0 for a reset
    text: str = ""
    g: int = 0  # which try of the call this is: attempt * 1000 + try

    def encode(self) -> str:
        return json.dumps({"run_id": self.run_id, "step": self.step, "kind": self.kind,
                           "i": self.i, "text": self.text, "g": self.g},
                          separators=(",", ":"))

    @classmethod
    def decode(cls, payload: bytes | str) -> Token:
        body = json.loads(payload)
        return cls(body["run_id"], body["step"], body["kind"], int(body["i"]), body["text"],
                   int(body["g"]))

    def frame(self) -> dict[str, str | int]:
        """What a client is sent."""
        if self.kind == RESET:
            return {"step": self.step}
        return {"step": self.step, "i": self.i, "text": self.text}


@dataclass
class Partial:
    """A call in progress as its Redis list holds it: its try and its chunks so far (by
    number: a chunk lost on the way leaves a hole, never a stall)."""

    g: int
    chunks: list[tuple[int, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.chunks[-1][0] if self.chunks else 0

    def text_after(self, sent: int) -> str:
        return "".join(text for number, text in self.chunks if number > sent)


def partial(entries: list[Token]) -> Partial | None:
    """The call's newest try from its list (a reset first, then its chunks in order);
    entries of an older try (a late write of an attempt that lost its lease) are ignored."""
    current: Partial | None = None
    for entry in entries:
        if current is not None and entry.g < current.g:
            continue
        if entry.kind == RESET or current is None or entry.g != current.g:
            current = Partial(entry.g)
        if entry.kind == TOKEN and entry.i > current.count:
            current.chunks.append((entry.i, entry.text))
    return current


class Tracker:
    """What one connection has sent of each call in progress, so that what it sends next
    continues it exactly: duplicates dropped, a gap (or a missed reset) answered by
    ``catch_up`` from the lists in Redis, and a gap Redis cannot fill either (a chunk lost
    on the way) passed over rather than waited on."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._sent: dict[str, tuple[int, int]] = {}  # step -> (g, chunks sent)
        self._finished: set[str] = set()  # steps whose step.finished was sent

    def live(self, token: Token, *, caught_up: bool = False) -> list[Token] | None:
        """The frames to send for a token heard live; None if chunks were missed (then
        ``catch_up``, and offer it again with ``caught_up``: what is still missing then is
        lost, and the token is taken as it is)."""
        if token.step in self._finished:
            return []
        if token.kind == RESET:
            self._sent[token.step] = (token.g, 0)
            return [token]
        g, sent = self._sent.get(token.step, (token.g, 0))
        if token.g < g or (token.g == g and token.i <= sent):
            return []  # an older try's, or sent already
        if not caught_up and (token.g != g or token.i != sent + 1):
            return None
        self._sent[token.step] = (token.g, token.i)
        return [token]

    def catch_up(self, calls: dict[str, Partial]) -> list[Token]:
        """The frames that bring the client to what ``calls`` (read from Redis) hold."""
        frames = []
        # A step missing from ``calls`` has ended (or is about to start): what was sent of
        # it is kept, for its chunks still on their way here are not to be sent again.
        for step, call in calls.items():
            if step in self._finished:
                continue
            g, sent = self._sent.get(step, (None, 0))
            if g is not None and call.g < g:
                continue  # Redis has not caught up with what was heard live
            if g != call.g:
                sent = 0
                if g is not None and not call.chunks:
                    frames.append(Token(self.run_id, step, RESET, g=call.g))
            if call.count > sent:
                first = next(number for number, _ in call.chunks if number > sent)
                frames.append(Token(self.run_id, step, TOKEN, 1 if sent == 0 else first,
                                    call.text_after(sent), call.g))
            self._sent[step] = (call.g, max(sent, call.count))
        return frames

    def open_steps(self) -> list[str]:
        """The steps this connection has sent text of and not seen end."""
        return list(self._sent)

    def ended(self, step: str, *, finished: bool) -> None:
        """The step's call ended: its text is in its result (``finished``), or it failed
        (a later call of that name starts anew)."""
        self._sent.pop(step, None)
        if finished:
            self._finished.add(step)
