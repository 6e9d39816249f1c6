"""The periodic sweep (Celery beat, every ``AGENTQ_SWEEP_INTERVAL_S``): repair what was lost.

Each repair is idempotent and safe to run in several processes at once (rows are locked
with SKIP LOCKED), so a sweep that overlaps another, or one that is delivered twice, does
no harm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.runs import (
    attempts,
    batch_end,
    delays,
    dispatch,
    idempotency,
    retention,
    store,
    tree,
    waits,
)

log = logging.getLogger(__name__)

Repair = Callable[[Runtime], int]


def sweep(rt: Runtime, *, also: Sequence[Repair] = ()) -> None:
    """Run every repair of runs once, and ``also`` (the layers above's: the deliveries'),
    each on its own: a failing repair is logged and does not stop the others."""
    repairs: tuple[Repair, ...] = (
        recover_stale_attempts,
        expire_unstarted,
        start_due_delayed,
        dispatch_due_retries,
        wake_due_waits,
        redispatch_unpublished,
        redispatch_lost,
        tree.report_forgotten,
        batch_end.complete_forgotten,
        idempotency.purge_expired,
        purge_old_runs,
        *also,
    )
    for repair in repairs:
        try:
            repair(rt)
        except Exception:
            log.exception("sweep step failed", extra={"step": repair.__name__})


def recover_stale_attempts(rt: Runtime) -> int:
    """Re-queue (or dead-letter) runs whose worker died mid-attempt."""
    settings = rt.settings
    with rt.db.transaction() as session:
        recovered = attempts.recover_stale(
            session, lease_timeout_s=settings.lease_timeout_s,
            hard_grace_s=settings.hard_timeout_grace_s, limit=dispatch.SWEEP_BATCH,
        )
        jobs = [item.dispatch for item in recovered if item.dispatch is not None]
        sent = dispatch.publish_all(rt, jobs, reason="attempt's lease went stale")
        dispatch.mark_dispatched(session, run_ids=sent)
    for item in recovered:
        if item.dispatch is not None:
            rt.metrics.inc("agentq_run_retries", agent=item.agent)
        log.warning("stale attempt recovered", extra={
            "run_id": item.run_id, "status": item.status.value, "outcome": item.outcome.value})
    return len(recovered)


def expire_unstarted(rt: Runtime) -> int:
    """End ``expired`` the runs not started within their ttl_s."""
    with rt.db.transaction() as session:
        expired = delays.expire_due(session, limit=dispatch.SWEEP_BATCH)
    for run in expired:
        log.info("run expired", extra={"run_id": run.id, "agent": run.agent})
    return len(expired)


def _publish_due(rt: Runtime, find: Callable[..., list[Dispatch]], reason: str) -> int:
    """Lock the runs ``find`` says are due, publish them and mark them, in one transaction."""
    with rt.db.transaction() as session:
        due = find(session, grace_s=rt.settings.dispatch_grace_s, limit=dispatch.SWEEP_BATCH)
        sent = dispatch.publish_all(rt, due, reason=reason)
        dispatch.mark_dispatched(session, run_ids=sent)
    return len(sent)


def start_due_delayed(rt: Runtime) -> int:
    """Queue the delayed runs that are due (start_at, delay_s)."""
    return _publish_due(rt, delays.start_due, "delayed run due")


def dispatch_due_retries(rt: Runtime) -> int:
    """Queue retrying runs whose time has come but which no worker picked up."""
    return _publish_due(rt, attempts.due_retries, "retry due")


def wake_due_waits(rt: Runtime) -> int:
    """Queue waiting runs whose waitpoint is due (those waiting too long for a message of
    their own, and those whose message was lost)."""
    return _publish_due(rt, waits.wake_due, "waitpoint due")


def redispatch_unpublished(rt: Runtime) -> int:
    """Publish queued runs that were committed but never published."""
    with rt.db.transaction() as session:
        due = store.due_for_dispatch(session, grace_s=rt.settings.dispatch_grace_s,
                                    limit=dispatch.SWEEP_BATCH,
                                    running_cap=rt.settings.tenant_max_running)
        sent = dispatch.publish_all(rt, due, reason="never published")
        dispatch.mark_dispatched(session, run_ids=sent)
    return len(sent)


def redispatch_lost(rt: Runtime) -> int:
    """Publish again the waiting runs whose messages the broker no longer holds."""
    with rt.db.transaction() as session:
        waiting = store.published_and_waiting(session)
    if not waiting:
        return 0
    depths = dispatch.broker_depths(rt, list(waiting))
    total = 0
    for queue, expected in waiting.items():
        missing = expected - depths.get(queue, expected)
        if missing <= 0:
            continue
        with rt.db.transaction() as session:
            lost = store.longest_waiting(session, queue=queue,
                                        older_than_s=rt.settings.redispatch_after_s,
                                        limit=min(missing, dispatch.SWEEP_BATCH))
            sent = dispatch.publish_all(rt, lost, reason=f"missing from queue {queue}")
            dispatch.mark_dispatched(session, run_ids=sent)
        total += len(sent)
    return total


def purge_old_runs(rt: Runtime) -> int:
    """Delete what ended more than ``AGENTQ_RETENTION_DAYS`` ago, a few batches a sweep
    (a backlog goes over the next sweeps); 0 days keeps everything."""
    days = rt.settings.retention_days
    if not days:
        return 0
    older_than = retention.at_least_ttl(rt.settings, timedelta(days=days))
    deleted = retention.purge(rt.db, older_than=older_than)
    if any(deleted.values()):
        log.info("retention: deleted what ended %d days ago", days, extra={"deleted": deleted})
    return deleted["runs"]
