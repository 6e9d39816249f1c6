"""The run lifecycle in Postgres: create, read, claim, finish, and the dispatch outbox.

Every function takes a session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker import events
from worker.errors import LeaseLost, NotFound
from worker.models import AttemptOutcome, Run, RunAttempt, RunStatus, new_id


@dataclass(frozen=True)
class NewRun:
    """What a client asked for, already validated and with defaults applied."""

    agent: str
    input: Any
    timeout_s: int
    max_attempts: int
    queue: str
    session_id: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True)
class RunFilter:
    status: RunStatus | None = None
    agent: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a run; ``epoch`` fences every later write."""

    run_id: str
    tenant_id: str
    agent: str
    input: Any
    attempt: int
    max_attempts: int
    epoch: int
    timeout_s: int
    session_id: str | None
    request_id: str | None
    worker: str
    seq: int  # of the "running" status event


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, and so where the run goes next."""

    status: RunStatus
    attempt_outcome: AttemptOutcome
    result: Any = None
    error: dict[str, Any] | None = None
    traceback: str | None = None


def create(session: Session, *, tenant_id: str, new: NewRun) -> Run:
    """Store a queued run and its first event; the caller dispatches it after commit."""
    run = Run(
        id=new_id("run"),
        tenant_id=tenant_id,
        agent=new.agent,
        status=RunStatus.QUEUED,
        input=new.input,
        attempt=0,
        max_attempts=new.max_attempts,
        timeout_s=new.timeout_s,
        session_id=new.session_id,
        meta=new.metadata,
        webhook_url=new.webhook_url,
        request_id=new.request_id,
        queue=new.queue,
        lease_epoch=0,
        last_seq=1,
    )
    session.add(run)
    session.flush()
    events.record(
        session, run_id=run.id, seq=1, type=events.STATUS,
        data={"status": RunStatus.QUEUED, "attempt": 0},
    )
    return run


def get(session: Session, *, tenant_id: str, run_id: str) -> Run:
    """Return the tenant's run, or raise NotFound (also for another tenant's run)."""
    run = session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id))
    if run is None:
        raise NotFound("run", run_id)
    return run


def page(
    session: Session, *, tenant_id: str, where: RunFilter, limit: int, before: str | None
) -> tuple[list[Run], str | None]:
    """Return up to ``limit`` runs newest first, and the id to continue before (or None)."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if where.status is not None:
        query = query.where(Run.status == where.status)
    if where.agent is not None:
        query = query.where(Run.agent == where.agent)
    if where.session_id is not None:
        query = query.where(Run.session_id == where.session_id)
    if before is not None:
        query = query.where(Run.id < before)
    rows = list(session.scalars(query.order_by(Run.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def mark_dispatched(session: Session, *, run_ids: list[str]) -> None:
    """Record that these runs' messages reached the broker."""
    if run_ids:
        session.execute(
            update(Run).where(Run.id.in_(run_ids)).values(dispatched_at=func.now())
        )


def due_for_dispatch(session: Session, *, grace_s: float, limit: int) -> list[tuple[str, str]]:
    """Lock and return (id, queue) of queued runs whose publish never happened."""
    query = (
        select(Run.id, Run.queue)
        .where(
            Run.status == RunStatus.QUEUED,
            Run.dispatched_at.is_(None),
            Run.created_at < func.now() - timedelta(seconds=grace_s),
        )
        .order_by(Run.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [(row.id, row.queue) for row in session.execute(query)]


def claim(session: Session, *, run_id: str, worker: str) -> Claim | None:
    """Take the next attempt of a queued run in one UPDATE; None if it is not claimable.

    Only one claim can win, so a message delivered twice (a second publish, a broker
    redelivery) does nothing the second time.
    """
    query = (
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
        .values(
            status=RunStatus.RUNNING,
            attempt=Run.attempt + 1,
            lease_epoch=Run.lease_epoch + 1,
            worker=worker,
            started_at=func.coalesce(Run.started_at, func.now()),
            heartbeat_at=func.now(),
            next_attempt_at=None,
            last_seq=Run.last_seq + 1,
        )
        .returning(
            Run.tenant_id, Run.agent, Run.input, Run.attempt, Run.max_attempts,
            Run.lease_epoch, Run.timeout_s, Run.session_id, Run.request_id, Run.last_seq,
        )
    )
    row = session.execute(query).one_or_none()
    if row is None:
        return None
    session.add(RunAttempt(run_id=run_id, attempt=row.attempt, lease_epoch=row.lease_epoch,
                           worker=worker))
    events.record(
        session, run_id=run_id, seq=row.last_seq, type=events.STATUS,
        data={"status": RunStatus.RUNNING, "attempt": row.attempt},
    )
    return Claim(
        run_id=run_id, tenant_id=row.tenant_id, agent=row.agent, input=row.input,
        attempt=row.attempt, max_attempts=row.max_attempts, epoch=row.lease_epoch,
        timeout_s=row.timeout_s, session_id=row.session_id, request_id=row.request_id,
        worker=worker, seq=row.last_seq,
    )


def finish(session: Session, *, claim: Claim, outcome: Outcome) -> int:
    """Write the attempt's outcome under its lease; return the status event's seq.

    Raises LeaseLost when a newer attempt holds the run: a zombie's write is never applied.
    """
    query = (
        update(Run)
        .where(
            Run.id == claim.run_id,
            Run.lease_epoch == claim.epoch,
            Run.status == RunStatus.RUNNING,
        )
        .values(
            status=outcome.status,
            result=outcome.result,
            error=outcome.error,
            finished_at=func.now() if outcome.status.is_terminal else None,
            last_seq=Run.last_seq + 1,
        )
        .returning(Run.last_seq)
    )
    seq = session.execute(query).scalar_one_or_none()
    if seq is None:
        raise LeaseLost(f"run {claim.run_id}: lease epoch {claim.epoch} is no longer current")
    error = outcome.error or {}
    session.execute(
        update(RunAttempt)
        .where(RunAttempt.run_id == claim.run_id, RunAttempt.attempt == claim.attempt)
        .values(
            finished_at=func.now(),
            outcome=outcome.attempt_outcome,
            error_type=error.get("type"),
            error_message=error.get("message"),
            traceback=outcome.traceback,
        )
    )
    data: dict[str, Any] = {"status": outcome.status, "attempt": claim.attempt}
    if outcome.status == RunStatus.SUCCEEDED:
        data["result"] = outcome.result
    elif outcome.error is not None:
        data["error"] = outcome.error
    events.record(session, run_id=claim.run_id, seq=seq, type=events.STATUS, data=data)
    return int(seq)


def attempts(session: Session, *, run_id: str) -> list[RunAttempt]:
    query = select(RunAttempt).where(RunAttempt.run_id == run_id).order_by(RunAttempt.attempt)
    return list(session.scalars(query))
