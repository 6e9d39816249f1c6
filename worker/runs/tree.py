"""What a child run's end does to its parent.

``lifecycle.ended`` calls ``child_ended`` for every run that has a parent, in the
transaction that ends it. It completes the parent's waitpoint for that child, if there is
one, and marks the child ``unreported``; only a child whose waitpoint wakes its parent
(``Waitpoint.wakes``: a gather is woken by the last child still going, not by each) takes
the parent's row lock, to queue the parent again in the same transaction, its message
published after the commit (or by the sweeper, if that publish is lost). Nothing is lost if
a process dies between the child's end and the parent's wake: they are one commit. A
thousand children ending at once thus do not wait in line for their parent's row.

A parent's wait (``worker.runs.children.look``) locks the children it finds still going
before it makes their waitpoints: a child's end, which updates the child's row first, waits
for the wait to commit and then finds its waitpoint, or the wait waits for the end and
finds the child ended. Both lock the child before the parent; a waking child locks the
parent before the waitpoint, as a cancel of the parent does; and what locks many runs'
rows while holding another's (``report``, the workers' heartbeat) skips rows locked
elsewhere instead of waiting, so no circle of waits closes.

``child.finished`` events reach the parent's log under its lock, a batch at a time
(``report``): from the waking child's end, from the parent's next wait, shortly after each
end from this process's ``Reporter``, and by the sweeper for any a crash left
(``report_forgotten``). A child that ends while its parent is about to
end may find the parent ended first: its event is then not written (as for any child
ending after its parent).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from worker.base.gathering import Gatherer
from worker.base.models import TERMINAL_STATUSES, Run, RunStatus
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.runs import events

log = logging.getLogger(__name__)

CHILD = "child"  # the waitpoint kind of a parent waiting for a child
FAILED_STATUSES = frozenset({RunStatus.FAILED, RunStatus.DEAD_LETTERED, RunStatus.CANCELLED,
                             RunStatus.EXPIRED})


def waitpoint_name(child_name: str) -> str:
    return f"child:{child_name}"


@dataclass(frozen=True)
class Woken:
    """A parent queued again by its child's end: its message, to publish after commit."""

    dispatch: Dispatch


_ENDED = text("""
    WITH flagged AS (
        UPDATE runs SET unreported = true WHERE id = :child_id RETURNING id
    ), point AS (
        SELECT wakes FROM waitpoints
        WHERE run_id = :parent_id AND name = :name AND kind = 'child' AND status = 'waiting'
    ), completed AS (
        UPDATE waitpoints SET status = 'completed', data = CAST(:data AS jsonb),
            completed_at = now(), completed_by = :by
        WHERE run_id = :parent_id AND name = :name AND kind = 'child'
          AND status = 'waiting' AND NOT wakes
        RETURNING id
    )
    SELECT coalesce((SELECT wakes FROM point), false) AS wakes
""")
_COMPLETE = text("""
    UPDATE waitpoints SET status = 'completed', data = CAST(:data AS jsonb),
        completed_at = now(), completed_by = :by
    WHERE run_id = :parent_id AND name = :name AND kind = 'child' AND status = 'waiting'
    RETURNING name
""")


def child_ended(session: Session, *, run: Run) -> Woken | None:
    """``run`` (a child) ends in this transaction: complete its parent's waitpoint for it
    and mark it unreported; if that waitpoint wakes the parent, report it (and its
    siblings that ended) and queue the parent, under the parent's lock.

    The caller holds the child's row lock from an earlier statement (every ending does: it
    updates or locks the row first). That is what makes a parent's wait and this see each
    other: ``_ENDED`` reads the waitpoint in its own snapshot, which must be taken after any
    wait that held the child has committed."""
    assert run.parent_id is not None and run.child_name is not None
    params = {"child_id": run.id, "parent_id": run.parent_id,
              "name": waitpoint_name(run.child_name),
              "data": json.dumps({"status": run.status}), "by": f"child {run.id}"}
    # One statement for most children: marked unreported, and their waitpoint (if any, and
    # not the one that wakes the parent) completed. Whether it wakes the parent is read
    # without a lock: a wait changes that only with this child's row locked, which this
    # transaction holds.
    ended = session.execute(_ENDED, params).one()
    if not ended.wakes:
        return None
    # A waking child locks the parent's row before the waitpoint's, in the order a cancel
    # of the parent takes them.
    parent = session.execute(select(Run.id, Run.status).where(Run.id == run.parent_id)
                             .with_for_update()).first()
    completed = session.execute(_COMPLETE, params).first()
    if completed is None or parent is None or RunStatus(parent.status).is_terminal:
        return None
    report(session, parent_id=parent.id)
    if parent.status != RunStatus.WAITING:  # it is running: its wait will find this
        return None
    row = session.execute(
        update(Run).where(Run.id == parent.id)
        .values(status=RunStatus.QUEUED, next_attempt_at=None, dispatched_at=None,
                last_seq=Run.last_seq + 1)
        .returning(Run.id, Run.queue, Run.timeout_s, Run.agent, Run.attempt, Run.last_seq,
                   Run.session_id, Run.concurrency_key)).one()
    events.record(session, run_id=parent.id, seq=row.last_seq, type=events.STATUS,
                  data={"status": RunStatus.QUEUED, "attempt": row.attempt,
                        "resumed": [completed.name]})
    return Woken(Dispatch.of(row))


# The parent's children that ended since the last report, reported now (in the order they
# ended); the caller holds the parent's row lock. A child's row locked by another (a wait
# holds its going children's) is left for the next report: it never waits for one, so it
# cannot close a circle with a wait that waits for the parent.
_UNREPORTED = text("""
    UPDATE runs SET unreported = false
    WHERE id IN (SELECT id FROM runs WHERE parent_id = :parent_id AND unreported
                 ORDER BY id FOR UPDATE SKIP LOCKED)
    RETURNING id, child_name, agent, status, finished_at
""")


def report(session: Session, *, parent_id: str) -> int:
    """Write ``child.finished`` into the parent's log for each of its children that ended
    unreported, under the parent's row lock, which the caller holds (a parent that ended
    gets none: they are only marked reported); how many."""
    ended = sorted(session.execute(_UNREPORTED, {"parent_id": parent_id}).all(),
                   key=lambda row: (row.finished_at.timestamp() if row.finished_at
                                    else float("inf"), row.id))
    if not ended:
        return 0
    row = session.execute(
        update(Run).where(Run.id == parent_id, Run.status.not_in(list(TERMINAL_STATUSES)))
        .values(last_seq=Run.last_seq + len(ended)).returning(Run.last_seq)).first()
    if row is None:
        return 0
    events.record_many(session, run_id=parent_id, first=row.last_seq - len(ended) + 1,
                       type=events.PROGRESS, data=[{
                           "phase": "child.finished", "child_id": child.id,
                           "name": child.child_name, "agent": child.agent,
                           "status": child.status,
                           "message": f"Child {child.child_name} ({child.agent}) "
                                      f"{child.status}"} for child in ended])
    return len(ended)


class Reporter(Gatherer):
    """Reports the children that ended in this process to their parents' logs shortly
    after (every 100 ms, a transaction per parent), so that a parent's log shows its
    children ending while it waits for the last of them. A report lost with its process
    is made by the parent's next wait, by the end of the child that wakes it, or by the
    sweeper (``report_forgotten``)."""

    every_s = 0.1
    thread_name = "agentq-child-reporter"

    @classmethod
    def of(cls, rt: Runtime) -> Reporter:
        """This process's reporter."""
        return rt.own("child-reporter", lambda: cls(rt))

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        super().__init__()

    def handle(self, ids: list[str]) -> None:
        busy = report_parents(self._rt, ids)
        if busy:
            self.add(*busy)


def report_parents(rt: Runtime, parent_ids: list[str]) -> list[str]:
    """``report`` each parent, in a transaction of its own; the parents whose rows were
    locked by another (reported by it, or to try again). Never raises."""
    busy = []
    for parent_id in parent_ids:
        try:
            with rt.db.transaction() as session:
                parent = session.execute(select(Run.id).where(Run.id == parent_id)
                                         .with_for_update(skip_locked=True)).first()
                if parent is None:  # locked: tried again next time (unless gone)
                    if session.scalar(select(Run.id).where(Run.id == parent_id)):
                        busy.append(parent_id)
                else:  # (an ended parent's children are only marked reported)
                    report(session, parent_id=parent_id)
        except Exception as error:  # reported later, by its wait or the sweeper
            log.warning("could not report children's ends to their parent",
                        extra={"run_id": parent_id,
                               "error": f"{type(error).__name__}: {error}"})
    return busy


def report_forgotten(rt: Runtime, *, older_than_s: float = 10.0, limit: int = 100) -> int:
    """The sweeper's repair: children that ended unreported a while ago (the process that
    ended them died before its reporter ran, and their parent has not waited since) are
    reported now (or, if their parent ended, marked reported); how many parents."""
    with rt.db.autocommit() as session:
        parents = list(session.scalars(
            select(Run.parent_id).where(
                Run.unreported, Run.finished_at < func.now() - timedelta(seconds=older_than_s))
            .distinct().limit(limit)))
    report_parents(rt, [parent_id for parent_id in parents if parent_id is not None])
    return len(parents)
