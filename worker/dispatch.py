"""Getting runs from Postgres to the broker without losing one.

The run is committed first, then published, then marked dispatched. If publishing fails
(broker down, process killed in between) the run stays unmarked and the sweeper publishes
it later. A second publish of the same run is harmless: only one claim can win.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from worker import runs
from worker.tasks import PUBLISH_RETRY_POLICY, RUN_TASK

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


def publish(rt: Runtime, *, run_id: str, queue: str) -> bool:
    """Send the run's message to the broker; False (and a log line) if that failed."""
    try:
        rt.celery.send_task(
            RUN_TASK, args=[run_id], queue=queue, retry=True, retry_policy=PUBLISH_RETRY_POLICY
        )
    except Exception as error:  # kombu and redis raise many kinds; all mean "not sent"
        log.warning("publish failed; the sweeper will retry",
                    extra={"run_id": run_id, "error": f"{type(error).__name__}: {error}"})
        return False
    return True


def dispatch(rt: Runtime, *, run_id: str, queue: str) -> bool:
    """Publish a committed run and mark it dispatched; never raises."""
    if not publish(rt, run_id=run_id, queue=queue):
        return False
    try:
        with rt.db.transaction() as session:
            runs.mark_dispatched(session, run_ids=[run_id])
    except Exception as error:  # published already: the worst case is a harmless re-publish
        log.warning("could not mark run dispatched",
                    extra={"run_id": run_id, "error": f"{type(error).__name__}: {error}"})
    return True


def redispatch(rt: Runtime) -> int:
    """Publish queued runs that were committed but never published; return how many."""
    with rt.db.transaction() as session:
        due = runs.due_for_dispatch(
            session, grace_s=rt.settings.dispatch_grace_s, limit=SWEEP_BATCH
        )
        sent = [run_id for run_id, queue in due if publish(rt, run_id=run_id, queue=queue)]
        runs.mark_dispatched(session, run_ids=sent)
    for run_id in sent:
        log.info("run dispatched by the sweeper", extra={"run_id": run_id})
    return len(sent)
