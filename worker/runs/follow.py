"""Following a run's event log live: every channel (SSE, WebSocket, ?wait=) reads it here.

``follow`` yields the events after a given seq in order, each exactly once, then keeps
yielding new ones as they are committed, and stops after the terminal event. It listens on
the process's hub and reads Postgres only to catch up: at the start, after a gap, when the
hub says news may have been lost, and after each keep-alive interval of silence (each
second, while the hub does not hear from Redis: the stream goes on from Postgres alone).

With ``tokens``, the run's token frames come too, between the events, in the order they were
published: first, for each streamed call in progress, its text so far (from Redis), then
each chunk as it comes. A ``Tracker`` drops what was sent already and fills a gap from
Redis, so the text a client puts together has nothing missing and nothing twice. Token
frames live in Redis only: while it is unreachable, the events go on and the tokens stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Literal, overload

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.access.grants import Grant
from worker.base.bus import RESYNC, Watch
from worker.base.models import Run, RunStatus
from worker.base.runtime import Runtime
from worker.base.tokens import Token, Tracker
from worker.runs import events
from worker.runs.events import Event

log = logging.getLogger(__name__)

_BATCH = 500
POLL_S = 1.0  # how often a stream reads Postgres while its hub is not live


@overload
def follow(rt: Runtime, *, run_id: str, after: int, tick_s: float, max_s: float,
           grant: Grant | None = None,
           tokens: Literal[False] = False) -> Iterator[Event | None]: ...


@overload
def follow(rt: Runtime, *, run_id: str, after: int, tick_s: float, max_s: float,
           grant: Grant | None = None, tokens: bool) -> Iterator[Event | Token | None]: ...


def follow(rt: Runtime, *, run_id: str, after: int, tick_s: float, max_s: float,
           grant: Grant | None = None,
           tokens: bool = False) -> Iterator[Event | Token | None]:
    """Yield events after ``after`` (and token frames, if ``tokens``); None after each
    ``tick_s`` of silence (for keep-alives).

    Stops after the run's terminal event, at once for a run that has already ended, after
    ``max_s`` (a client then resumes with the last seq it saw), or as soon as ``grant``
    ends (its credential revoked or expired).
    """
    deadline = time.monotonic() + max_s
    last = after
    with rt.bus.hub.watch(run_id, tokens=tokens) as watch:
        stop_waking = grant.on_end(lambda _: watch.put(RESYNC)) if grant else None
        tracker = Tracker(run_id) if tokens else None
        try:
            yield from _follow(rt, watch, run_id, last, tick_s, deadline, grant, tracker)
        finally:
            if stop_waking is not None:
                stop_waking()


def _follow(rt: Runtime, watch: Watch, run_id: str, last: int, tick_s: float,
            deadline: float, grant: Grant | None,
            tracker: Tracker | None) -> Iterator[Event | Token | None]:
    """``follow`` on a watch that is confirmed subscribed."""
    if grant is not None:
        deadline = min(deadline, grant.deadline)
    behind, read_at = True, time.monotonic()
    while True:
        if grant is not None and grant.ended:
            _stopped(run_id, last, f"grant ended ({grant.reason})")
            return
        if behind:
            read_at = time.monotonic()
            caught_up, over = _catch_up(rt, run_id, last)
            for event in caught_up:
                if tracker is not None:
                    yield from _rest_before(rt, tracker, event)
                yield event
                last = event.seq
                if event.is_terminal:
                    _stopped(run_id, last, "terminal event (read from the log)")
                    return
                if tracker is not None:
                    _step_ended(tracker, event)
            if len(caught_up) == _BATCH:
                continue
            if over:
                _stopped(run_id, last, "the run had ended, its last event sent already")
                return
            behind = False
            if tracker is not None:
                yield from _tokens_caught_up(rt, tracker)
        left = deadline - time.monotonic()
        if left <= 0:
            _stopped(run_id, last, "max_s reached")
            return
        tick = tick_s if rt.bus.hub.live else min(tick_s, POLL_S)
        item = watch.next(timeout=min(tick, left))
        if item is None:
            yield None
            # A quiet spell: read Postgres once. An announcement lost on the way (Redis
            # away, a pubsub connection dropped under load) then costs one keep-alive
            # interval, never the stream's whole life.
            behind = True
        elif isinstance(item, Token):
            if tracker is not None:
                frames = tracker.live(item)
                if frames is None:  # chunks were missed: the call's list has them
                    frames = [*_tokens_caught_up(rt, tracker),
                              *(tracker.live(item, caught_up=True) or [])]
                yield from frames
            # A steady flow of tokens is no quiet spell: read the log now and then anyway,
            # so an announcement lost on the way costs a tick here too.
            if time.monotonic() - read_at > tick_s:
                behind = True
        elif item == RESYNC or not isinstance(item, Event):
            behind = True
        elif item.seq == last + 1:
            if tracker is not None:
                yield from _rest_before(rt, tracker, item)
            yield item
            last = item.seq
            if item.is_terminal:
                _stopped(run_id, last, "terminal event (heard live)")
                return
            if tracker is not None:
                _step_ended(tracker, item)
        elif item.seq > last + 1:
            behind = True  # a gap: read what is missing from Postgres


def _stopped(run_id: str, last: int, why: str) -> None:
    log.info("follow stopped", extra={"run_id": run_id, "last_seq": last, "why": why})


def _rest_before(rt: Runtime, tracker: Tracker, event: Event) -> Iterator[Token]:
    """Before an event that ends a streamed call (its step's end, the run's), the rest of
    the text this connection has begun: the event can be read from Postgres ahead of the
    last pieces still on their way through Redis."""
    phase = event.data.get("phase")
    if phase in ("step.finished", "step.failed"):
        steps = [str(event.data.get("step"))]
    elif event.is_terminal:
        steps = tracker.open_steps()
    else:
        return
    for step in steps:
        if step not in tracker.open_steps():
            continue
        try:
            call = rt.bus.call(tracker.run_id, step)
        except redis.RedisError as error:  # the text stops where it was; the result has it
            log.warning("the rest of a call's text unavailable", extra={
                "run_id": tracker.run_id, "step": step,
                "error": f"{type(error).__name__}: {error}"})
            return
        if call is not None:
            yield from tracker.catch_up({step: call})


def _step_ended(tracker: Tracker, event: Event) -> None:
    phase = event.data.get("phase")
    if phase in ("step.finished", "step.failed"):
        tracker.ended(str(event.data.get("step")), finished=phase == "step.finished")


def _tokens_caught_up(rt: Runtime, tracker: Tracker) -> Iterator[Token]:
    """What the run's streamed calls in progress hold beyond what was sent."""
    try:
        calls = rt.bus.calls(tracker.run_id)
    except redis.RedisError as error:  # the events go on; the tokens resume with Redis
        log.info("token frames unavailable", extra={"run_id": tracker.run_id,
                                                    "error": type(error).__name__})
        return
    yield from tracker.catch_up(calls)


def _catch_up(rt: Runtime, run_id: str, last: int) -> tuple[list[Event], bool]:
    """The events after ``last`` (a batch at most), and whether there will be no more: the
    run has ended (or is gone) and ``last`` is its last event."""
    with rt.db.autocommit() as session:
        found = events.after(session, run_id=run_id, seq=last, limit=_BATCH)
        if found or not _has_ended(session, run_id):
            return found, False
        # Each statement reads what was committed when it began: a run that ended after
        # the log was read and before its status was has its last events (committed with
        # its status) after ``last``, unsent. Read the log again, now that it has ended.
        found = events.after(session, run_id=run_id, seq=last, limit=_BATCH)
        return found, not found


def _has_ended(session: Session, run_id: str) -> bool:
    status = session.scalar(select(Run.status).where(Run.id == run_id))
    return status is None or RunStatus(status).is_terminal
