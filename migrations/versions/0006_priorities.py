"""priorities

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 04:32:54.284536
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The normal-priority queue was called "runs"; waiting runs move with it.
    op.execute("UPDATE runs SET queue = 'runs.normal' WHERE queue = 'runs'")
    op.add_column(
        "runs", sa.Column("priority", sa.String(length=10), server_default="normal", nullable=False)
    )


def downgrade() -> None:
    op.execute("UPDATE runs SET queue = 'runs' WHERE queue LIKE 'runs.%'")
    op.drop_column("runs", "priority")
