"""An attempt's life under its lease: claim, heartbeat, finish, and recovery when it dies.

A claim bumps the run's lease epoch in one UPDATE. Every later write of that attempt names
the epoch, so once the lease has moved on (the sweeper re-queued a dead attempt, a newer
attempt claimed the run), a late write from the old one changes nothing.

Every function takes a session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from worker.base.errors import LeaseLost
from worker.base.models import TERMINAL_STATUSES, AttemptOutcome, Run, RunAttempt, RunStatus
from worker.base.queues import Dispatch
from worker.runs import events, lifecycle
from worker.runs.views import iso


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a run; ``epoch`` fences every later write."""

    run_id: str
    tenant_id: str
    agent: str
    input: Any
    attempt: int
    max_attempts: int
    free_attempts: int
    epoch: int
    timeout_s: int
    queue: str
    session_id: str | None
    request_id: str | None
    worker: str
    waited_s: float = 0.0  # from submission to this claim
    has_steps: bool = True  # False: no step to load (the steps' first read is skipped)
    traceparent: str | None = None  # the trace its submission began (worker.base.tracing)
    deferrals: int = 0  # attempts deferred so far (a Deferred: free up to a bound)

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - (self.attempt - self.free_attempts)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, and so where the run goes next."""

    status: RunStatus
    attempt_outcome: AttemptOutcome
    result: Any = None
    error: dict[str, Any] | None = None
    traceback: str | None = None
    retry_in_s: float | None = None  # with status RETRYING (WAITING: when it is woken)
    waits: tuple[str, ...] = ()  # with status WAITING: the waitpoints it stopped at
    deadlines: tuple[str, ...] = ()  # ... and others whose deadlines also end the wait
    free: bool = False  # with status RETRYING: the attempt does not count (a Deferred)


_ENDED = ", ".join(f"'{status.value}'" for status in TERMINAL_STATUSES)

# The claim, its attempt row and its status event in one statement: atomic even without a
# transaction, and one round trip (a hot path: every attempt). The conditions are those of
# worker.readiness (:ready): claimable, the session's earlier runs ended, the tenant under
# its cap, the run's key under its limit (:under_limit, its runs running counted).
# :targets names the runs: one (:run_id), or many at once (claim_many and claim_keyed, with
# no cap; claim_keyed's :places, joined in by :from, number each key's runs).
_READY = """
          (status = 'queued'
           OR (status IN ('retrying', 'waiting', 'scheduled') AND next_attempt_at <= now()))
      AND (expires_at IS NULL OR started_at IS NOT NULL OR expires_at > now())
      AND (session_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM runs AS earlier
            WHERE earlier.tenant_id = runs.tenant_id
              AND earlier.session_id = runs.session_id AND earlier.id < runs.id
              AND earlier.status NOT IN (:ended_statuses)))
      AND (:cap = 0 OR (SELECT count(*) FROM runs AS busy
                        WHERE busy.tenant_id = runs.tenant_id
                          AND busy.status = 'running') < :cap)
""".replace(":ended_statuses", _ENDED)  # constants only
_UNDER_LIMIT = """(concurrency_key IS NULL OR :place <= concurrency_max - (
          SELECT count(*) FROM runs AS busy
          WHERE busy.tenant_id = runs.tenant_id
            AND busy.concurrency_key = runs.concurrency_key AND busy.status = 'running'))"""
_CLAIM_SQL = """
    WITH :places claimed AS (
        UPDATE runs SET status = 'running', attempt = attempt + 1,
            lease_epoch = lease_epoch + 1, worker = :worker,
            started_at = coalesce(started_at, now()), heartbeat_at = now(),
            next_attempt_at = NULL, last_seq = last_seq + 1
        :from WHERE :targets AND :ready
        RETURNING id, tenant_id, agent, input, attempt, max_attempts, free_attempts,
                  lease_epoch, timeout_s, queue, session_id, request_id, last_seq,
                  traceparent, deferrals, extract(epoch FROM now() - created_at) AS waited_s
    ), attempt_row AS (
        INSERT INTO run_attempts (run_id, attempt, lease_epoch, worker)
        SELECT id, attempt, lease_epoch, :worker FROM claimed
        RETURNING run_id
    ), status_event AS (
        INSERT INTO run_events (run_id, seq, type, data)
        SELECT id, last_seq, 'status',
               jsonb_build_object('status', 'running', 'attempt', attempt)
        FROM claimed
        RETURNING run_id, at
    )
    SELECT claimed.*, status_event.at AS event_at,
           EXISTS (SELECT 1 FROM run_steps WHERE run_steps.run_id = claimed.id) AS has_steps
    FROM claimed JOIN status_event ON status_event.run_id = claimed.id
    JOIN attempt_row ON attempt_row.run_id = claimed.id
"""


def _claim_sql(*, places: str = "", from_: str = "", targets: str, place: str = "1") -> str:
    """The claim statement for ``targets``; a keyed run takes the ``place``-th of its key's
    free places (the first, claimed alone)."""
    return (_CLAIM_SQL.replace(":places", places).replace(":from", from_)
            .replace(":targets", targets).replace(":ready", _READY)
            .replace(":under_limit", _UNDER_LIMIT).replace(":place", place))


_CLAIM = text(_claim_sql(targets="id = :run_id AND :under_limit"))
# Many at once counts no caps; a run with a concurrency key is left to claim_keyed.
_CLAIM_MANY = text(_claim_sql(targets="id = ANY(:run_ids) AND concurrency_key IS NULL"))
# Runs with a key, many at once, under their keys' locks: each takes the next of the places
# its key has free (its limit less its runs running), in the order they were submitted.
_CLAIM_KEYED = text(_claim_sql(
    places="""places AS (
        SELECT id AS run_id,
               row_number() OVER (PARTITION BY tenant_id, concurrency_key ORDER BY id) AS place
        FROM runs WHERE id = ANY(:run_ids) AND concurrency_key IS NOT NULL AND :ready
    ),""",
    from_="FROM places", targets="id = places.run_id AND :under_limit", place="places.place"))
# The keys' locks (as ``claim`` takes one), in one order for every claimer, so that two
# claimers of overlapping keys never wait for each other both: taken as the sorted rows of
# the subquery come (a subquery with DISTINCT is kept whole, its order with it).
_LOCK_KEYS = text("""
    SELECT pg_advisory_xact_lock(key_lock) FROM (
        SELECT DISTINCT hashtext(tenant_id || '/' || concurrency_key) AS key_lock
        FROM runs WHERE id = ANY(:run_ids) AND concurrency_key IS NOT NULL
        ORDER BY key_lock) AS keys
""")

# The outcome: the run, its attempt and its status event in one statement, returning the
# run as it now stands and, if it ended, the tenant's endpoints that want to hear of it.
_FINISH = text("""
    WITH finished AS (
        UPDATE runs SET status = :status, result = CAST(:result AS jsonb),
            error = CAST(:error AS jsonb),
            finished_at = CASE WHEN :terminal THEN now() END,
            next_attempt_at = :next_attempt_at,
            dispatched_at = CASE WHEN :retrying THEN NULL ELSE dispatched_at END,
            free_attempts = free_attempts + CASE WHEN :free THEN 1 ELSE 0 END,
            deferrals = deferrals + CASE WHEN :free THEN 1 ELSE 0 END,
            last_seq = last_seq + 1
        WHERE id = :run_id AND lease_epoch = :epoch AND status = 'running'
        RETURNING *
    ), attempt_row AS (
        UPDATE run_attempts SET finished_at = now(), outcome = :outcome,
            error_type = :error_type, error_message = :error_message, traceback = :traceback
        WHERE run_id = (SELECT id FROM finished) AND attempt = :attempt
        RETURNING run_id
    ), status_event AS (
        INSERT INTO run_events (run_id, seq, type, data)
        SELECT id, last_seq, 'status', CAST(:data AS jsonb) FROM finished
        RETURNING at
    )
    SELECT finished.*, status_event.at AS event_at,
        CASE WHEN :terminal THEN (
            SELECT coalesce(json_agg(json_build_array(e.id, e.url)), '[]'::json)
            FROM webhook_endpoints AS e
            WHERE e.tenant_id = finished.tenant_id AND e.deleted_at IS NULL
              AND e.disabled_at IS NULL AND :event_type = ANY(e.events)) END AS targets
    FROM finished, status_event WHERE EXISTS (SELECT 1 FROM attempt_row)
""")

_CLAIMABLE = and_(or_(
    Run.status == RunStatus.QUEUED,
    and_(Run.status.in_([RunStatus.RETRYING, RunStatus.WAITING, RunStatus.SCHEDULED]),
         Run.next_attempt_at <= func.now()),
), or_(Run.expires_at.is_(None), Run.started_at.is_not(None), Run.expires_at > func.now()))


def claim(session: Session, *, run_id: str, worker: str, running_cap: int = 0) -> Claim | None:
    """Take the next attempt of a queued (or due retrying) run; None if it is not claimable.

    Only one claim can win, so a message delivered twice (a second publish, a broker
    redelivery) does nothing the second time. A run whose session has an earlier run still
    going, or whose tenant is at its running cap, is held back: its message is dropped and
    it is dispatched again when it may start.
    """
    if running_cap > 0:  # count and claim one at a time per tenant, so the cap holds
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(
            select(Run.tenant_id).where(Run.id == run_id).scalar_subquery()))))
    # Count and claim one at a time per key, so the limit holds (no key: no lock taken).
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(
        select(Run.tenant_id + "/" + Run.concurrency_key).where(Run.id == run_id)
        .scalar_subquery()))))
    row = session.execute(_CLAIM, {"run_id": run_id, "worker": worker,
                                   "cap": running_cap}).one_or_none()
    if row is None:
        _held_back(session, [run_id])
        return None
    return _claimed(session, row, worker)


def keyed(session: Session, *, run_ids: list[str]) -> list[str]:
    """Those of the runs that have a concurrency key (for ``claim_keyed``)."""
    return list(session.scalars(select(Run.id).where(Run.id.in_(run_ids),
                                                     Run.concurrency_key.is_not(None))))


def claim_many(session: Session, *, run_ids: list[str], worker: str) -> dict[str, Claim]:
    """``claim`` for many runs in one statement, with no running cap (a cap counts the
    tenant's running runs one claim at a time); the runs claimed, by id. Runs with a
    concurrency key are left alone, for ``claim_keyed``: not claimed, nor held back."""
    rows = session.execute(_CLAIM_MANY, {"run_ids": run_ids, "worker": worker,
                                         "cap": 0}).all()
    claims = {row.id: _claimed(session, row, worker) for row in rows}
    _held_back(session, [run_id for run_id in run_ids if run_id not in claims], keyed=False)
    return claims


def claim_keyed(session: Session, *, run_ids: list[str], worker: str) -> dict[str, Claim]:
    """``claim`` for many runs with concurrency keys (and no running cap) in one statement;
    the runs claimed, by id. In a transaction: their keys are locked until it ends, and
    the statement that counts each key's runs running starts once it holds them, so it
    sees every claim of those keys made before (all hold the key's lock until they
    commit, other workers' too): no more than a key's limit run at once."""
    session.execute(_LOCK_KEYS, {"run_ids": run_ids})
    rows = session.execute(_CLAIM_KEYED, {"run_ids": run_ids, "worker": worker,
                                          "cap": 0}).all()
    claims = {row.id: _claimed(session, row, worker) for row in rows}
    _held_back(session, [run_id for run_id in run_ids if run_id not in claims])
    return claims


def _held_back(session: Session, run_ids: list[str], *, keyed: bool = True) -> None:
    """Runs not claimed (held back, or a duplicate message): a held-back run waits to be
    dispatched again. Without ``keyed``, runs with a concurrency key are left as they are
    (their claim is yet to come)."""
    if run_ids:
        query = update(Run).where(Run.id.in_(run_ids), Run.status == RunStatus.QUEUED,
                                  Run.dispatched_at.is_not(None))
        if not keyed:
            query = query.where(Run.concurrency_key.is_(None))
        session.execute(query.values(dispatched_at=None))


def _claimed(session: Session, row: Any, worker: str) -> Claim:
    events.remember(session, events.Event(
        row.id, row.last_seq, events.STATUS,
        {"status": RunStatus.RUNNING.value, "attempt": row.attempt}, row.event_at))
    return Claim(
        run_id=row.id, tenant_id=row.tenant_id, agent=row.agent, input=row.input,
        attempt=row.attempt, max_attempts=row.max_attempts, free_attempts=row.free_attempts,
        epoch=row.lease_epoch, timeout_s=row.timeout_s, queue=row.queue,
        session_id=row.session_id, request_id=row.request_id, worker=worker,
        waited_s=float(row.waited_s), has_steps=bool(row.has_steps),
        traceparent=row.traceparent, deferrals=row.deferrals,
    )


# Leases renewed in one statement that never waits for a row lock: a run whose row another
# transaction holds (its end, a parent's wait holding its children) is renewed next time, so
# the heartbeat, which locks many rows, closes no circle of waits; its lease is still read.
_HEARTBEAT = text("""
    WITH given AS (
        SELECT * FROM unnest(CAST(:run_ids AS text[]), CAST(:epochs AS int[]))
            AS given(run_id, epoch)
    ), held AS (
        SELECT runs.id FROM runs JOIN given
          ON runs.id = given.run_id AND runs.lease_epoch = given.epoch
        WHERE runs.status = 'running'
        ORDER BY runs.id FOR UPDATE OF runs SKIP LOCKED
    ), renewed AS (
        UPDATE runs SET heartbeat_at = now() FROM held WHERE runs.id = held.id
        RETURNING runs.id, runs.cancel_requested_at IS NOT NULL AS cancel_requested
    )
    SELECT id, cancel_requested FROM renewed
    UNION ALL
    SELECT runs.id, runs.cancel_requested_at IS NOT NULL FROM runs JOIN given
      ON runs.id = given.run_id AND runs.lease_epoch = given.epoch
    WHERE runs.status = 'running' AND runs.id NOT IN (SELECT id FROM held)
""")


def heartbeat(session: Session, *, leases: list[tuple[str, int]]) -> dict[str, bool]:
    """Renew the leases of every attempt a process holds, (run id, epoch) each, in one
    statement (a row locked elsewhere is renewed at the next beat). Returns the runs still
    held, and whether each was asked to stop: a run missing from it has lost its lease (the
    attempt must stop)."""
    if not leases:
        return {}
    rows = session.execute(_HEARTBEAT, {"run_ids": [run_id for run_id, _ in leases],
                                        "epochs": [epoch for _, epoch in leases]})
    return {row.id: bool(row.cancel_requested) for row in rows}


def cancel_requested(session: Session, *, claim: Claim) -> bool:
    """Whether the run was asked to stop, read under its row's lock (so a cancel cannot
    slip in between this read and the caller's write)."""
    requested = session.scalar(
        select(Run.cancel_requested_at)
        .where(Run.id == claim.run_id, Run.lease_epoch == claim.epoch)
        .with_for_update())
    return requested is not None


def finish(session: Session, *, claim: Claim, outcome: Outcome) -> events.Event:
    """Write the attempt's outcome under its lease; return its status event.

    One statement updates the run and the attempt and appends the status event, and
    returns the run as it now stands with the endpoints to notify if it ended (for the
    deliveries, in the same transaction). Raises LeaseLost when the attempt no longer holds
    the run: a zombie's write is never applied.
    """
    retrying = outcome.status == RunStatus.RETRYING
    next_attempt_at = (datetime.now(UTC) + timedelta(seconds=outcome.retry_in_s or 0)
                       if retrying else None)
    data: dict[str, Any] = {"status": outcome.status.value, "attempt": claim.attempt}
    if outcome.status == RunStatus.SUCCEEDED:
        data["result"] = outcome.result
    elif outcome.error is not None:
        data["error"] = outcome.error
    if retrying:
        data["next_attempt_at"] = iso(next_attempt_at)
    error = outcome.error or {}
    terminal = outcome.status.is_terminal
    row = session.execute(_FINISH, {
        "run_id": claim.run_id, "epoch": claim.epoch, "attempt": claim.attempt,
        "status": outcome.status.value, "terminal": terminal, "retrying": retrying,
        "free": retrying and outcome.free,
        "result": None if outcome.result is None else json.dumps(outcome.result),
        "error": None if outcome.error is None else json.dumps(outcome.error),
        "next_attempt_at": next_attempt_at, "outcome": outcome.attempt_outcome.value,
        "error_type": error.get("type"), "error_message": error.get("message"),
        "traceback": outcome.traceback, "data": json.dumps(data),
        "event_type": f"run.{outcome.status.value}",
    }).one_or_none()
    if row is None:
        raise LeaseLost(f"run {claim.run_id}: lease epoch {claim.epoch} is no longer current")
    event = events.remember(session, events.Event(claim.run_id, row.last_seq, events.STATUS,
                                                  json.loads(json.dumps(data)), row.event_at))
    if terminal:  # its deliveries, in this transaction (to the endpoints read above)
        lifecycle.ended(session, run=Run.from_row(row), event=event, endpoints=row.targets)
    elif retrying:
        lifecycle.freed(session, run=Run.from_row(row))
    return event


def due_retries(session: Session, *, grace_s: float, limit: int) -> list[Dispatch]:
    """Move retrying runs that are due (and were not picked up) back to queued."""
    due = (
        select(Run.id)
        .where(Run.status == RunStatus.RETRYING,
               Run.next_attempt_at < func.now() - timedelta(seconds=grace_s))
        .order_by(Run.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    query = (
        update(Run)
        .where(Run.id.in_(due.scalar_subquery()))
        .values(status=RunStatus.QUEUED, next_attempt_at=None, dispatched_at=None,
                last_seq=Run.last_seq + 1)
        .returning(Run.id, Run.queue, Run.timeout_s, Run.agent, Run.attempt, Run.last_seq)
    )
    moved = session.execute(query).all()
    for row in moved:
        events.record(session, run_id=row.id, seq=row.last_seq, type=events.STATUS,
                      data={"status": RunStatus.QUEUED, "attempt": row.attempt})
    return [Dispatch.of(row) for row in moved]


@dataclass(frozen=True)
class Recovery:
    """What the sweeper did with a run whose attempt died."""

    run_id: str
    agent: str
    status: RunStatus
    outcome: AttemptOutcome
    dispatch: Dispatch | None


def recover_stale(
    session: Session, *, lease_timeout_s: float, hard_grace_s: float, limit: int
) -> list[Recovery]:
    """End attempts whose lease went stale: re-queue their runs, or dead-letter them.

    A stale lease means the process running the attempt is gone (SIGKILL, out of memory,
    a lost machine, a hard time limit). The attempt is recorded as ``crashed`` (or
    ``timed_out`` if it outlived its time limit); the epoch moves on, so if the old
    process is alive after all, its writes are refused.
    """
    stale = session.execute(
        select(Run.id, Run.agent, Run.attempt, Run.max_attempts, Run.free_attempts,
               Run.timeout_s, Run.queue, Run.cancel_requested_at, RunAttempt.started_at,
               func.now().label("now"))
        .join(RunAttempt, and_(RunAttempt.run_id == Run.id, RunAttempt.attempt == Run.attempt))
        .where(Run.status == RunStatus.RUNNING,
               Run.heartbeat_at < func.now() - timedelta(seconds=lease_timeout_s))
        .order_by(Run.heartbeat_at)
        .limit(limit)
        .with_for_update(of=Run, skip_locked=True)
    ).all()
    recovered = []
    for row in stale:
        overran = (row.now - row.started_at).total_seconds() > row.timeout_s + hard_grace_s
        outcome = AttemptOutcome.TIMED_OUT if overran else AttemptOutcome.CRASHED
        error = _lost_error(row.attempt, overran=overran)
        exhausted = row.attempt - row.free_attempts >= row.max_attempts
        status = RunStatus.DEAD_LETTERED if exhausted else RunStatus.QUEUED
        if row.cancel_requested_at is not None:  # asked to stop before its worker died
            status, error = RunStatus.CANCELLED, _cancelled_error(error)
        _abandon(session, run_id=row.id, attempt=row.attempt, status=status,
                 outcome=outcome, error=error)
        dispatch = Dispatch.of(row) \
            if status == RunStatus.QUEUED else None
        recovered.append(Recovery(row.id, row.agent, status, outcome, dispatch))
    return recovered


def requeue_interrupted(session: Session, *, run_ids: list[str], worker: str) -> list[Dispatch]:
    """Give back runs a stopping worker could not finish; the attempt does not count."""
    rows = session.execute(
        select(Run.id, Run.attempt, Run.queue, Run.timeout_s, Run.agent, Run.cancel_requested_at)
        .where(Run.id.in_(run_ids), Run.status == RunStatus.RUNNING, Run.worker == worker)
        .with_for_update()
    ).all()
    error = {"type": "WorkerShutdown",
             "message": f"worker {worker} stopped before the attempt finished; re-queued"}
    requeued = []
    for row in rows:
        if row.cancel_requested_at is not None:  # asked to stop: it ends here, cancelled
            _abandon(session, run_id=row.id, attempt=row.attempt, status=RunStatus.CANCELLED,
                     outcome=AttemptOutcome.CANCELLED, error=_cancelled_error(error))
            continue
        _abandon(session, run_id=row.id, attempt=row.attempt, status=RunStatus.QUEUED,
                 outcome=AttemptOutcome.CRASHED, error=error, free=True)
        requeued.append(Dispatch.of(row))
    return requeued


def _abandon(session: Session, *, run_id: str, attempt: int, status: RunStatus,
             outcome: AttemptOutcome, error: dict[str, str], free: bool = False) -> None:
    """End a running attempt that will not write its own outcome; move the lease on."""
    terminal = status.is_terminal
    seq = session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(status=status, lease_epoch=Run.lease_epoch + 1, error=error,
                dispatched_at=None, finished_at=func.now() if terminal else None,
                free_attempts=Run.free_attempts + (1 if free else 0),
                last_seq=Run.last_seq + 1)
        .returning(Run.last_seq)
    ).scalar_one()
    end_attempt(session, run_id=run_id, attempt=attempt, outcome=outcome, error=error)
    event = events.record(session, run_id=run_id, seq=seq, type=events.STATUS,
                          data={"status": status, "attempt": attempt, "error": error})
    if terminal:
        lifecycle.ended(session, run=session.get_one(Run, run_id, populate_existing=True),
                        event=event)


def end_attempt(session: Session, *, run_id: str, attempt: int, outcome: AttemptOutcome,
                error: dict[str, Any] | None, traceback: str | None = None) -> None:
    """Record how the run's attempt ended (the run's own row is the caller's)."""
    error = error or {}
    session.execute(
        update(RunAttempt)
        .where(RunAttempt.run_id == run_id, RunAttempt.attempt == attempt)
        .values(finished_at=func.now(), outcome=outcome, error_type=error.get("type"),
                error_message=error.get("message"), traceback=traceback)
    )


def _cancelled_error(lost: dict[str, str]) -> dict[str, str]:
    return {"type": "Cancelled",
            "message": f"cancelled; its attempt ended without stopping ({lost['message']})"}


def _lost_error(attempt: int, *, overran: bool) -> dict[str, str]:
    if overran:
        return {"type": "TimeLimitExceeded",
                "message": f"attempt {attempt} ran past its hard time limit and was killed"}
    return {"type": "WorkerLost",
            "message": f"the worker running attempt {attempt} stopped renewing its lease "
                       "(killed, out of memory, or lost)"}


def attempts(session: Session, *, run_id: str) -> list[RunAttempt]:
    query = select(RunAttempt).where(RunAttempt.run_id == run_id).order_by(RunAttempt.attempt)
    return list(session.scalars(query))
