"""Retention: delete the runs that ended long ago, with everything that is theirs.

What goes (``purge``: the sweeper each sweep, by ``AGENTQ_RETENTION_DAYS``; ``agentq runs
purge --older-than`` by hand; with ``dry_run``, what would):

- runs that ended ``succeeded``, ``failed``, ``cancelled`` or ``expired`` before the
  cutoff, and dead letters dismissed (``agentq dlq purge``) before it. Dead letters not
  dismissed wait for an operator and stay, with all that is theirs; so do runs that have
  not ended (scheduled, queued, running, retrying, waiting), however old.
- with each run: its events, attempts, steps and waitpoints, and its deliveries with their
  attempts. A run with a delivery not finished (pending, retrying: its receiver has not
  heard yet) stays until it is; a dead delivery (its retries spent) goes with its run.
- inbound webhook deduplication records received before the cutoff: senders retry within
  days, so a record that old only grows the table.
- run batches (``POST /v1/runs/batch``) that completed before the cutoff and have no run
  left: their runs went first (one with a dead letter not dismissed stays with it).

A batch locks the next ``batch`` runs that may go with ``FOR UPDATE SKIP LOCKED``, the
oldest first by a partial index (from where the call's last batch stopped; runs held back
are read past; a sweep with nothing to do reads one index entry), deletes what is theirs,
children first (so that each table's count is known; the foreign keys' ``ON DELETE
CASCADE`` would do it too), each statement by primary key or index, and commits: no lock
is held longer than a batch, and only on rows nobody else wants. Two sweeps at once take
different runs.

What points at a run, and what becomes of it:

- ``run_events``, ``run_attempts``, ``run_steps``, ``waitpoints``, ``deliveries`` (and
  ``delivery_attempts`` through them): deleted with it (here, and by their cascades).
- ``runs.parent_id`` and ``runs.root_id`` (child runs; no foreign key): a child stays as
  long as its parent or its root does (a waiting parent finds its children by name when
  it goes on, as a dead letter replayed does: one deleted would be started again); a tree
  that ended long ago goes in the same pass, in any order.
- ``inbound_events.run_id``: set to NULL by its foreign key (indexed, so a deleted run does
  not read the table); the record itself goes when it is older than the cutoff, and until
  then a redelivery of the event is still answered as a duplicate, with no run to show.
- ``idempotency_keys.run_id`` (no foreign key): a repeat answers with the run as it stands
  now, so no run is deleted before every key naming it has expired: a key is made before
  the run it names ends and lasts ``AGENTQ_IDEMPOTENCY_TTL_S``, so the cutoff is at least
  that long ago (``at_least_ttl``). Expired keys are the idempotency repair's to delete.
- ``sessions`` (runs name them; no foreign key): the state stays, as it does when a
  session's runs are replayed or cancelled; ``GET /v1/sessions/{id}`` lists the runs left,
  and a new run in the session goes on from its state.
- ``schedules`` (``runs.schedule_id``, no foreign key): its overlap policy looks only at
  runs not ended, and a slot is fired once, before ``next_fire_at`` moves past it, so the
  unique (``schedule_id``, ``scheduled_for``) needs no old run to hold.
- ``tenant_usage`` counts tokens per tenant and day, not per run: kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    tuple_,
)
from sqlalchemy.orm import Session, aliased

from worker.base.db import Database
from worker.base.models import (
    Base,
    Batch,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    InboundEvent,
    Run,
    RunAttempt,
    RunEvent,
    RunStatus,
    RunStep,
    Waitpoint,
)
from worker.base.settings import Settings

ENDED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.EXPIRED)
TABLES = ("runs", "run_events", "run_attempts", "run_steps", "waitpoints", "deliveries",
          "delivery_attempts", "inbound_events", "batches")
# Runs per transaction: 500 runs of 50 events each take 0.1-0.25 s (bench/retention.py:
# 100 delete half as many rows a second; 2000 take three times as long, no faster, and
# went past the 4 s statement timeout on a loaded machine).
BATCH = 500
# Batches of each kind per sweep: 100 runs/s at the default 5 s sweep interval, and submit
# p99 unmoved (4 a sweep moved it on a loaded machine); a backlog goes over many sweeps,
# or at once by ``agentq runs purge``.
SWEEP_BATCHES = 1

Counts = dict[str, int]


@dataclass(frozen=True)
class Kind:
    """Runs retention deletes: of these statuses, by the time in column ``since``."""

    statuses: tuple[RunStatus, ...]
    since: str

    def old(self, run: Any, older_than: timedelta) -> ColumnElement[bool]:
        """``run`` (``Run`` or an alias of it) is of this kind and old enough to go."""
        since = getattr(run, self.since)
        return and_(run.status.in_(self.statuses), since.is_not(None),
                    since < _cutoff(older_than))


KINDS = (
    Kind(ENDED, "finished_at"),  # ix_runs_ended_finished_at
    Kind((RunStatus.DEAD_LETTERED,), "discarded_at"),  # ix_runs_discarded_at: dismissed
)


@dataclass
class Cursor:
    """Where the last batch of a kind stopped: (since, id) of the last run it took."""

    after: tuple[datetime | None, str] | None = None


def at_least_ttl(settings: Settings, older_than: timedelta) -> timedelta:
    """``older_than``, or the idempotency TTL if that is longer: a key that can still be
    repeated names a run that is still there."""
    return max(older_than, timedelta(seconds=settings.idempotency_ttl_s))


def purge(db: Database, *, older_than: timedelta, batch: int = BATCH,
          max_batches: int = SWEEP_BATCHES, dry_run: bool = False) -> Counts:
    """Delete, a batch a transaction, what ended more than ``older_than`` ago (at most
    ``max_batches`` batches of each kind); the rows deleted, per table. ``dry_run``: count
    them the same way, locking and deleting nothing."""
    counts = dict.fromkeys(TABLES, 0)
    for kind in KINDS:
        step = partial(_take_runs, kind=kind, older_than=older_than, batch=batch,
                       cursor=Cursor(), counts=counts, dry_run=dry_run)
        _in_batches(db, step, batch=batch, max_batches=max_batches)
    old = InboundEvent.received_at < _cutoff(older_than)
    empty = and_(Batch.completed_at < _cutoff(older_than),  # ix_batches_completed_at
                 ~exists().where(Run.batch_id == Batch.id))  # ix_runs_batch_id_id
    if dry_run:  # the runs counted are still there: batches they would empty are not counted
        with db.autocommit() as session:
            counts["inbound_events"] = _counted(session, InboundEvent, old)
            counts["batches"] = _counted(session, Batch, empty)
        return counts
    chosen = (select(InboundEvent.source_id, InboundEvent.delivery_id).where(old)
              .order_by(InboundEvent.received_at).limit(batch).with_for_update(skip_locked=True))
    _in_batches(db, partial(_delete_inbound, chosen=chosen, counts=counts), batch=batch,
                max_batches=max_batches)
    _in_batches(db, partial(_take_batches, empty=empty, batch=batch, cursor=Cursor(),
                            counts=counts), batch=batch, max_batches=max_batches)
    return counts


def _cutoff(older_than: timedelta) -> ColumnElement[Any]:
    return func.now() - older_than


def _may_go(kind: Kind, older_than: timedelta) -> tuple[ColumnElement[bool], ...]:
    """An old run of ``kind`` that nothing holds back: no delivery of its is still going
    (its receiver has not heard yet), and its parent and root (if any) go too (a waiting
    parent finds its children by name when it goes on, as a dead letter replayed does: one
    deleted would be started again). Each NOT EXISTS an anti-join by index."""
    parent, root = aliased(Run), aliased(Run)
    return (kind.old(Run, older_than),
            ~exists().where(Delivery.run_id == Run.id, Delivery.status.in_(
                (DeliveryStatus.PENDING, DeliveryStatus.RETRYING))),
            ~exists().where(parent.id == Run.parent_id, ~_gone_by(parent, older_than)),
            ~exists().where(root.id == Run.root_id, ~_gone_by(root, older_than)))


def _gone_by(run: Any, older_than: timedelta) -> ColumnElement[bool]:
    """``run`` is old enough to go, whatever its kind."""
    return or_(*(kind.old(run, older_than) for kind in KINDS))


def _rows_of(ids: Sequence[str]) -> list[tuple[str, type[Base], ColumnElement[bool]]]:
    """Each table's rows that belong to the runs ``ids``, children before their parents."""
    deliveries = select(Delivery.id).where(Delivery.run_id.in_(ids))
    return [
        ("delivery_attempts", DeliveryAttempt, DeliveryAttempt.delivery_id.in_(deliveries)),
        ("deliveries", Delivery, Delivery.run_id.in_(ids)),
        ("run_events", RunEvent, RunEvent.run_id.in_(ids)),
        ("run_attempts", RunAttempt, RunAttempt.run_id.in_(ids)),
        ("run_steps", RunStep, RunStep.run_id.in_(ids)),
        ("waitpoints", Waitpoint, Waitpoint.run_id.in_(ids)),
        ("runs", Run, Run.id.in_(ids)),
    ]


def _take_runs(session: Session, *, kind: Kind, older_than: timedelta, batch: int,
               cursor: Cursor, counts: Counts, dry_run: bool) -> int:
    """Lock the next ``batch`` runs of ``kind`` that may go, oldest first after ``cursor``,
    and delete them with all that is theirs (``dry_run``: count them); how many runs."""
    since = getattr(Run, kind.since)
    chosen = select(Run.id, since).where(*_may_go(kind, older_than))
    if cursor.after is not None:
        chosen = chosen.where(tuple_(since, Run.id) > tuple_(*cursor.after))
    chosen = chosen.order_by(since, Run.id).limit(batch)
    taken = session.execute(chosen if dry_run else chosen.with_for_update(skip_locked=True)
                            ).all()
    if not taken:
        return 0
    cursor.after = (taken[-1][1], taken[-1][0])
    rows = _counted if dry_run else _deleted
    _add(counts, {table: rows(session, model, where)
                  for table, model, where in _rows_of([row[0] for row in taken])})
    return len(taken)


def _delete_inbound(session: Session, *, chosen: Select[str, str],
                    counts: Counts) -> int:
    """Delete the inbound events ``chosen`` locks; how many."""
    gone = _deleted(session, InboundEvent,
                    tuple_(InboundEvent.source_id, InboundEvent.delivery_id).in_(chosen))
    counts["inbound_events"] += gone
    return gone


def _take_batches(session: Session, *, empty: ColumnElement[bool], batch: int,
                  cursor: Cursor, counts: Counts) -> int:
    """Lock the next ``batch`` old run batches with no run left, oldest first after
    ``cursor`` (those a run keeps are read past once a call), and delete them; how many."""
    chosen = select(Batch.id, Batch.completed_at).where(empty)
    if cursor.after is not None:
        chosen = chosen.where(tuple_(Batch.completed_at, Batch.id) > tuple_(*cursor.after))
    taken = session.execute(chosen.order_by(Batch.completed_at, Batch.id).limit(batch)
                            .with_for_update(skip_locked=True)).all()
    if not taken:
        return 0
    cursor.after = (taken[-1][1], taken[-1][0])
    counts["batches"] += _deleted(session, Batch, Batch.id.in_([row[0] for row in taken]))
    return len(taken)


def _counted(session: Session, model: type[Base], where: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).select_from(model).where(where)) or 0


def _deleted(session: Session, model: type[Base], where: ColumnElement[bool]) -> int:
    result = session.execute(delete(model).where(where)
                             .execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def _in_batches(db: Database, step: Callable[[Session], int], *, batch: int,
                max_batches: int) -> None:
    """Run ``step`` in a transaction of its own until it takes fewer than ``batch`` rows, at
    most ``max_batches`` times."""
    for _ in range(max_batches):
        with db.transaction() as session:
            taken = step(session)
        if taken < batch:
            return


def _add(counts: Counts, more: Counts) -> None:
    for table, rows in more.items():
        counts[table] += rows
