"""Live readings of the cluster, for /health, /metrics and the dashboard: queues, workers,
runs waiting."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from worker.base.models import TERMINAL_STATUSES, Run, RunStatus
from worker.base.queues import CPU_QUEUE, MAINTENANCE_QUEUE, NOTIFY_QUEUE, RUN_QUEUES
from worker.base.runtime import Runtime
from worker.runs import dispatch

QUEUES = (*RUN_QUEUES, CPU_QUEUE, MAINTENANCE_QUEUE, NOTIFY_QUEUE)


def queue_depths(rt: Runtime) -> dict[str, int]:
    """Messages waiting in each of agentq's queues, as the broker counts them."""
    return dispatch.broker_depths(rt, list(QUEUES))


def live_workers(rt: Runtime, *, timeout_s: float) -> list[str]:
    """The workers that answer a ping within ``timeout_s`` (this waits the whole time)."""
    replies = rt.celery.control.ping(timeout=timeout_s)
    return sorted(name for reply in replies for name in reply)


def waiting(rt: Runtime) -> tuple[dict[str, int], float | None]:
    """Runs not yet ended, by status; and how long the oldest queued one has waited (s)."""
    with rt.db.transaction() as session:
        counts = dict(session.execute(
            select(Run.status, func.count())
            .where(Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.RETRYING]))
            .group_by(Run.status)).all())
        oldest = session.scalar(
            select(func.extract("epoch", func.now() - func.min(Run.created_at)))
            .where(Run.status == RunStatus.QUEUED))
    by_status = {status.value: int(counts.get(status.value, 0))
                 for status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.RETRYING)}
    return by_status, float(oldest) if oldest is not None else None


@dataclass(frozen=True)
class Pulse:
    """One tenant's runs right now: waiting, running, and ended in the last minute."""

    queued: int
    running: int
    ended_per_minute: int
    failed_per_minute: int


_FAILED = [RunStatus.FAILED, RunStatus.DEAD_LETTERED]


def pulse(session: Session, *, tenant_id: str) -> Pulse:
    """How ``tenant_id``'s runs are going (the dashboard's status strip), in one query."""
    minute_ago = func.now() - timedelta(minutes=1)
    ended = and_(Run.finished_at >= minute_ago, Run.status.in_(list(TERMINAL_STATUSES)))
    row = session.execute(
        select(func.count().filter(Run.status == RunStatus.QUEUED),
               func.count().filter(Run.status == RunStatus.RUNNING),
               func.count().filter(ended),
               func.count().filter(ended, Run.status.in_(_FAILED)))
        .where(Run.tenant_id == tenant_id,
               or_(Run.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]), ended))).one()
    return Pulse(*(int(n) for n in row))
