"""waits: the waiting run status, suspended attempts and waitpoints

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 19:30:00

- runs: the status ``waiting`` (a run suspended at ``ctx.wait_for`` or ``ctx.sleep``), and an
  index of waiting runs by when their first waitpoint is due (the sweeper wakes them).
- run_attempts: the outcome ``suspended``.
- waitpoints: one per run and name, completed once or timed out at its deadline.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RUN_STATUSES = ("queued", "running", "retrying", "succeeded", "failed", "cancelled",
                 "dead_lettered")
_OUTCOMES = ("succeeded", "failed", "timed_out", "crashed", "cancelled")


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def upgrade() -> None:
    # NOT VALID, then VALIDATE: the swap holds the table's lock for an instant only.
    op.drop_constraint("ck_runs_status", "runs")
    op.execute("ALTER TABLE runs ADD CONSTRAINT ck_runs_status CHECK (status IN ("
               f"{_in(_RUN_STATUSES[:3])}, 'waiting', {_in(_RUN_STATUSES[3:])})) NOT VALID")
    op.execute("ALTER TABLE runs VALIDATE CONSTRAINT ck_runs_status")
    op.drop_constraint("ck_run_attempts_outcome", "run_attempts")
    op.execute("ALTER TABLE run_attempts ADD CONSTRAINT ck_run_attempts_outcome CHECK ("
               f"outcome IS NULL OR outcome IN ({_in(_OUTCOMES)}, 'suspended')) NOT VALID")
    op.execute("ALTER TABLE run_attempts VALIDATE CONSTRAINT ck_run_attempts_outcome")
    op.create_table(
        "waitpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("prompt", sa.Text()),
        sa.Column("schema", JSONB()),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("data", JSONB()),
        sa.Column("completed_by", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('waiting', 'completed', 'timed_out', 'cancelled')",
                           name="status"),
        sa.CheckConstraint("kind IN ('wait', 'sleep')", name="kind"),
    )
    op.create_index("ix_waitpoints_run_id_name", "waitpoints", ["run_id", "name"], unique=True)
    op.create_index("ix_waitpoints_tenant_id", "waitpoints", ["tenant_id"])
    with op.get_context().autocommit_block():  # runs stay writable while it builds
        op.create_index("ix_runs_waiting_due", "runs", ["next_attempt_at"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("status = 'waiting'"))


def downgrade() -> None:
    op.drop_index("ix_runs_waiting_due", table_name="runs",
                  postgresql_where=sa.text("status = 'waiting'"))
    op.drop_table("waitpoints")
    # Waiting runs cannot stay waiting without their waitpoints: they are cancelled.
    op.execute("UPDATE runs SET status = 'cancelled', finished_at = now() "
               "WHERE status = 'waiting'")
    op.execute("UPDATE run_attempts SET outcome = 'cancelled' WHERE outcome = 'suspended'")
    op.drop_constraint("ck_run_attempts_outcome", "run_attempts")
    op.create_check_constraint("outcome", "run_attempts",
                               f"outcome IS NULL OR outcome IN ({_in(_OUTCOMES)})")
    op.drop_constraint("ck_runs_status", "runs")
    op.create_check_constraint("status", "runs", f"status IN ({_in(_RUN_STATUSES)})")
