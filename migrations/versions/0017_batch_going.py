"""a batch counts its runs still going

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 23:30:00

- batches.going: how many of the batch's runs have not ended. Each run's end takes one off
  in the statement that locks the batch's row, and the one that takes it to 0 completes the
  batch: an end no longer counts the batch's runs by status (which made a batch of n runs
  drain in O(n²)). Set here from the runs of the batches not complete yet.
- ix_batches_completed_at: retention deletes the batches that completed before its cutoff
  and have no run left, oldest first.
- ix_batches_going: the sweeper completes batches not complete whose runs have all ended
  (a count that missed an end: one made by a process older than the count), oldest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("going", sa.Integer(), nullable=False,
                                       server_default=sa.text("0")))
    op.execute("""
        UPDATE batches SET going = (
            SELECT count(*) FROM runs WHERE runs.batch_id = batches.id
            AND runs.status NOT IN ('succeeded', 'failed', 'cancelled', 'dead_lettered',
                                    'expired'))
        WHERE completed_at IS NULL
    """)
    op.create_index("ix_batches_completed_at", "batches", ["completed_at"],
                    postgresql_where=sa.text("completed_at IS NOT NULL"))
    op.create_index("ix_batches_going", "batches", ["created_at"],
                    postgresql_where=sa.text("completed_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_batches_going", table_name="batches")
    op.drop_index("ix_batches_completed_at", table_name="batches")
    op.drop_column("batches", "going")
