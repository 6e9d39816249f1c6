"""The run's event log: one gap-free ``seq`` per run, written with the state it reports.

``runs.last_seq`` is bumped in the same statement that changes the run (or in ``append``
below); the row lock that UPDATE takes serialises concurrent writers, and a rolled-back
transaction takes its seq with it, so the log never has gaps.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from worker.errors import LeaseLost
from worker.models import RunEvent

STATUS = "status"
PROGRESS = "progress"


def record(session: Session, *, run_id: str, seq: int, type: str, data: dict[str, Any]) -> None:
    """Insert event ``seq``, already reserved by the caller's UPDATE of the run."""
    session.execute(insert(RunEvent).values(run_id=run_id, seq=seq, type=type, data=data))


_APPEND = text(
    """
    WITH bumped AS (
        UPDATE runs SET last_seq = last_seq + 1
        WHERE id = :run_id AND lease_epoch = :epoch AND status = 'running'
        RETURNING id, last_seq
    )
    INSERT INTO run_events (run_id, seq, type, data)
    SELECT id, last_seq, :type, CAST(:data AS jsonb) FROM bumped
    RETURNING seq
    """
)


def append(
    session: Session, *, run_id: str, epoch: int, type: str, data: dict[str, Any]
) -> int:
    """Append an event written by the attempt holding ``epoch``; return its seq."""
    seq = session.execute(
        _APPEND, {"run_id": run_id, "epoch": epoch, "type": type, "data": json.dumps(data)}
    ).scalar_one_or_none()
    if seq is None:
        raise LeaseLost(f"run {run_id}: attempt with lease epoch {epoch} no longer holds it")
    return int(seq)


def after(session: Session, *, run_id: str, seq: int, limit: int = 1000) -> list[RunEvent]:
    """Return the run's events with ``seq`` greater than ``seq``, oldest first."""
    query = (
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.seq > seq)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return list(session.scalars(query))
