"""Live readings of the cluster, for /health and /metrics: queues, workers, runs waiting."""

from __future__ import annotations

from sqlalchemy import func, select

from worker import dispatch
from worker.models import Run, RunStatus
from worker.runtime import Runtime
from worker.tasks import MAINTENANCE_QUEUE, NOTIFY_QUEUE, RUN_QUEUES

QUEUES = (*RUN_QUEUES, MAINTENANCE_QUEUE, NOTIFY_QUEUE)


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
