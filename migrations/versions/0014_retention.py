"""retention: indexes to find what ended long ago, and a run's inbound events

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 10:00:00

- runs: the ended runs by ``finished_at`` and the dismissed dead letters by
  ``discarded_at`` (then ``id``: a batch goes on from where the last one stopped), so that
  the sweeper's retention reads the oldest first and stops.
- inbound_events: by ``run_id`` (deleting a run sets its inbound events' ``run_id`` to
  NULL; without an index each deleted run reads the whole table) and by ``received_at``
  (deduplication records are kept as long as runs are).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = "status IN ('succeeded', 'failed', 'cancelled', 'expired')"


def upgrade() -> None:
    with op.get_context().autocommit_block():  # both tables stay writable while these build
        op.create_index("ix_runs_ended_finished_at", "runs", ["finished_at", "id"],
                        postgresql_concurrently=True, postgresql_where=sa.text(ENDED))
        op.create_index("ix_runs_discarded_at", "runs", ["discarded_at", "id"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("discarded_at IS NOT NULL"))
        op.create_index("ix_inbound_events_run_id", "inbound_events", ["run_id"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("run_id IS NOT NULL"))
        op.create_index("ix_inbound_events_received_at", "inbound_events", ["received_at"],
                        postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index("ix_inbound_events_received_at", table_name="inbound_events")
    op.drop_index("ix_inbound_events_run_id", table_name="inbound_events")
    op.drop_index("ix_runs_discarded_at", table_name="runs")
    op.drop_index("ix_runs_ended_finished_at", table_name="runs")
