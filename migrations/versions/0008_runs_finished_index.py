"""an index for the runs a tenant ended lately

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 02:55:00

The dashboard's status strip counts the runs a tenant ended in the last minute; without
this index Postgres reads every ended run of the tenant to find them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_runs_tenant_id_finished_at", "runs", ["tenant_id", "finished_at"],
                    postgresql_where=sa.text("finished_at IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_tenant_id_finished_at", table_name="runs",
                  postgresql_where=sa.text("finished_at IS NOT NULL"))
