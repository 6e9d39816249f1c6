"""Following a run's event log live: every channel (SSE, WebSocket, ?wait=) reads it here.

``follow`` yields the events after a given seq in order, each exactly once, then keeps
yielding new ones as they are committed, and stops after the terminal event. It listens on
the process's hub and reads Postgres only to catch up: at the start, after a gap, when the
hub says news may have been lost, and after each keep-alive interval of silence (each
second, while the hub does not hear from Redis: the stream goes on from Postgres alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from sqlalchemy import select

from worker.access.grants import Grant
from worker.base.bus import RESYNC, Watch
from worker.base.models import Run, RunStatus
from worker.base.runtime import Runtime
from worker.runs import events
from worker.runs.events import Event

_BATCH = 500
POLL_S = 1.0  # how often a stream reads Postgres while its hub is not live


def follow(rt: Runtime, *, run_id: str, after: int, tick_s: float, max_s: float,
           grant: Grant | None = None) -> Iterator[Event | None]:
    """Yield events after ``after``; None after each ``tick_s`` of silence (for keep-alives).

    Stops after the run's terminal event, at once for a run that has already ended, after
    ``max_s`` (a client then resumes with the last seq it saw), or as soon as ``grant``
    ends (its credential revoked or expired).
    """
    deadline = time.monotonic() + max_s
    last = after
    with rt.bus.hub.watch(run_id) as watch:
        stop_waking = grant.on_end(lambda _: watch.put(RESYNC)) if grant else None
        try:
            yield from _follow(rt, watch, run_id, last, tick_s, deadline, grant)
        finally:
            if stop_waking is not None:
                stop_waking()


def _follow(rt: Runtime, watch: Watch, run_id: str, last: int, tick_s: float,
            deadline: float, grant: Grant | None) -> Iterator[Event | None]:
    """``follow`` on a watch that is confirmed subscribed."""
    if grant is not None:
        deadline = min(deadline, grant.deadline)
    behind = True
    while True:
        if grant is not None and grant.ended:
            return
        if behind:
            caught_up = _catch_up(rt, run_id, last)
            for event in caught_up:
                yield event
                last = event.seq
                if event.is_terminal:
                    return
            if len(caught_up) == _BATCH:
                continue
            if not caught_up and _has_ended(rt, run_id):
                return
            behind = False
        left = deadline - time.monotonic()
        if left <= 0:
            return
        tick = tick_s if rt.bus.hub.live else min(tick_s, POLL_S)
        item = watch.next(timeout=min(tick, left))
        if item is None:
            yield None
            # A quiet spell: read Postgres once. An announcement lost on the way (Redis
            # away, a pubsub connection dropped under load) then costs one keep-alive
            # interval, never the stream's whole life.
            behind = True
        elif item == RESYNC or not isinstance(item, Event):
            behind = True
        elif item.seq == last + 1:
            yield item
            last = item.seq
            if item.is_terminal:
                return
        elif item.seq > last + 1:
            behind = True  # a gap: read what is missing from Postgres


def _catch_up(rt: Runtime, run_id: str, last: int) -> list[Event]:
    with rt.db.autocommit() as session:
        return events.after(session, run_id=run_id, seq=last, limit=_BATCH)


def _has_ended(rt: Runtime, run_id: str) -> bool:
    with rt.db.autocommit() as session:
        status = session.scalar(select(Run.status).where(Run.id == run_id))
    return status is None or RunStatus(status).is_terminal
