"""flow control: delayed and expiring runs, schedules

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 09:30:00

- runs: the statuses ``scheduled`` (a delayed run not yet due) and ``expired`` (not started
  within its ttl_s); ``start_at`` and ``expires_at``; ``schedule_id`` and ``scheduled_for``
  (a schedule's firing, unique per slot, so two beats never fire one slot twice); indexes of
  delayed runs by when they are due and of runs by when they expire.
- schedules: an agent run by cron or every N seconds, with its overlap policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("queued", "running", "retrying", "waiting", "succeeded", "failed", "cancelled",
           "dead_lettered")
_AFTER = ("scheduled", *_BEFORE, "expired")


def _status_check(statuses: Sequence[str]) -> None:
    # NOT VALID, then VALIDATE: the swap holds the table's lock for an instant only.
    values = ", ".join(f"'{value}'" for value in statuses)
    op.drop_constraint("ck_runs_status", "runs")
    op.execute(f"ALTER TABLE runs ADD CONSTRAINT ck_runs_status CHECK (status IN ({values})) "
               "NOT VALID")
    op.execute("ALTER TABLE runs VALIDATE CONSTRAINT ck_runs_status")


def upgrade() -> None:
    _status_check(_AFTER)
    op.add_column("runs", sa.Column("start_at", sa.DateTime(timezone=True)))
    op.add_column("runs", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("runs", sa.Column("schedule_id", sa.String(40)))
    op.add_column("runs", sa.Column("scheduled_for", sa.DateTime(timezone=True)))
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("input", JSONB(), nullable=False),
        sa.Column("metadata", JSONB(), server_default="{}", nullable=False),
        sa.Column("priority", sa.String(10), server_default="normal", nullable=False),
        sa.Column("cron", sa.String(200)),
        sa.Column("every_s", sa.Float()),
        sa.Column("timezone", sa.String(64), server_default="UTC", nullable=False),
        sa.Column("overlap", sa.String(20), server_default="skip", nullable=False),
        sa.Column("catchup_s", sa.Float(), server_default="60", nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True)),
        sa.Column("last_fired_for", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("(cron IS NULL) <> (every_s IS NULL)", name="cron_or_every"),
        sa.CheckConstraint("overlap IN ('skip', 'buffer_one', 'allow', 'cancel_other')",
                           name="overlap"),
    )
    op.create_index("ix_schedules_tenant_id_id", "schedules", ["tenant_id", sa.text("id DESC")])
    op.create_index("ix_schedules_due", "schedules", ["next_fire_at"],
                    postgresql_where=sa.text("deleted_at IS NULL AND NOT paused"))
    with op.get_context().autocommit_block():  # runs stay writable while these build
        op.create_index("ix_runs_scheduled_due", "runs", ["next_attempt_at"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("status = 'scheduled'"))
        op.create_index("ix_runs_expiring", "runs", ["expires_at"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("expires_at IS NOT NULL AND "
                                                 "started_at IS NULL"))
        op.create_index("ix_runs_schedule_id_scheduled_for", "runs",
                        ["schedule_id", "scheduled_for"], unique=True,
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("schedule_id IS NOT NULL"))


def downgrade() -> None:
    for name in ("ix_runs_schedule_id_scheduled_for", "ix_runs_expiring",
                 "ix_runs_scheduled_due"):
        op.drop_index(name, table_name="runs")
    op.drop_table("schedules")
    # A delayed run starts now; an expired one is recorded as cancelled.
    op.execute("UPDATE runs SET status = 'queued', next_attempt_at = NULL, "
               "dispatched_at = NULL WHERE status = 'scheduled'")
    op.execute("UPDATE runs SET status = 'cancelled' WHERE status = 'expired'")
    _status_check(_BEFORE)
    for column in ("scheduled_for", "schedule_id", "expires_at", "start_at"):
        op.drop_column("runs", column)
