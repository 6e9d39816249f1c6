"""What a batched run's end does to its batch, in the transaction that ends the run.

``lifecycle.ended`` calls ``run_ended`` for every run of a batch that ends. Under the
batch's row lock (so of two runs that end at once, the second counts after the first has
committed), it counts the batch's runs by status; when none is left going and the batch is
not complete yet, it marks it complete and writes the tenant's ``batch.completed``
deliveries (data: the batch and its counts) in the same transaction: sent once, and sent
even if the process dies after the commit (the sweeper publishes them). A run of a complete
batch that ends again (after a replay) sends nothing. Each delivery is filed under the run
whose end completed the batch (``GET /v1/deliveries?run_id=``).

Functions that take a session never commit.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.base.models import TERMINAL_STATUSES, Batch, Run
from worker.runs import outbox
from worker.runs.views import batch_view

EVENT = "batch.completed"


def counts(session: Session, *, batch_id: str) -> dict[str, int]:
    """How many of the batch's runs stand in each status."""
    rows = session.execute(select(Run.status, func.count()).where(Run.batch_id == batch_id)
                           .group_by(Run.status))
    return {status: count for status, count in rows}


def run_ended(session: Session, *, run: Run) -> list[str]:
    """``run`` (of a batch) ends in this transaction: if it was the batch's last one going,
    complete the batch; return the ids of the ``batch.completed`` deliveries made."""
    batch = session.scalar(select(Batch).where(Batch.id == run.batch_id)
                           .with_for_update(key_share=True))
    if batch is None or batch.completed_at is not None:
        return []
    tally = counts(session, batch_id=batch.id)  # after the lock: a snapshot of its own
    if any(status not in TERMINAL_STATUSES for status in tally):
        return []
    batch.completed_at = func.now()
    session.flush()
    session.refresh(batch, ["completed_at"])
    assert batch.completed_at is not None
    return outbox.enqueue_event(session, run=run, event_type=EVENT,
                                data=batch_view(batch, tally), at=batch.completed_at)
