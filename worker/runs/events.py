"""The run's event log: one gap-free ``seq`` per run, written with the state it reports.

``runs.last_seq`` is bumped in the same statement that changes the run (or in ``append``
below); the row lock that UPDATE takes serialises concurrent writers, and a rolled-back
transaction takes its seq with it, so the log never has gaps.

Every event recorded in a transaction is kept in ``session.info``; once the transaction
commits, ``worker.runs.lifecycle`` announces them on the bus, so listeners learn of an
event only after it is durable. (``Event`` itself is ``worker.base.event``: the bus carries
it too.)
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from worker.base.db import Database
from worker.base.errors import LeaseLost
from worker.base.event import PROGRESS, STATUS, Event
from worker.base.models import RunEvent

__all__ = ["PROGRESS", "SESSION_KEY", "STATUS", "Event", "after", "append", "record",
           "record_many", "recorded", "remember"]

SESSION_KEY = "agentq.events"


def remember(session: Session, event: Event) -> Event:
    """Note an event written in this transaction, to be announced after it commits."""
    session.info.setdefault(SESSION_KEY, []).append(event)
    return event


def record(session: Session, *, run_id: str, seq: int, type: str,
           data: dict[str, Any]) -> Event:
    """Insert event ``seq``, already reserved by the caller's UPDATE of the run."""
    at = session.execute(
        insert(RunEvent).values(run_id=run_id, seq=seq, type=type, data=data)
        .returning(RunEvent.at)
    ).scalar_one()
    return remember(session, Event(run_id, seq, type, json.loads(json.dumps(data)), at))


_RECORD_MANY = text("""
    INSERT INTO run_events (run_id, seq, type, data)
    SELECT :run_id, :first + number - 1, :type, CAST(data AS jsonb)
    FROM unnest(CAST(:data AS text[])) WITH ORDINALITY AS given(data, number)
    RETURNING seq, at
""")


def record_many(session: Session, *, run_id: str, first: int, type: str,
                data: list[dict[str, Any]]) -> list[Event]:
    """``record`` for events ``first``, ``first + 1``, ... (reserved by the caller) in one
    statement; ``data`` must be plain JSON already (strings, numbers, lists, dicts)."""
    if not data:
        return []
    at = {row.seq: row.at for row in session.execute(_RECORD_MANY, {
        "run_id": run_id, "first": first, "type": type,
        "data": [json.dumps(item) for item in data]})}
    return [remember(session, Event(run_id, first + number, type, item, at[first + number]))
            for number, item in enumerate(data)]


_APPEND = text(
    """
    WITH bumped AS (
        UPDATE runs SET last_seq = last_seq + 1
        WHERE id = :run_id AND lease_epoch = :epoch AND status = 'running'
        RETURNING id, last_seq
    )
    INSERT INTO run_events (run_id, seq, type, data)
    SELECT id, last_seq, :type, CAST(:data AS jsonb) FROM bumped
    RETURNING seq, at
    """
)


def append(
    session: Session, *, run_id: str, epoch: int, type: str, data: dict[str, Any]
) -> Event:
    """Append an event written by the attempt holding ``epoch``."""
    encoded = json.dumps(data)
    row = session.execute(
        _APPEND, {"run_id": run_id, "epoch": epoch, "type": type, "data": encoded}
    ).one_or_none()
    if row is None:
        raise LeaseLost(f"run {run_id}: attempt with lease epoch {epoch} no longer holds it")
    return remember(session, Event(run_id, int(row.seq), type, json.loads(encoded), row.at))


# The same append, alone on a connection (psycopg's placeholders, for Database.one_row).
_APPEND_ALONE = _APPEND.text.replace(":run_id", "%(run_id)s").replace(
    ":epoch", "%(epoch)s").replace(":type", "%(type)s").replace(":data", "%(data)s")


def append_alone(db: Database, *, run_id: str, epoch: int, type: str,
                 data: dict[str, Any]) -> Event:
    """``append`` as one statement that commits by itself, without a Session (an agent's
    ``ctx.emit``, the hot path of a worker holding hundreds of runs); the caller announces
    the event."""
    encoded = json.dumps(data)
    row = db.one_row(_APPEND_ALONE, {"run_id": run_id, "epoch": epoch, "type": type,
                                     "data": encoded})
    if row is None:
        raise LeaseLost(f"run {run_id}: attempt with lease epoch {epoch} no longer holds it")
    return Event(run_id, int(row.seq), type, json.loads(encoded), row.at)


def after(session: Session, *, run_id: str, seq: int, limit: int = 1000) -> list[Event]:
    """Return the run's events with ``seq`` greater than ``seq``, oldest first."""
    query = (
        select(RunEvent)
        .where(RunEvent.run_id == run_id, RunEvent.seq > seq)
        .order_by(RunEvent.seq)
        .limit(limit)
    )
    return [Event(row.run_id, row.seq, row.type, row.data, row.at)
            for row in session.scalars(query)]


def recorded(session: Session) -> list[Event]:
    """The events recorded in this session's transaction so far."""
    found: list[Event] = session.info.get(SESSION_KEY, [])
    return found
