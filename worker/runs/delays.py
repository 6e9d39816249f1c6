"""Delayed and expiring runs: ``start_at`` / ``delay_s`` and ``ttl_s``.

A delayed run is stored ``scheduled`` with the time it may start in ``next_attempt_at``;
Postgres holds the time, not the broker. A run due within ``waits.WAKE_MESSAGE_MAX_S`` is
published at once with a countdown; a later one is queued by the sweeper when due
(``start_due``), so no worker holds a message for hours. A claim takes a scheduled run
only once it is due. ``expires_at`` (ttl_s after the time it may start) ends a run that has
not started by then ``expired`` (``expire_due``, with its ``run.expired`` webhook); a claim
never takes an expired run, whether the sweeper has got to it yet or not.

Functions that take a session never commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.base.models import Run, RunStatus
from worker.base.queues import Dispatch
from worker.runs import events, lifecycle, waits

_WAKE_MARGIN_S = 0.05  # a countdown message lands just after the run is due


def dispatch_of(run: Run) -> Dispatch | None:
    """How a run just stored is published: at once if queued; with a countdown if it is
    due soon; not at all (the sweeper queues it when due) if later."""
    if run.status != RunStatus.SCHEDULED:
        return Dispatch.of(run)
    assert run.next_attempt_at is not None
    wait_s = (run.next_attempt_at - datetime.now(UTC)).total_seconds()
    if wait_s > waits.WAKE_MESSAGE_MAX_S:
        return None
    return Dispatch.of(run, countdown_s=max(0.0, wait_s) + _WAKE_MARGIN_S)


def start_due(session: Session, *, grace_s: float, limit: int) -> list[Dispatch]:
    """Queue the delayed runs that are due (and whose countdown message, if they had one,
    was not taken within ``grace_s``)."""
    due = (select(Run.id)
           .where(Run.status == RunStatus.SCHEDULED,
                  Run.next_attempt_at < func.now() - timedelta(seconds=grace_s))
           .order_by(Run.next_attempt_at).limit(limit)
           .with_for_update(skip_locked=True))
    started = session.execute(
        update(Run).where(Run.id.in_(due.scalar_subquery()))
        .values(status=RunStatus.QUEUED, next_attempt_at=None, dispatched_at=None,
                last_seq=Run.last_seq + 1)
        .returning(Run.id, Run.queue, Run.timeout_s, Run.agent, Run.attempt, Run.last_seq)
    ).all()
    for row in started:
        events.record(session, run_id=row.id, seq=row.last_seq, type=events.STATUS,
                      data={"status": RunStatus.QUEUED, "attempt": row.attempt,
                            "due": True})
    return [Dispatch.of(row) for row in started]


def expire_due(session: Session, *, limit: int) -> list[Run]:
    """End ``expired`` the runs not started by their ``expires_at``, with their events and
    deliveries, in the session's transaction."""
    due = (select(Run)
           .where(Run.expires_at <= func.now(), Run.started_at.is_(None),
                  Run.status.in_([RunStatus.SCHEDULED, RunStatus.QUEUED]))
           .order_by(Run.expires_at).limit(limit)
           .with_for_update(skip_locked=True))
    expired = list(session.scalars(due))
    for run in expired:
        waited = (run.expires_at - (run.start_at or run.created_at)).total_seconds() \
            if run.expires_at is not None else 0.0
        run.status = RunStatus.EXPIRED
        run.next_attempt_at = None
        run.finished_at = func.now()
        run.error = {"type": "Expired",
                     "message": f"not started within ttl_s ({waited:g} s) of when it could "
                                "start; it never will be"}
        run.last_seq += 1
        session.flush()
        session.refresh(run)
        event = events.record(session, run_id=run.id, seq=run.last_seq, type=events.STATUS,
                              data={"status": RunStatus.EXPIRED, "attempt": run.attempt,
                                    "error": run.error})
        lifecycle.ended(session, run=run, event=event)
    return expired
