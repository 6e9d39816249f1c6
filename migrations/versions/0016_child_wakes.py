"""child runs' ends without their parent's lock

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 22:00:00

- waitpoints.wakes: a parent gathering many children keeps a waitpoint for each one still
  going (their deadlines) but is woken by the end of the one it chose to wait on, not by
  every child's: false for the others.
- runs.unreported: a child that ended and whose ``child.finished`` is not yet in its
  parent's log (written in batches under the parent's lock, not by each child's end), with
  a partial index by parent: only those children are in it.

Constant defaults: no table rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("waitpoints", sa.Column("wakes", sa.Boolean(), nullable=False,
                                          server_default=sa.true()))
    op.add_column("runs", sa.Column("unreported", sa.Boolean(), nullable=False,
                                    server_default=sa.false()))
    with op.get_context().autocommit_block():  # runs stay writable while it builds
        op.create_index("ix_runs_unreported", "runs", ["parent_id"],
                        postgresql_concurrently=True, postgresql_where=sa.text("unreported"))


def downgrade() -> None:
    op.drop_index("ix_runs_unreported", table_name="runs")
    op.drop_column("runs", "unreported")
    op.drop_column("waitpoints", "wakes")
