"""The tables: Postgres is the single source of truth for every run and everything about it."""

from __future__ import annotations

import enum
import secrets
import time
from datetime import date, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str) -> str:
    """Return an opaque id that sorts by creation time: 48 bits of ms, 80 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_CROCKFORD[digit])
    return f"{prefix}_{''.join(reversed(chars))}"


class RunStatus(enum.StrEnum):
    """Where a run stands in its lifecycle."""

    # Delayed (start_at, delay_s): no worker sees it before its time (next_attempt_at).
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    # Suspended at ctx.wait_for or ctx.sleep: no worker holds it until a waitpoint of its
    # is completed or due (worker.runs.waits).
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    # Not started within its ttl_s: it never will be.
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD_LETTERED,
     RunStatus.EXPIRED}
)


class AttemptOutcome(enum.StrEnum):
    """How one attempt of a run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    CANCELLED = "cancelled"
    # The agent waits (ctx.wait_for, ctx.sleep): the attempt gave its slot back, and does
    # not count toward max_attempts.
    SUSPENDED = "suspended"


class WaitpointStatus(enum.StrEnum):
    """Where a waitpoint (``ctx.wait_for``, ``ctx.sleep``) stands."""

    WAITING = "waiting"
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


def _values(kind: type[enum.StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in kind)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        Any: JSONB,
    }


class Tenant(Base):
    """An isolated customer: every other row belongs to exactly one tenant."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Signs deliveries to runs' own webhook_url (endpoints have secrets of their own).
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    webhook_previous_secret: Mapped[str | None] = mapped_column(String(100))
    webhook_previous_expires_at: Mapped[datetime | None]
    # Submissions under the tenant's caps (worker.admission): its waiting and active runs as
    # counted at admission_counted_at, plus every run admitted since (never too low).
    admitted_waiting: Mapped[int] = mapped_column(Integer, server_default="0")
    admitted_active: Mapped[int] = mapped_column(Integer, server_default="0")
    admission_counted_at: Mapped[datetime | None]


class ApiKey(Base):
    """A tenant's API key; only its SHA-256 hash and a display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), server_default="")
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Run(Base):
    """One request to run an agent, from submission to its terminal state."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_values(RunStatus)})", name="status"),
        Index("ix_runs_tenant_id_id", "tenant_id", text("id DESC")),
        Index("ix_runs_tenant_id_status_id", "tenant_id", "status", text("id DESC")),
        Index("ix_runs_tenant_id_session_id_id", "tenant_id", "session_id", "id",
              postgresql_where=text("session_id IS NOT NULL")),
        Index(
            "ix_runs_running_heartbeat",
            "heartbeat_at",
            postgresql_where=text("status = 'running'"),
        ),
        Index(
            "ix_runs_retrying_due",
            "next_attempt_at",
            postgresql_where=text("status = 'retrying'"),
        ),
        Index(  # waiting runs, by when the first of their waitpoints is due
            "ix_runs_waiting_due",
            "next_attempt_at",
            postgresql_where=text("status = 'waiting'"),
        ),
        Index(  # delayed runs, by when they may start
            "ix_runs_scheduled_due",
            "next_attempt_at",
            postgresql_where=text("status = 'scheduled'"),
        ),
        Index(  # runs that expire unless started first (ttl_s)
            "ix_runs_expiring",
            "expires_at",
            postgresql_where=text("expires_at IS NOT NULL AND started_at IS NULL"),
        ),
        Index(  # a claim counts its key's runs running
            "ix_runs_concurrency_running",
            "tenant_id",
            "concurrency_key",
            postgresql_where=text("status = 'running' AND concurrency_key IS NOT NULL"),
        ),
        Index(  # an end picks its key's next runs
            "ix_runs_concurrency_queued",
            "tenant_id",
            "concurrency_key",
            "id",
            postgresql_where=text("status = 'queued' AND concurrency_key IS NOT NULL"),
        ),
        Index(  # a schedule fires once per slot, whatever the number of beats
            "ix_runs_schedule_id_scheduled_for",
            "schedule_id",
            "scheduled_for",
            unique=True,
            postgresql_where=text("schedule_id IS NOT NULL"),
        ),
        Index(  # a child is made once per parent and name (worker.runs.children)
            "ix_runs_parent_id_child_name",
            "parent_id",
            "child_name",
            unique=True,
            postgresql_where=text("parent_id IS NOT NULL"),
        ),
        Index("ix_runs_parent_id_id", "parent_id", "id",
              postgresql_where=text("parent_id IS NOT NULL")),
        Index("ix_runs_batch_id_id", "batch_id", "id",
              postgresql_where=text("batch_id IS NOT NULL")),
        Index("ix_runs_unreported", "parent_id", postgresql_where=text("unreported")),
        Index(
            "ix_runs_queued_queue",
            "queue",
            "dispatched_at",
            postgresql_where=text("status = 'queued'"),
        ),
        Index(  # the runs a tenant ended lately (the dashboard's status strip)
            "ix_runs_tenant_id_finished_at",
            "tenant_id",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
        Index(
            "ix_runs_undispatched",
            "created_at",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
        Index(  # retention: the ended runs, oldest first (worker.runs.retention)
            "ix_runs_ended_finished_at",
            "finished_at",
            "id",
            postgresql_where=text("status IN ('succeeded', 'failed', 'cancelled', 'expired')"),
        ),
        Index(  # retention: the dismissed dead letters, oldest first
            "ix_runs_discarded_at",
            "discarded_at",
            "id",
            postgresql_where=text("discarded_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    agent: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    input: Mapped[Any]
    result: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    max_attempts: Mapped[int]
    # Attempts that do not count toward max_attempts: those before a replay, and those a
    # worker's shutdown interrupted.
    free_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    timeout_s: Mapped[int]
    session_id: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Where a Slack-style answer goes when the run ends (e.g. Slack's response_url).
    reply_url: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(100))
    priority: Mapped[str] = mapped_column(String(10), server_default="normal")
    # The lease: a claim bumps the epoch; every later write of that attempt names it.
    lease_epoch: Mapped[int] = mapped_column(Integer, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    # The dispatch outbox: NULL until the message reached the broker.
    dispatched_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    # Set by `agentq dlq purge`: the dead letter is dismissed, its history kept.
    discarded_at: Mapped[datetime | None]
    # The run's event log sequence: the seq of its newest event.
    last_seq: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime | None]
    # When a delayed run may start (start_at, delay_s); it ends expired if not started by
    # expires_at (ttl_s, counted from when it may start).
    start_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    # A schedule's firing: which schedule, and the slot it fired for.
    schedule_id: Mapped[str | None] = mapped_column(String(40))
    scheduled_for: Mapped[datetime | None]
    # At most concurrency_max of the tenant's runs with this key run at once.
    concurrency_key: Mapped[str | None] = mapped_column(String(300))
    concurrency_max: Mapped[int | None]
    # The submit span's W3C traceparent (OpenTelemetry configured): attempts and deliveries
    # join its trace (worker.base.tracing).
    traceparent: Mapped[str | None] = mapped_column(String(55))
    # The tree (worker.runs.children): the run that started it (with ctx.start) and the
    # tree's first run; its name under its parent; how deep, how many it started; whether
    # it outlives its parent's cancel. And the batch it came in, the run it was forked from.
    parent_id: Mapped[str | None] = mapped_column(String(40))
    root_id: Mapped[str | None] = mapped_column(String(40))
    child_name: Mapped[str | None] = mapped_column(String(200))
    depth: Mapped[int] = mapped_column(Integer, server_default="0")
    children: Mapped[int] = mapped_column(Integer, server_default="0")
    detached: Mapped[bool] = mapped_column(server_default=false())
    # Ended, and its child.finished not yet in its parent's log (worker.runs.tree.report).
    unreported: Mapped[bool] = mapped_column(server_default=false())
    batch_id: Mapped[str | None] = mapped_column(String(40))
    forked_from: Mapped[dict[str, Any] | None]
    # Attempts deferred for want of room (an LLM rate limit): free, up to a bound.
    deferrals: Mapped[int] = mapped_column(Integer, server_default="0")
    # What the run's LLM calls cost, summed as each call's step is stored.
    llm_calls: Mapped[int] = mapped_column(Integer, server_default="0")
    input_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, server_default="0")

    @classmethod
    def from_row(cls, row: Any) -> Run:
        """A Run, for reading, from a row holding the table's columns (by column name).

        Made as SQLAlchemy makes the objects it loads, without the constructor's event per
        attribute: a tenth of the cost (4 µs, not 41), and this is on the submit path.
        """
        run: Run = cls.__mapper__.class_manager.new_instance()
        run.__dict__.update({key: getattr(row, column) for key, column in _run_columns()})
        return run


@cache
def _run_columns() -> list[tuple[str, str]]:
    """(attribute, column name) for each of Run's columns."""
    return [(attribute.key, attribute.columns[0].name)
            for attribute in Run.__mapper__.column_attrs]


class RunAttempt(Base):
    """One execution of a run by one worker under one lease epoch."""

    __tablename__ = "run_attempts"
    __table_args__ = (
        CheckConstraint(
            f"outcome IS NULL OR outcome IN ({_values(AttemptOutcome)})", name="outcome"
        ),
    )

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    lease_epoch: Mapped[int]
    worker: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(20))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)


class RunStep(Base):
    """A durable step's result: later attempts of the run get it back instead of running
    the step again."""

    __tablename__ = "run_steps"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # The step's arguments, hashed: reusing a name with other arguments is an error.
    fingerprint: Mapped[str] = mapped_column(String(64))
    result: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True))
    attempt: Mapped[int]  # the attempt that ran it
    duration_ms: Mapped[int]
    # An LLM call's {model, input_tokens, output_tokens, latency_ms}; NULL for other steps.
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    finished_at: Mapped[datetime] = mapped_column(server_default=func.clock_timestamp())


class Waitpoint(Base):
    """A point where a run waits for data (``ctx.wait_for``) or for time (``ctx.sleep``).

    Made by the attempt that reaches it, under its lease; completed once (by the API, a
    signed URL or a Slack button: ``status = 'waiting'`` in the ``UPDATE``), or timed out
    at ``deadline``. (A ``child`` one, completed by its child's end, waits again if the
    child is replayed and its parent waits for it again: ``worker.runs.children``.) The
    signed URL's token is not stored: it is derived from the id and the deadline with the
    server's key (``worker.runs.waits.token``).
    """

    __tablename__ = "waitpoints"
    __table_args__ = (
        CheckConstraint(f"status IN ({_values(WaitpointStatus)})", name="status"),
        CheckConstraint("kind IN ('wait', 'sleep', 'child')", name="kind"),
        Index("ix_waitpoints_run_id_name", "run_id", "name", unique=True),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))
    prompt: Mapped[str | None] = mapped_column(Text)
    # A JSON Schema the completing data must match (NULL: any JSON object).
    schema: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    deadline: Mapped[datetime]
    attempt: Mapped[int]  # the attempt that reached it
    # A child waitpoint whose completion queues its waiting parent again (false: one of the
    # children a gather does not wait on now; its end is read at the next look).
    wakes: Mapped[bool] = mapped_column(server_default=true())
    data: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True))
    # Who completed it: "api" (and the key's id), "url", "slack:<user>", "timeout".
    completed_by: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    completed_at: Mapped[datetime | None]


class Batch(Base):
    """Runs submitted together (``POST /v1/runs/batch``)."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_tenant_id_id", "tenant_id", "id"),
        Index("ix_batches_completed_at", "completed_at",  # retention, oldest first
              postgresql_where=text("completed_at IS NOT NULL")),
        Index("ix_batches_going", "created_at",  # the sweeper's batch_end.complete_forgotten
              postgresql_where=text("completed_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    size: Mapped[int] = mapped_column(Integer)
    # Its runs not ended yet: each end takes one off, the one that takes it to 0 completes it.
    going: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    completed_at: Mapped[datetime | None]  # its last run ended (batch.completed sent)


class Schedule(Base):
    """An agent run by cron (in ``timezone``) or every ``every_s`` seconds, fired by beat.

    ``next_fire_at`` is the next slot. Firing a slot creates one run with ``schedule_id``
    and ``scheduled_for`` (unique together: two beats never fire a slot twice); slots
    missed by more than ``catchup_s`` (beat was down) are skipped. ``overlap`` says what a
    slot does while an earlier run is going (``worker.runs.schedules``).
    """

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint("(cron IS NULL) <> (every_s IS NULL)", name="cron_or_every"),
        CheckConstraint("overlap IN ('skip', 'buffer_one', 'allow', 'cancel_other')",
                        name="overlap"),
        Index("ix_schedules_tenant_id_id", "tenant_id", text("id DESC")),
        Index("ix_schedules_due", "next_fire_at",
              postgresql_where=text("deleted_at IS NULL AND NOT paused")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    agent: Mapped[str] = mapped_column(String(200))
    input: Mapped[Any]
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, server_default="{}")
    priority: Mapped[str] = mapped_column(String(10), server_default="normal")
    cron: Mapped[str | None] = mapped_column(String(200))
    every_s: Mapped[float | None]
    timezone: Mapped[str] = mapped_column(String(64), server_default="UTC")
    overlap: Mapped[str] = mapped_column(String(20), server_default="skip")
    catchup_s: Mapped[float] = mapped_column(server_default="60")
    paused: Mapped[bool] = mapped_column(server_default=false())
    next_fire_at: Mapped[datetime | None]
    last_fired_for: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None]


class TenantUsage(Base):
    """A tenant's LLM use on one day (UTC), for its daily token budget and GET /v1/usage."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    llm_calls: Mapped[int] = mapped_column(Integer, server_default="0")
    input_tokens: Mapped[int] = mapped_column(Integer, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, server_default="0")


class RunEvent(Base):
    """One entry of a run's event log; ``seq`` is gap-free per run."""

    __tablename__ = "run_events"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]]
    at: Mapped[datetime] = mapped_column(server_default=func.clock_timestamp())


class AgentSession(Base):
    """A conversation's state, isolated by tenant and session id."""

    __tablename__ = "sessions"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default="{}")
    version: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class DeliveryStatus(enum.StrEnum):
    """Where an outbound webhook delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD = "dead"


class IdempotencyKey(Base):
    """A POST's ``Idempotency-Key``: the first request's answer, replayed to its repeats."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)  # SHA-256 of the key
    fingerprint: Mapped[str] = mapped_column(String(64))  # method, path and body, hashed
    # NULL while the first request is in flight.
    status_code: Mapped[int | None]
    # The request in flight holds the key until then (a repeat may take it over after),
    # and names itself by ``holder`` in every later write, so a late one changes nothing.
    held_until: Mapped[datetime | None]
    holder: Mapped[str | None] = mapped_column(String(32))
    response: Mapped[Any | None] = mapped_column(JSONB(none_as_null=True))
    run_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(index=True)


class WebhookEndpoint(Base):
    """A URL of the tenant's that hears about its runs' ends, with its signing secret."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(String(40)))
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # Set when every delivery has failed since then; cleared by a success.
    failing_since: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None]


class Delivery(Base):
    """One message to one URL about one run's end: the outbox row of the notifier."""

    __tablename__ = "deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({_values(DeliveryStatus)})", name="status"),
        Index("ix_deliveries_tenant_id_id", "tenant_id", text("id DESC")),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'retrying')"),
        ),
        Index(  # each tenant's deliveries being sent (AGENTQ_WEBHOOK_TENANT_CONCURRENCY)
            "ix_deliveries_held",
            "tenant_id",
            postgresql_where=text("locked_until IS NOT NULL AND status IN ('pending', 'retrying')"),
        ),
        Index(  # each tenant's deliveries waiting for a send task, oldest first
            "ix_deliveries_waiting",
            "tenant_id",
            "next_attempt_at",
            postgresql_where=text("dispatched_at IS NULL AND status IN ('pending', 'retrying')"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    endpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="SET NULL"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(40))
    # "standard": a Standard Webhooks message, signed; "slack": {text} to a response_url.
    format: Mapped[str] = mapped_column(String(20), server_default="standard")
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    # Attempts made before the current round of the retry schedule (a retry by hand
    # starts a new round).
    schedule_base: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    # The outbox: NULL until the send task reached the broker.
    dispatched_at: Mapped[datetime | None]
    # A sender holds the delivery until then, so two never send it at once.
    locked_until: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """One HTTP request of a delivery, kept whatever its outcome."""

    __tablename__ = "delivery_attempts"

    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime]
    latency_ms: Mapped[float | None]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    response_body: Mapped[str | None] = mapped_column(Text)


class HookSource(Base):
    """A third-party sender (GitHub, Slack, Stripe, Standard Webhooks) whose signed events
    start runs of one agent."""

    __tablename__ = "hook_sources"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(20))
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_expires_at: Mapped[datetime | None]
    agent: Mapped[str] = mapped_column(String(200))
    events: Mapped[list[str] | None] = mapped_column(ARRAY(String(100)))
    reply_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None]


class InboundEvent(Base):
    """A delivery a hook source received, once per delivery id (the deduplication key)."""

    __tablename__ = "inbound_events"
    __table_args__ = (
        # A run's delete sets its inbound events' run_id to NULL: found by this index, not
        # by reading the table; retention deletes them oldest first (worker.runs.retention).
        Index("ix_inbound_events_run_id", "run_id", postgresql_where=text("run_id IS NOT NULL")),
        Index("ix_inbound_events_received_at", "received_at"),
    )

    source_id: Mapped[str] = mapped_column(
        ForeignKey("hook_sources.id", ondelete="CASCADE"), primary_key=True
    )
    delivery_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(100))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    ignored: Mapped[bool]
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
