"""What a child run's end does to its parent, in the transaction that ends the child.

``lifecycle.ended`` calls ``child_ended`` for every run that has a parent. Under the
parent's row lock (the lock a parent's wait takes too: ``worker.runs.children.wait``, so
whichever comes second sees the other), it appends ``child.finished`` to the parent's log
and completes the parent's waitpoint for that child, if it waits there; a parent that was
``waiting`` is queued again in the same transaction, and its message is published after the
commit (or by the sweeper, if that publish is lost). Nothing is lost if a process dies
between the child's end and the parent's wake: they are one commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.base.models import Run, RunStatus, Waitpoint, WaitpointStatus
from worker.base.queues import Dispatch
from worker.runs import events

CHILD = "child"  # the waitpoint kind of a parent waiting for a child
FAILED_STATUSES = frozenset({RunStatus.FAILED, RunStatus.DEAD_LETTERED, RunStatus.CANCELLED,
                             RunStatus.EXPIRED})


def waitpoint_name(child_name: str) -> str:
    return f"child:{child_name}"


@dataclass(frozen=True)
class Woken:
    """A parent queued again by its child's end: its message, to publish after commit."""

    dispatch: Dispatch


def child_ended(session: Session, *, run: Run) -> Woken | None:
    """``run`` (a child) ends in this transaction: tell its parent."""
    assert run.parent_id is not None and run.child_name is not None
    parent = session.execute(
        select(Run.id, Run.status).where(Run.id == run.parent_id).with_for_update()).first()
    if parent is None or RunStatus(parent.status).is_terminal:
        return None
    name = waitpoint_name(run.child_name)
    completed = session.execute(
        update(Waitpoint)
        .where(Waitpoint.run_id == parent.id, Waitpoint.name == name,
               Waitpoint.kind == CHILD, Waitpoint.status == WaitpointStatus.WAITING)
        .values(status=WaitpointStatus.COMPLETED, data={"status": run.status},
                completed_at=func.now(), completed_by=f"child {run.id}")
        .returning(Waitpoint.id)).first()
    wake = completed is not None and parent.status == RunStatus.WAITING
    values: dict[str, object] = {"last_seq": Run.last_seq + (2 if wake else 1)}
    if wake:
        values.update(status=RunStatus.QUEUED, next_attempt_at=None, dispatched_at=None)
    row = session.execute(
        update(Run).where(Run.id == parent.id).values(**values)
        .returning(Run.id, Run.queue, Run.timeout_s, Run.agent, Run.attempt, Run.last_seq)
    ).one()
    seq = row.last_seq - (1 if wake else 0)
    events.record(session, run_id=parent.id, seq=seq, type=events.PROGRESS, data={
        "phase": "child.finished", "child_id": run.id, "name": run.child_name,
        "agent": run.agent, "status": run.status,
        "message": f"Child {run.child_name} ({run.agent}) {run.status}"})
    if not wake:
        return None
    events.record(session, run_id=parent.id, seq=row.last_seq, type=events.STATUS,
                  data={"status": RunStatus.QUEUED, "attempt": row.attempt,
                        "resumed": [name]})
    return Woken(Dispatch.of(row))
