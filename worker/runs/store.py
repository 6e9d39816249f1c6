"""The run lifecycle in Postgres: create, read, claim, finish, and the dispatch outbox.

Every function takes a session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from worker.base import jsonb
from worker.base.db import Database
from worker.base.errors import Conflict, NotFound
from worker.base.models import TERMINAL_STATUSES, Run, RunStatus, new_id
from worker.base.queues import Dispatch
from worker.runs import admission, batch_end, events, lifecycle, waits
from worker.runs.readiness import session_free, under_concurrency_limit, under_running_cap


@dataclass(frozen=True)
class NewRun:
    """What a client asked for, already validated and with defaults applied."""

    agent: str
    input: Any
    timeout_s: int
    max_attempts: int
    queue: str
    session_id: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    reply_url: str | None = None
    multitask: str = "enqueue"
    priority: str = "normal"
    start_at: datetime | None = None  # delayed: it may start then (or delay_s from now)
    delay_s: float | None = None
    ttl_s: float | None = None  # it expires unless started this long after it may start
    schedule_id: str | None = None  # a schedule's firing, for slot scheduled_for
    scheduled_for: datetime | None = None
    concurrency_key: str | None = None  # at most concurrency_max running with this key
    concurrency_max: int | None = None
    concurrency_strategy: str = "queue"
    traceparent: str | None = None  # the submit span's (worker.base.tracing)
    # The tree (worker.runs.children), the batch, the fork: as the columns of the same names.
    parent_id: str | None = None
    root_id: str | None = None
    child_name: str | None = None
    depth: int = 0
    detached: bool = False
    batch_id: str | None = None
    forked_from: dict[str, Any] | None = None

    @property
    def delayed(self) -> bool:
        return self.start_at is not None or self.delay_s is not None


@dataclass(frozen=True)
class RunFilter:
    status: RunStatus | None = None
    agent: str | None = None
    session_id: str | None = None
    since: datetime | None = None  # created at or after
    parent_id: str | None = None
    batch_id: str | None = None


# What a submission gives the statement that stores its run, with each value's SQL type: one
# value each (``create``), or an array each, an element per run (``create_many``). All but
# start_at, delay_s and ttl_s (which make the run's timing) are stored as they are.
_GIVEN = (("id", "text"), ("agent", "text"), ("input", "jsonb"), ("max_attempts", "int"),
          ("timeout_s", "int"), ("session_id", "text"), ("metadata", "jsonb"),
          ("webhook_url", "text"), ("reply_url", "text"), ("request_id", "text"),
          ("queue", "text"), ("priority", "text"), ("start_at", "timestamptz"),
          ("delay_s", "float8"), ("ttl_s", "float8"), ("schedule_id", "text"),
          ("scheduled_for", "timestamptz"), ("concurrency_key", "text"),
          ("concurrency_max", "int"), ("traceparent", "text"), ("parent_id", "text"),
          ("root_id", "text"), ("child_name", "text"), ("depth", "int"),
          ("detached", "boolean"), ("batch_id", "text"), ("forked_from", "jsonb"))
_AS_GIVEN = [name for name, _ in _GIVEN if name not in ("start_at", "delay_s", "ttl_s")]


def _create_sql(slot: str | None, *, many: bool = False) -> str:
    """The run and its first event in one statement (a hot path: every submission); led
    by ``slot``, the run is stored only if the tenant's caps leave it a slot. A delayed run
    (``start_at`` later than now) is stored ``scheduled``, due at ``next_attempt_at``.
    ``many``: each value given is an array, and a run is stored per element. In psycopg's
    placeholders: run by a session's connection, or on its own (``Database.one_row``)."""
    lead, source = (f"slot AS ({slot}),", ", slot") if slot else ("", "")
    if many:
        arrays = ", ".join(f"CAST(%({name})s AS {kind}[])" for name, kind in _GIVEN)
        names = ", ".join(name for name, _ in _GIVEN)
        given = f"SELECT * FROM unnest({arrays}) AS v({names})"  # noqa: S608 (constants)
    else:
        given = "SELECT " + ", ".join(f"CAST(%({name})s AS {kind}) AS {name}"
                                      for name, kind in _GIVEN)
    return f"""
    WITH {lead} given AS ({given}), timing AS (
        SELECT given.*,
               CASE WHEN given.start_at IS NULL AND given.delay_s IS NULL THEN NULL
               ELSE greatest(now(), coalesce(given.start_at,
                     now() + make_interval(secs => given.delay_s))) END AS starts
        FROM given
    ), stored AS (
        INSERT INTO runs (tenant_id, status, attempt, lease_epoch, last_seq, start_at,
                          next_attempt_at, expires_at, {", ".join(_AS_GIVEN)})
        SELECT %(tenant_id)s, CASE WHEN t.starts > now() THEN 'scheduled' ELSE 'queued' END,
               0, 0, 1, t.starts, CASE WHEN t.starts > now() THEN t.starts END,
               coalesce(t.starts, now()) + make_interval(secs => t.ttl_s),
               {", ".join(f"t.{name}" for name in _AS_GIVEN)}
        FROM timing t {source}
        RETURNING *
    ), first AS (
        INSERT INTO run_events (run_id, seq, type, data)
        SELECT id, 1, 'status', jsonb_build_object('status', status, 'attempt', 0)
               || CASE WHEN status = 'scheduled' THEN jsonb_build_object(
                      'start_at', to_char(start_at AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
                  ELSE '{{}}'::jsonb END
        FROM stored
        RETURNING run_id, at, data
    )
    SELECT stored.*, first.at AS event_at, first.data AS event_data
    FROM stored JOIN first ON first.run_id = stored.id
    """  # noqa: S608 (constants only)


_CREATE = _create_sql(None)
_CREATE_ADMITTED = _create_sql(admission.SLOT)
_CREATE_MANY = _create_sql(None, many=True)


def create(session: Session, *, tenant_id: str, new: NewRun) -> Run:
    """Store a queued run and its first event in one statement of the session's
    transaction; the caller dispatches it after commit (and took its slot under the
    tenant's caps first: ``admission.take``). Returns the stored run (detached)."""
    row = session.connection().exec_driver_sql(_CREATE, _create_params(tenant_id, new)).one()
    events.remember(session, events.Event(row.id, 1, events.STATUS, dict(row.event_data),
                                          row.event_at))
    return Run.from_row(row)


def create_alone(db: Database, *, tenant_id: str, new: NewRun, caps: admission.Caps) -> Run:
    """As ``create``, but the statement commits by itself: one round trip, no transaction.
    With caps, it takes the run's slot in the same statement, and stores nothing (raising
    ``admission.Full``) when the tenant's figure leaves none. (Event 1 is not announced:
    nobody can be watching a run before it has an id.)"""
    params = _create_params(tenant_id, new)
    if not caps.any:
        return Run.from_row(db.one_row(_CREATE, params))
    row = db.one_row(_CREATE_ADMITTED, {**params, **caps.params(tenant_id)})
    if row is None:
        raise admission.Full(caps)
    return Run.from_row(row)


def create_many(session: Session, *, tenant_id: str, news: list[NewRun],
                ids: list[str]) -> list[Run]:
    """Store queued runs with the ``ids`` given and their first events, in one statement
    of the session's transaction; return them in the order given. As ``create``, the caller
    took their slots and dispatches them after commit. (Their first events are not
    announced: nobody can be watching a run before its id is answered.)"""
    rows = [{**_create_params(tenant_id, new), "id": run_id}
            for new, run_id in zip(news, ids, strict=True)]
    params: dict[str, Any] = {name: [row[name] for row in rows] for name, _ in _GIVEN}
    stored = {row.id: Run.from_row(row) for row in session.connection().exec_driver_sql(
        _CREATE_MANY, {**params, "tenant_id": tenant_id}).all()}
    return [stored[run_id] for run_id in ids]


def _create_params(tenant_id: str, new: NewRun) -> dict[str, Any]:
    return {
        "id": new_id("run"), "tenant_id": tenant_id, "agent": new.agent,
        "input": jsonb.dumps(new.input, what="input"), "max_attempts": new.max_attempts,
        "timeout_s": new.timeout_s, "session_id": new.session_id,
        "metadata": jsonb.dumps(new.metadata, what="metadata"),
        "webhook_url": new.webhook_url, "reply_url": new.reply_url,
        "request_id": new.request_id, "queue": new.queue, "priority": new.priority,
        "start_at": new.start_at, "delay_s": new.delay_s, "ttl_s": new.ttl_s,
        "schedule_id": new.schedule_id, "scheduled_for": new.scheduled_for,
        "concurrency_key": new.concurrency_key, "concurrency_max": new.concurrency_max,
        "traceparent": new.traceparent, "parent_id": new.parent_id, "root_id": new.root_id,
        "child_name": new.child_name, "depth": new.depth, "detached": new.detached,
        "batch_id": new.batch_id,
        "forked_from": None if new.forked_from is None else jsonb.dumps(new.forked_from,
                                                                        what="forked_from"),
    }


def get(session: Session, *, tenant_id: str, run_id: str) -> Run:
    """Return the tenant's run, or raise NotFound (also for another tenant's run)."""
    run = session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id))
    if run is None:
        raise NotFound("run", run_id)
    return run


def page(
    session: Session, *, tenant_id: str, where: RunFilter, limit: int, before: str | None
) -> tuple[list[Run], str | None]:
    """Return up to ``limit`` runs newest first, and the id to continue before (or None)."""
    query = select(Run).where(Run.tenant_id == tenant_id)
    if where.status is not None:
        query = query.where(Run.status == where.status)
    if where.agent is not None:
        query = query.where(Run.agent == where.agent)
    if where.session_id is not None:
        query = query.where(Run.session_id == where.session_id)
    if where.since is not None:
        query = query.where(Run.created_at >= where.since)
    if where.parent_id is not None:
        query = query.where(Run.parent_id == where.parent_id)
    if where.batch_id is not None:
        query = query.where(Run.batch_id == where.batch_id)
    if before is not None:
        query = query.where(Run.id < before)
    rows = list(session.scalars(query.order_by(Run.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def children(session: Session, *, tenant_id: str, run_id: str, limit: int,
             after: str | None) -> tuple[list[Run], str | None]:
    """Up to ``limit`` of the run's children, oldest first, and the id to go on after."""
    query = select(Run).where(Run.parent_id == run_id, Run.tenant_id == tenant_id)
    if after is not None:
        query = query.where(Run.id > after)
    rows = list(session.scalars(query.order_by(Run.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more else None)


def children_by_status(session: Session, *, run_id: str) -> dict[str, int]:
    """How many of the run's children stand in each status."""
    rows = session.execute(select(Run.status, func.count()).where(Run.parent_id == run_id)
                           .group_by(Run.status))
    return {status: count for status, count in rows}


def tree(session: Session, *, tenant_id: str, root_id: str,
         limit: int) -> tuple[list[Run], bool]:
    """The run ``root_id`` and its descendants, at most ``limit`` of them, shallowest first
    (by depth, then id), and whether there are more. One query that walks down
    ix_runs_parent_id_id a level at a time (root_id has no index): Postgres stops the walk
    once it has ``limit + 1`` runs, all of whose parents are among them."""
    below = aliased(Run)
    walk = select(Run.id).where(Run.id == root_id, Run.tenant_id == tenant_id) \
        .cte("walk", recursive=True)
    walk = walk.union_all(select(below.id).where(below.parent_id == walk.c.id,
                                                 below.tenant_id == tenant_id))
    ids = select(walk.c.id).limit(limit + 1)
    rows = list(session.scalars(select(Run).where(Run.id.in_(ids))
                                .order_by(Run.depth, Run.id)))
    return rows[:limit], len(rows) > limit


def may_start(session: Session, *, run_id: str, running_cap: int) -> bool:
    """Whether the run could be claimed now (its session is free, its tenant under cap)."""
    found = session.scalar(select(Run.id).where(
        Run.id == run_id, session_free(), under_running_cap(running_cap)))
    return found is not None


def waiting_for(session: Session, *, run: Run, running_cap: int) -> str | None:
    """Why a queued run has not started, if something holds it back."""
    if run.concurrency_key is not None:
        running = session.scalar(select(func.count()).select_from(Run).where(
            Run.tenant_id == run.tenant_id, Run.concurrency_key == run.concurrency_key,
            Run.status == RunStatus.RUNNING)) or 0
        if running >= (run.concurrency_max or 1):
            return (f"concurrency key {run.concurrency_key!r}: {running} of at most "
                    f"{run.concurrency_max} running")
    if run.session_id is not None:
        earlier = session.scalar(select(Run.id).where(
            Run.tenant_id == run.tenant_id, Run.session_id == run.session_id,
            Run.id < run.id, Run.status.not_in(list(TERMINAL_STATUSES))).order_by(Run.id))
        if earlier is not None:
            return f"session {run.session_id!r}: run {earlier} goes first"
    if running_cap > 0 and running_count(session, tenant_id=run.tenant_id) >= running_cap:
        return f"the tenant's running cap: {running_cap} running (AGENTQ_TENANT_MAX_RUNNING)"
    return None


def active_in_session(session: Session, *, tenant_id: str, session_id: str) -> list[Run]:
    """The session's runs that have not ended, oldest first."""
    query = (select(Run)
             .where(Run.tenant_id == tenant_id, Run.session_id == session_id,
                    Run.status.not_in(list(TERMINAL_STATUSES)))
             .order_by(Run.id))
    return list(session.scalars(query))


def waiting_count(session: Session, *, tenant_id: str) -> int:
    """The tenant's runs waiting to start (queued or retrying; not those waiting at a
    waitpoint)."""
    count = session.scalar(select(func.count()).select_from(Run).where(
        Run.tenant_id == tenant_id, Run.status.in_([RunStatus.QUEUED, RunStatus.RETRYING])))
    return int(count or 0)


def running_count(session: Session, *, tenant_id: str) -> int:
    count = session.scalar(select(func.count()).select_from(Run).where(
        Run.tenant_id == tenant_id, Run.status == RunStatus.RUNNING))
    return int(count or 0)


def due_for_dispatch(session: Session, *, grace_s: float, limit: int,
                     running_cap: int = 0) -> list[Dispatch]:
    """Lock and return queued runs whose publish never happened and that may start."""
    query = (
        select(Run.id, Run.queue, Run.timeout_s, Run.agent)
        .where(
            Run.status == RunStatus.QUEUED,
            Run.dispatched_at.is_(None),
            Run.created_at < func.now() - timedelta(seconds=grace_s),
            session_free(),
            under_running_cap(running_cap),
            under_concurrency_limit(),
        )
        .order_by(Run.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [Dispatch.of(row) for row in session.execute(query)]


def published_and_waiting(session: Session) -> dict[str, int]:
    """How many queued runs each queue's broker should be holding a message for."""
    query = (
        select(Run.queue, func.count())
        .where(Run.status == RunStatus.QUEUED, Run.dispatched_at.is_not(None))
        .group_by(Run.queue)
    )
    return {queue: count for queue, count in session.execute(query).all()}


def longest_waiting(session: Session, *, queue: str, older_than_s: float,
                    limit: int) -> list[Dispatch]:
    """Lock and return the queue's runs published longest ago and still not claimed."""
    query = (
        select(Run.id, Run.queue, Run.timeout_s, Run.agent)
        .where(Run.status == RunStatus.QUEUED, Run.queue == queue,
               Run.dispatched_at < func.now() - timedelta(seconds=older_than_s))
        .order_by(Run.dispatched_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [Dispatch.of(row) for row in session.execute(query)]


@dataclass(frozen=True)
class CancelResult:
    run: Run
    notify_worker: bool  # the run is running: its worker must be told to stop


def cancel(session: Session, *, tenant_id: str, run_id: str) -> CancelResult:
    """Cancel a run. Scheduled, queued, retrying or waiting: it ends now (and never starts
    again).
    Running: it is asked
    to stop (the worker ends it ``cancelled``). Already cancelled: nothing to do.

    Raises Conflict for a run that ended otherwise.
    """
    run = session.scalar(select(Run).where(Run.id == run_id, Run.tenant_id == tenant_id)
                         .with_for_update())
    if run is None:
        raise NotFound("run", run_id)
    status = RunStatus(run.status)
    if status in (RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.RETRYING,
                  RunStatus.WAITING):
        run.status = RunStatus.CANCELLED
        run.cancel_requested_at = run.finished_at = func.now()
        run.next_attempt_at = None
        run.error = {"type": "Cancelled", "message": "cancelled while it waited" if status
                     == RunStatus.WAITING else "cancelled before it started"}
        if status == RunStatus.WAITING:
            waits.cancel_open(session, run_id=run.id)
        run.last_seq += 1
        session.flush()
        session.refresh(run)
        event = events.record(session, run_id=run.id, seq=run.last_seq, type=events.STATUS,
                              data={"status": RunStatus.CANCELLED, "attempt": run.attempt,
                                    "error": run.error})
        lifecycle.ended(session, run=run, event=event)  # its deliveries, in this transaction
        return CancelResult(run, notify_worker=False)
    if status == RunStatus.RUNNING:
        if run.cancel_requested_at is None:
            run.cancel_requested_at = func.now()
            session.flush()
            session.refresh(run)
        return CancelResult(run, notify_worker=True)
    if status == RunStatus.CANCELLED:
        return CancelResult(run, notify_worker=False)
    raise Conflict(f"run {run_id} already ended {status}; it cannot be cancelled")


REPLAYABLE = frozenset({RunStatus.FAILED, RunStatus.DEAD_LETTERED, RunStatus.CANCELLED,
                        RunStatus.EXPIRED})


def replay(session: Session, *, run: Run, caps: admission.Caps) -> Run:
    """Queue a failed, dead-lettered or cancelled run again; its earlier attempts are kept.

    The earlier attempts stop counting toward ``max_attempts``: the replay gets a full budget.
    The run is locked and read again first, so of two replays at once the second finds it
    queued and is refused (409). It waits again, so it takes a place under the tenant's
    ``caps`` as a submission does (``admission.admitted`` around the transaction; an
    operator's replay may pass ``admission.NONE``).
    """
    session.refresh(run, with_for_update=True)
    if run.status not in REPLAYABLE:
        raise Conflict(f"run {run.id} is {run.status}; only failed, dead_lettered, "
                       "cancelled or expired runs can be replayed")
    admission.take(session, tenant_id=run.tenant_id, caps=caps)
    run.status = RunStatus.QUEUED
    run.free_attempts = run.attempt
    run.result = run.error = None
    run.finished_at = run.next_attempt_at = run.dispatched_at = None
    run.cancel_requested_at = run.discarded_at = run.expires_at = None
    run.last_seq += 1
    session.flush()
    if run.batch_id is not None:
        batch_end.run_replayed(session, run=run)
    events.record(session, run_id=run.id, seq=run.last_seq, type=events.STATUS,
                  data={"status": RunStatus.QUEUED, "attempt": run.attempt, "replay": True})
    return run


def dead_letters(session: Session, *, tenant_id: str | None = None,
                 include_discarded: bool = False, limit: int = 1000) -> list[Run]:
    """Dead-lettered runs, newest first (across tenants unless one is named)."""
    query = select(Run).where(Run.status == RunStatus.DEAD_LETTERED)
    if tenant_id is not None:
        query = query.where(Run.tenant_id == tenant_id)
    if not include_discarded:
        query = query.where(Run.discarded_at.is_(None))
    return list(session.scalars(query.order_by(Run.id.desc()).limit(limit)))


def discard(session: Session, *, run_ids: list[str]) -> int:
    """Mark dead letters as dismissed (their history is kept); return how many."""
    query = (
        update(Run)
        .where(Run.id.in_(run_ids), Run.status == RunStatus.DEAD_LETTERED,
               Run.discarded_at.is_(None))
        .values(discarded_at=func.now())
        .returning(Run.id)
    )
    return len(session.execute(query).all())
