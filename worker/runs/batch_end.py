"""What a batched run's end does to its batch, in the transaction that ends the run.

A batch counts its runs still going (``batches.going``, its size when it is made; a replay
of one of its runs adds one back, ``store.replay``). ``lifecycle.ended`` calls ``run_ended``
for every run of a batch that ends: one statement takes one off and locks the batch's row
(so of two runs that end at once, the second counts after the first has committed). The end
that takes it to 0 counts the batch's runs by status once, marks the batch complete and
writes the tenant's ``batch.completed`` deliveries (data: the batch and its counts) in the
same transaction: sent once, and sent even if the process dies after the commit (the
sweeper publishes them). Should the count ever say 0 while a run is going, that count
corrects it and the batch waits on. A run of a complete batch that ends again (after a
replay) sends nothing. Each delivery is filed under the run whose end completed the batch
(``GET /v1/deliveries?run_id=``).

Functions that take a session never commit.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
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
    batch_id = run.batch_id
    assert batch_id is not None
    going = session.scalar(update(Batch).where(Batch.id == batch_id,
                                               Batch.completed_at.is_(None))
                           .values(going=Batch.going - 1).returning(Batch.going))
    if going is None or going > 0:  # complete already (or gone), or runs still going
        return []
    tally = counts(session, batch_id=batch_id)  # under the row's lock: a snapshot of its own
    still = sum(count for status, count in tally.items() if status not in TERMINAL_STATUSES)
    batch = session.scalars(update(Batch).where(Batch.id == batch_id).values(
        going=still, completed_at=None if still else func.now()).returning(Batch)).one()
    if still:
        return []
    assert batch.completed_at is not None
    return outbox.enqueue_event(session, run=run, event_type=EVENT,
                                data=batch_view(batch, tally), at=batch.completed_at)


def run_replayed(session: Session, *, run: Run) -> None:
    """``run`` (of a batch) is going again: its batch, if not complete, waits for it."""
    session.execute(update(Batch).where(Batch.id == run.batch_id, Batch.completed_at.is_(None))
                    .values(going=Batch.going + 1))
