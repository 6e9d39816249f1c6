"""What a batched run's end does to its batch, in the transaction that ends the run.

A batch counts its runs still going (``batches.going``, its size when it is made).
``lifecycle.ended`` calls ``run_ended`` for every run of a batch that ends: one statement
takes one off and locks the batch's row (so of two runs that end at once, the second counts
after the first has committed). The end that takes it to 0 counts the batch's runs by
status once, marks the batch complete and writes the tenant's ``batch.completed``
deliveries (data: the batch and its counts) in the same transaction: sent once, and sent
even if the process dies after the commit (the sweeper publishes them). Each delivery is
filed under the run whose end completed the batch (``GET /v1/deliveries?run_id=``).

A replay of a run of a batch not complete adds one back (``run_replayed``), just before the
commit and in batch order, after every run the transaction replays is locked: a replay of
many dead letters and one of a single run never hold a batch and wait for each other's run.
A run of a complete batch that ends again (after a replay) sends nothing.

If the count is ever wrong, the batch's runs say so: one that says 0 while a run is going
is corrected by that count, and the batch waits on; one left above 0 after every run ended
(ends made by a process older than the count, during a rolling upgrade) is found by the
sweeper (``complete_forgotten``), which completes the batch as its last end would have.

Functions that take a session never commit.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import exists, func, select, tuple_, update
from sqlalchemy.orm import Session

from worker.base.models import TERMINAL_STATUSES, Batch, Run
from worker.base.runtime import Runtime
from worker.runs import outbox
from worker.runs.views import batch_view

log = logging.getLogger(__name__)

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
    return _complete(session, batch_id=batch_id, run=run) or []


def _complete(session: Session, *, batch_id: str, run: Run) -> list[str] | None:
    """Under the batch's row lock: complete it if none of its runs is going (else set its
    count right, and None); the ids of the deliveries made."""
    tally = counts(session, batch_id=batch_id)  # under the row's lock: a snapshot of its own
    still = sum(count for status, count in tally.items() if status not in TERMINAL_STATUSES)
    batch = session.scalars(update(Batch).where(Batch.id == batch_id).values(
        going=still, completed_at=None if still else func.now()).returning(Batch)).one()
    if still:
        return None
    assert batch.completed_at is not None
    return outbox.enqueue_event(session, run=run, event_type=EVENT,
                                data=batch_view(batch, tally), at=batch.completed_at)


_REPLAYED = "agentq.replayed_batches"  # batch id -> its runs replayed in this transaction


def run_replayed(session: Session, *, run: Run) -> None:
    """``run`` (of a batch) is going again: its batch, if not complete, waits for it (from
    ``before_commit``)."""
    session.info.setdefault(_REPLAYED, Counter())[run.batch_id] += 1


def before_commit(session: Session) -> None:
    """Add the runs replayed back to their batches' counts, in batch order."""
    replayed: Counter[str] = session.info.pop(_REPLAYED, Counter())
    for batch_id in sorted(replayed):
        session.execute(update(Batch).where(Batch.id == batch_id, Batch.completed_at.is_(None))
                        .values(going=Batch.going + replayed[batch_id]))


_LOOKS = 100  # batches not complete looked at a sweep, at most


@dataclass
class _Round:
    """Where the repair's last look stopped in this process: (created_at, id)."""

    pid: int = field(default_factory=os.getpid)
    after: tuple[datetime, str] | None = None


def complete_forgotten(rt: Runtime, *, older_than_s: float = 60.0, looks: int = _LOOKS) -> int:
    """The sweeper's repair: batches not complete, made a while ago, none of whose runs is
    going, are completed now (their count missed an end); how many. Each sweep looks at
    the next ``looks`` of them, oldest first (``ix_batches_going``), from where the last
    one stopped, and starts again from the oldest after the newest."""
    round_ = rt.own("batch-repair", _Round)
    candidates = select(Batch.id, Batch.created_at).where(
        Batch.completed_at.is_(None),
        Batch.created_at < func.now() - timedelta(seconds=older_than_s))
    if round_.after is not None:
        candidates = candidates.where(tuple_(Batch.created_at, Batch.id) > tuple_(*round_.after))
    looked = candidates.order_by(Batch.created_at, Batch.id).limit(looks).subquery()
    going = (select(Run.id).where(Run.batch_id == looked.c.id,  # ix_runs_batch_id_id
                                  Run.status.not_in(list(TERMINAL_STATUSES))))
    with rt.db.autocommit() as session:
        rows = session.execute(select(looked.c.id, looked.c.created_at,
                                      (~exists(going)).label("stuck"))
                               .order_by(looked.c.created_at, looked.c.id)).all()
    round_.after = (rows[-1].created_at, rows[-1].id) if len(rows) == looks else None
    completed = 0
    for batch_id in (row.id for row in rows if row.stuck):
        try:
            deliveries = _complete_stuck(rt, batch_id)
        except Exception as error:  # the next round tries again; the others go on
            log.warning("could not complete a batch", extra={
                "batch_id": batch_id, "error": f"{type(error).__name__}: {error}"})
            continue
        if deliveries is not None:
            completed += 1
            outbox.dispatch(rt, deliveries)
    return completed


def _complete_stuck(rt: Runtime, batch_id: str) -> list[str] | None:
    """Complete the batch, under its lock, if none of its runs is going; the deliveries made
    (None if it was not completed)."""
    with rt.db.transaction() as session:
        if session.scalar(select(Batch.id).where(Batch.id == batch_id,
                                                 Batch.completed_at.is_(None))
                          .with_for_update(skip_locked=True)) is None:
            return None  # completed meanwhile, or being completed
        last = session.scalars(select(Run).where(Run.batch_id == batch_id)
                               .order_by(Run.finished_at.desc().nulls_last()).limit(1)).first()
        if last is None:  # its runs were purged (retention) before it was completed
            session.execute(update(Batch).where(Batch.id == batch_id).values(
                going=0, completed_at=func.now()))
            return []
        return _complete(session, batch_id=batch_id, run=last)
