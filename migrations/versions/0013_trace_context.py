"""trace context: the W3C ``traceparent`` of the request that made a run

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 14:00:00

- runs: ``traceparent`` (with OpenTelemetry configured, the submit span's context: the
  worker's attempt spans and the webhook deliveries join that trace).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("traceparent", sa.String(55)))


def downgrade() -> None:
    op.drop_column("runs", "traceparent")
