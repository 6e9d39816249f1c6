"""Waits: a run pauses at ``ctx.wait_for`` (for data) or ``ctx.sleep`` (for time), gives its
worker slot back, and goes on in a new attempt where it stood.

The first time an attempt reaches a waitpoint it records it (``reach``, under the attempt's
lease) and raises ``Suspend`` out of the agent; the attempt ends ``suspended`` and the run
``waiting`` (``suspend``), holding no slot, no lease and none of its attempts. When the
waitpoint is completed (``complete``: the API, its signed URL, a Slack button) or its
deadline passes (the sweeper's ``wake_due``, or the message published for a near
deadline), the run is queued again, and its next attempt replays its finished steps and
gets the waitpoint's data from ``reach`` at once (or ``WaitTimeout`` at the deadline).

Every change of a waitpoint is fenced by its status (``status = 'waiting'`` in the
``UPDATE``), and a completion and a suspension lock the run's row first, so whichever
comes second sees the other: a completion that lands while the attempt is still ending is
never missed. A completion commits the waitpoint, the run's re-queue and its event
together; the run's message is published after the commit, and the sweeper publishes it
if that publish was lost (``dispatched_at`` stays NULL until it reached the broker).

Functions that take a session never commit: the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.base import jsonb
from worker.base.db import Database
from worker.base.errors import Conflict, InvalidRequest, LeaseLost, NotFound, StepMismatch
from worker.base.models import AttemptOutcome, Run, RunStatus, Waitpoint, WaitpointStatus, new_id
from worker.base.queues import Dispatch
from worker.base.settings import Settings
from worker.runs import attempts, events, lifecycle
from worker.runs.views import iso

WAIT, SLEEP = "wait", "sleep"  # waitpoint kinds
MAX_WAIT_S = 366 * 24 * 3600  # a waitpoint's longest timeout: a year
MAX_PROMPT = 4000
# A deadline this near has its run's message published with a countdown when it suspends
# (woken on time); a later one is woken by the sweeper (within AGENTQ_SWEEP_INTERVAL_S),
# so no broker holds a message for hours.
WAKE_MESSAGE_MAX_S = 300.0
_TOKEN_AUDIENCE = "agentq:waitpoint"  # noqa: S105 (a name, not a secret)


class Suspend(BaseException):
    """Raised out of the agent at waitpoints not yet completed: the attempt ends
    ``suspended``, and the run is woken when the first of them is completed (or due). A
    BaseException, so an agent's ``except Exception`` does not eat it."""

    def __init__(self, waitpoint_ids: list[str], names: list[str],
                 deadline_ids: list[str] | None = None) -> None:
        super().__init__(f"waiting at {', '.join(map(repr, names[:5]))}"
                         + (f" and {len(names) - 5} more" if len(names) > 5 else ""))
        self.waitpoint_ids = waitpoint_ids
        self.names = names
        self.deadline_ids = deadline_ids or []  # others whose deadline also ends the wait


@dataclass(frozen=True)
class Reached:
    """A waitpoint as the attempt that reached it finds it."""

    id: str
    name: str
    kind: str
    status: WaitpointStatus
    data: Any
    timeout_s: float


# The waitpoint made if new, or found as an earlier attempt left it: one statement, under
# the attempt's lease (nothing made or read once the lease has moved on).
_REACH = """
    WITH held AS (
        SELECT id, tenant_id FROM runs
        WHERE id = %(run_id)s AND lease_epoch = %(epoch)s AND status = 'running'
    ), made AS (
        INSERT INTO waitpoints (id, run_id, tenant_id, name, kind, status, prompt, schema,
                                deadline, attempt)
        SELECT %(id)s, id, tenant_id, %(name)s, %(kind)s, 'waiting', %(prompt)s,
               CAST(%(schema)s AS jsonb), now() + make_interval(secs => %(timeout_s)s),
               %(attempt)s
        FROM held
        ON CONFLICT (run_id, name) DO NOTHING
        RETURNING id, kind, status, data, deadline <= now() AS due,
                  extract(epoch FROM deadline - created_at) AS timeout_s
    )
    SELECT * FROM made
    UNION ALL
    SELECT w.id, w.kind, w.status, w.data, w.deadline <= now(),
           extract(epoch FROM w.deadline - w.created_at)
    FROM waitpoints AS w
    WHERE w.run_id = %(run_id)s AND w.name = %(name)s
      AND EXISTS (SELECT 1 FROM held) AND NOT EXISTS (SELECT 1 FROM made)
"""

# A waitpoint past its deadline: a sleep is over, a wait timed out (unless completed first).
_EXPIRE = """
    UPDATE waitpoints
    SET status = CASE kind WHEN 'sleep' THEN 'completed' ELSE 'timed_out' END,
        completed_at = now(), completed_by = 'deadline'
    WHERE id = %(id)s AND status = 'waiting' AND deadline <= now()
    RETURNING status, data
"""
_READ = "SELECT status, data FROM waitpoints WHERE id = %(id)s"


def reach(db: Database, *, run_id: str, epoch: int, attempt: int, name: str, kind: str,
          timeout_s: float, prompt: str | None = None,
          schema: dict[str, Any] | None = None) -> Reached:
    """Make the attempt's waitpoint ``name`` (the first time) or find it; one past its
    deadline is timed out (a sleep: completed) on the way. Raises LeaseLost if the attempt
    no longer holds the run, StepMismatch if ``name`` was a waitpoint of the other kind."""
    row = db.one_row(_REACH, {
        "run_id": run_id, "epoch": epoch, "id": new_id("wp"), "name": name, "kind": kind,
        "prompt": prompt, "schema": None if schema is None else json.dumps(schema),
        "timeout_s": timeout_s, "attempt": attempt})
    if row is None:
        raise LeaseLost(f"run {run_id}: attempt with lease epoch {epoch} no longer holds it")
    if row.kind != kind:
        other = "ctx.sleep" if row.kind == SLEEP else "ctx.wait_for"
        raise StepMismatch(f"{name!r} is already a {other} of this run; give each waitpoint "
                           "a name of its own")
    status, data = WaitpointStatus(row.status), row.data
    if status == WaitpointStatus.WAITING and row.due:
        expired = db.one_row(_EXPIRE, {"id": row.id}) or db.one_row(_READ, {"id": row.id})
        status, data = WaitpointStatus(expired.status), expired.data
    return Reached(row.id, name, kind, status, data, float(row.timeout_s))


@dataclass(frozen=True)
class Suspended:
    """Where a suspended attempt left its run: ``waiting`` (woken in ``wake_in_s``), or
    ``queued`` again at once (a waitpoint it waits on was completed, or is due, already)."""

    status: RunStatus
    wake_in_s: float | None


def suspend(session: Session, *, run_id: str, epoch: int, attempt: int,
            waitpoint_ids: list[str], deadline_ids: list[str] | None = None) -> Suspended:
    """End the attempt ``suspended`` under its lease: the run waits for the waitpoints it
    stopped at (or is queued again at once if one already is completed or due), the
    attempt is given back to it (``free_attempts``), and its status event (with the
    waitpoint) and ``run.waiting`` deliveries are written. Raises LeaseLost if the attempt
    no longer holds the run."""
    held = session.execute(
        select(Run.id).where(Run.id == run_id, Run.lease_epoch == epoch,
                             Run.status == RunStatus.RUNNING).with_for_update()).first()
    if held is None:
        raise LeaseLost(f"run {run_id}: lease epoch {epoch} is no longer current")
    # Read after the run's lock: a completion that got it first has committed by now.
    points = list(session.scalars(select(Waitpoint).where(Waitpoint.id.in_(waitpoint_ids))
                                  .order_by(Waitpoint.deadline)))
    now = session.scalar(select(func.now()))
    assert now is not None
    ready = not points or any(point.status != WaitpointStatus.WAITING or point.deadline <= now
                              for point in points)
    wake_at = None if ready else points[0].deadline
    if deadline_ids and wake_at is not None:  # the earliest deadline of them all wakes it
        sooner = session.scalar(select(func.min(Waitpoint.deadline)).where(
            Waitpoint.id.in_(deadline_ids), Waitpoint.run_id == run_id,
            Waitpoint.status == WaitpointStatus.WAITING))
        if sooner is not None and sooner < wake_at:
            ready, wake_at = sooner <= now, None if sooner <= now else sooner
    status = RunStatus.QUEUED if ready else RunStatus.WAITING
    run = session.execute(
        update(Run).where(Run.id == run_id)
        .values(status=status, next_attempt_at=wake_at, dispatched_at=None,
                free_attempts=Run.free_attempts + 1, last_seq=Run.last_seq + 1)
        .returning(Run)).scalar_one()
    attempts.end_attempt(session, run_id=run_id, attempt=attempt,
                         outcome=AttemptOutcome.SUSPENDED, error=None)
    data: dict[str, Any] = {"status": status.value, "attempt": attempt}
    if ready:
        data["resumed"] = [point.name for point in points if point.status != "waiting"
                           or point.deadline <= now]
    else:
        data["waitpoint"] = waitpoint_view(points[0], url=None)
    event = events.record(session, run_id=run_id, seq=run.last_seq, type=events.STATUS,
                          data=data)
    lifecycle.freed(session, run=run)  # its place under a running cap
    if not ready:
        lifecycle.waiting(session, run=run, event=event,
                          extra={"waitpoint": waitpoint_view(points[0], url=None)})
    wake_in = None if wake_at is None else max(0.0, (wake_at - now).total_seconds())
    return Suspended(status, wake_in)


@dataclass(frozen=True)
class Completed:
    """A waitpoint completed, and its run's message to publish if it was queued again."""

    waitpoint: Waitpoint
    run: Run
    dispatch: Dispatch | None


def complete(session: Session, *, tenant_id: str, run_id: str, name: str, data: Any,
             by: str) -> Completed:
    """Complete the tenant's waitpoint ``name`` of ``run_id`` with ``data`` and queue its run
    again, in the session's transaction. NotFound for another tenant's run or no such
    waitpoint; InvalidRequest (saying what is wrong) when ``data`` does not match its schema;
    Conflict when it is already completed, timed out or cancelled."""
    run = session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id)
                         .with_for_update())
    if run is None:
        raise NotFound("run", run_id)
    point = session.scalar(select(Waitpoint).where(Waitpoint.run_id == run_id,
                                                   Waitpoint.name == name))
    if point is None:
        raise NotFound("waitpoint", name)
    now = session.scalar(select(func.now()))
    assert now is not None
    if RunStatus(run.status).is_terminal:
        raise Conflict(f"run {run_id} already ended {run.status}; its waitpoints cannot be "
                       "completed", waitpoint=point.status)
    if point.kind == SLEEP:
        raise Conflict(f"{name!r} is a ctx.sleep: it ends at its deadline, it is not completed",
                       waitpoint=point.status)
    if point.kind != WAIT:  # a parent's wait for its child: the child's end completes it
        raise Conflict(f"{name!r} waits for a child run; it completes when that run ends",
                       waitpoint=point.status)
    if point.status != WaitpointStatus.WAITING:
        raise Conflict(f"waitpoint {name!r} is already {point.status}", waitpoint=point.status)
    if point.deadline <= now:
        raise Conflict(f"waitpoint {name!r} reached its deadline ({iso(point.deadline)}); "
                       "it is timing out", waitpoint="timed_out")
    check_data(point.schema, data)
    done = session.execute(
        update(Waitpoint)
        .where(Waitpoint.id == point.id, Waitpoint.status == WaitpointStatus.WAITING)
        .values(status=WaitpointStatus.COMPLETED, data=data, completed_at=func.now(),
                completed_by=by)
        .returning(Waitpoint.id)).first()
    if done is None:  # under the run's lock nobody else completes it: never, in fact
        raise Conflict(f"waitpoint {name!r} was completed meanwhile", waitpoint="completed")
    session.refresh(point)
    job = None
    if run.status == RunStatus.WAITING:
        run.status = RunStatus.QUEUED
        run.next_attempt_at = run.dispatched_at = None
        run.last_seq += 1
        session.flush()
        events.record(session, run_id=run.id, seq=run.last_seq, type=events.STATUS,
                      data={"status": RunStatus.QUEUED, "attempt": run.attempt,
                            "resumed": [name]})
        job = Dispatch.of(run)
    # Else the attempt that reached it is still ending: its suspend finds it completed.
    return Completed(point, run, job)


def check_data(schema: dict[str, Any] | None, data: Any) -> None:
    """InvalidRequest listing each way ``data`` does not match ``schema`` (a JSON Schema)."""
    if schema is None:
        return
    import jsonschema  # here: a worker process starts without it (it takes 0.3 s)

    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [{"field": ".".join(["data", *(str(part) for part in error.absolute_path)]),
                 "message": error.message}
                for error in sorted(validator.iter_errors(data), key=lambda e: e.path)[:20]]
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise InvalidRequest(f"the data does not match the waitpoint's schema: "
                             f"{len(problems)} {noun}; see errors", problems)


def schema_of(schema: Any) -> dict[str, Any] | None:
    """``ctx.wait_for``'s ``schema`` as a JSON Schema: a dict (checked to be one), or a
    pydantic model's; ValueError saying what is wrong."""
    if schema is None:
        return None
    if hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if not isinstance(schema, dict):
        raise ValueError("schema is a JSON Schema (a dict) or a pydantic model class")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ValueError(f"schema is not a valid JSON Schema: {error.message}") from None
    checked: dict[str, Any] = json.loads(jsonb.dumps(schema, what="schema"))
    return checked


def cancel_open(session: Session, *, run_id: str) -> None:
    """The run ended (cancelled): its waitpoints still waiting can no longer be completed."""
    session.execute(update(Waitpoint)
                    .where(Waitpoint.run_id == run_id,
                           Waitpoint.status == WaitpointStatus.WAITING)
                    .values(status=WaitpointStatus.CANCELLED, completed_at=func.now(),
                            completed_by="cancel"))


def wake_due(session: Session, *, grace_s: float, limit: int) -> list[Dispatch]:
    """Queue waiting runs whose first waitpoint is due (and whose message, if they had one,
    was not taken): the attempt that claims them finds the waitpoint timed out."""
    due = (select(Run.id)
           .where(Run.status == RunStatus.WAITING,
                  Run.next_attempt_at < func.now() - timedelta(seconds=grace_s))
           .order_by(Run.next_attempt_at).limit(limit)
           .with_for_update(skip_locked=True))
    woken = session.execute(
        update(Run).where(Run.id.in_(due.scalar_subquery()))
        .values(status=RunStatus.QUEUED, next_attempt_at=None, dispatched_at=None,
                last_seq=Run.last_seq + 1)
        .returning(Run.id, Run.queue, Run.timeout_s, Run.agent, Run.attempt, Run.last_seq)
    ).all()
    for row in woken:
        events.record(session, run_id=row.id, seq=row.last_seq, type=events.STATUS,
                      data={"status": RunStatus.QUEUED, "attempt": row.attempt,
                            "woken": "deadline"})
    return [Dispatch.of(row) for row in woken]


def listed(session: Session, *, run_id: str) -> list[Waitpoint]:
    return list(session.scalars(select(Waitpoint).where(Waitpoint.run_id == run_id)
                                .order_by(Waitpoint.created_at, Waitpoint.id)))


def waitpoint_view(point: Waitpoint, *, url: str | None) -> dict[str, Any]:
    return {
        "id": point.id,
        "run_id": point.run_id,
        "name": point.name,
        "kind": point.kind,
        "status": point.status,
        "prompt": point.prompt,
        "schema": point.schema,
        "deadline": iso(point.deadline),
        "attempt": point.attempt,
        "data": point.data,
        "completed_by": point.completed_by,
        "created_at": iso(point.created_at),
        "completed_at": iso(point.completed_at),
        "url": url if point.status == WaitpointStatus.WAITING else None,
    }


# The signed URL ---------------------------------------------------------------------------

def _key(secret: str) -> bytes:
    """The tokens' own key, derived from AGENTQ_SECRET_KEY (not the cookies' key itself)."""
    return hmac.new(secret.encode(), b"agentq waitpoint tokens v1", hashlib.sha256).digest()


def token(secret: str, *, waitpoint_id: str, deadline: datetime) -> str:
    """The waitpoint's single-use, expiring token: its id and deadline, signed (HS256)."""
    return jwt.encode({"wp": waitpoint_id, "aud": _TOKEN_AUDIENCE,
                       "exp": int(deadline.timestamp()) + 1}, _key(secret), algorithm="HS256")


class TokenExpired(Exception):
    """The token is genuine, and past its waitpoint's deadline."""


def verify(secret: str, value: str) -> str:
    """The waitpoint id a genuine, unexpired token names; TokenExpired, or ValueError for
    anything else (forged, altered, not a token)."""
    try:
        claims = jwt.decode(value, _key(secret), algorithms=["HS256"],
                            audience=_TOKEN_AUDIENCE, options={"require": ["exp", "aud"]})
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the link has expired") from None
    except jwt.InvalidTokenError:
        raise ValueError("not a waitpoint link") from None
    waitpoint_id = claims.get("wp")
    if not isinstance(waitpoint_id, str):
        raise ValueError("not a waitpoint link")
    return waitpoint_id


def url(settings: Settings, point: Waitpoint | dict[str, Any]) -> str | None:
    """The waitpoint's signed URL (None for a sleep, or without AGENTQ_SECRET_KEY to sign
    it)."""
    kind = point.get("kind") if isinstance(point, dict) else point.kind
    if settings.secret_key is None or kind != WAIT:
        return None
    if isinstance(point, dict):
        waitpoint_id, deadline = point["id"], datetime.fromisoformat(point["deadline"])
    else:
        waitpoint_id, deadline = point.id, point.deadline
    signed = token(settings.secret_key, waitpoint_id=waitpoint_id,
                   deadline=deadline.astimezone(UTC))
    return f"{settings.public_url.rstrip('/')}/waitpoints/{signed}"


def with_url(settings: Settings, payload: dict[str, Any]) -> dict[str, Any]:
    """A ``run.waiting`` delivery's payload with its waitpoint's signed URL, made as it is
    sent (the URL is never stored)."""
    point = (payload.get("data") or {}).get("waitpoint") if payload.get("type") == \
        "run.waiting" else None
    if not isinstance(point, dict) or "id" not in point:
        return payload
    return {**payload, "data": {**payload["data"],
                                "waitpoint": {**point, "url": url(settings, point)}}}


def by_token(session: Session, *, waitpoint_id: str) -> Waitpoint | None:
    return session.get(Waitpoint, waitpoint_id)
