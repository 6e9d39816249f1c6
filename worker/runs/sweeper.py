"""The periodic sweep (Celery beat, every ``AGENTQ_SWEEP_INTERVAL_S``): repair what was lost.

Each repair is idempotent and safe to run in several processes at once (rows are locked
with SKIP LOCKED), so a sweep that overlaps another, or one that is delivered twice, does
no harm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from worker.runs import attempts, dispatch, idempotency
from worker.runs import store as runs

if TYPE_CHECKING:
    from worker.base.runtime import Runtime

log = logging.getLogger(__name__)


def sweep(rt: Runtime) -> None:
    """Run every repair once; a failing repair is logged and does not stop the others."""
    repairs: tuple[Callable[[Runtime], int], ...] = (
        recover_stale_attempts,
        dispatch_due_retries,
        dispatch.redispatch_unpublished,
        dispatch.redispatch_lost,
        dispatch.redispatch_deliveries,
        idempotency.purge_expired,
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
        runs.mark_dispatched(session, run_ids=sent)
    for item in recovered:
        if item.dispatch is not None:
            rt.metrics.inc("agentq_run_retries", agent=item.agent)
        log.warning("stale attempt recovered", extra={
            "run_id": item.run_id, "status": item.status.value, "outcome": item.outcome.value})
    return len(recovered)


def dispatch_due_retries(rt: Runtime) -> int:
    """Queue retrying runs whose time has come but which no worker picked up."""
    with rt.db.transaction() as session:
        due = attempts.due_retries(session, grace_s=rt.settings.dispatch_grace_s,
                                   limit=dispatch.SWEEP_BATCH)
        sent = dispatch.publish_all(rt, due, reason="retry due")
        runs.mark_dispatched(session, run_ids=sent)
    return len(sent)
