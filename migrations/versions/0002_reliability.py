"""reliability: free attempts, discarded dead letters, sweeper indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 03:00:54.080763
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "runs", sa.Column("free_attempts", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("runs", sa.Column("discarded_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_runs_queued_queue",
        "runs",
        ["queue", "dispatched_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index(
        "ix_runs_retrying_due",
        "runs",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'retrying'"),
    )
    op.create_index(
        "ix_runs_running_heartbeat",
        "runs",
        ["heartbeat_at"],
        unique=False,
        postgresql_where=sa.text("status = 'running'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_runs_running_heartbeat",
        table_name="runs",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_index(
        "ix_runs_retrying_due", table_name="runs", postgresql_where=sa.text("status = 'retrying'")
    )
    op.drop_index(
        "ix_runs_queued_queue", table_name="runs", postgresql_where=sa.text("status = 'queued'")
    )
    op.drop_column("runs", "discarded_at")
    op.drop_column("runs", "free_attempts")
