"""concurrency keys: at most N running runs per tenant and key

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 10:00:00

- runs: ``concurrency_key`` and ``concurrency_max``; indexes of the runs running and of the
  runs queued, by tenant and key (a claim counts the first; an end picks from the second).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("concurrency_key", sa.String(300)))
    op.add_column("runs", sa.Column("concurrency_max", sa.Integer()))
    with op.get_context().autocommit_block():  # runs stay writable while these build
        op.create_index("ix_runs_concurrency_running", "runs",
                        ["tenant_id", "concurrency_key"], postgresql_concurrently=True,
                        postgresql_where=sa.text("status = 'running' AND "
                                                 "concurrency_key IS NOT NULL"))
        op.create_index("ix_runs_concurrency_queued", "runs",
                        ["tenant_id", "concurrency_key", "id"], postgresql_concurrently=True,
                        postgresql_where=sa.text("status = 'queued' AND "
                                                 "concurrency_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_concurrency_queued", table_name="runs")
    op.drop_index("ix_runs_concurrency_running", table_name="runs")
    op.drop_column("runs", "concurrency_max")
    op.drop_column("runs", "concurrency_key")
