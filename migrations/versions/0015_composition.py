"""composition: child runs, batches, forks

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 15:00:00

- runs: ``parent_id``, ``root_id``, ``child_name`` (unique per parent: a child is made once
  per parent and name), ``depth``, ``children`` (how many it started), ``detached`` (not
  cancelled with its parent), ``batch_id``, ``forked_from`` ({run_id, step}); and
  ``deferrals``: attempts deferred for want of room (an LLM rate limit), which are free.
- batches: one ``POST /v1/runs/batch``; ``completed_at`` once its last run ended.
- waitpoints: kind ``child`` (a parent waiting for a child's end).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("parent_id", sa.String(40)))
    op.add_column("runs", sa.Column("root_id", sa.String(40)))
    op.add_column("runs", sa.Column("child_name", sa.String(200)))
    op.add_column("runs", sa.Column("depth", sa.Integer(), server_default="0", nullable=False))
    op.add_column("runs", sa.Column("children", sa.Integer(), server_default="0",
                                    nullable=False))
    op.add_column("runs", sa.Column("detached", sa.Boolean(), server_default="false",
                                    nullable=False))
    op.add_column("runs", sa.Column("batch_id", sa.String(40)))
    op.add_column("runs", sa.Column("forked_from", JSONB()))
    op.add_column("runs", sa.Column("deferrals", sa.Integer(), server_default="0",
                                    nullable=False))
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_batches_tenant_id_id", "batches", ["tenant_id", "id"])
    op.drop_constraint("ck_waitpoints_kind", "waitpoints")
    op.execute("ALTER TABLE waitpoints ADD CONSTRAINT ck_waitpoints_kind "
               "CHECK (kind IN ('wait', 'sleep', 'child')) NOT VALID")
    op.execute("ALTER TABLE waitpoints VALIDATE CONSTRAINT ck_waitpoints_kind")
    with op.get_context().autocommit_block():  # runs stay writable while these build
        op.create_index("ix_runs_parent_id_child_name", "runs", ["parent_id", "child_name"],
                        unique=True, postgresql_concurrently=True,
                        postgresql_where=sa.text("parent_id IS NOT NULL"))
        op.create_index("ix_runs_parent_id_id", "runs", ["parent_id", "id"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("parent_id IS NOT NULL"))
        op.create_index("ix_runs_batch_id_id", "runs", ["batch_id", "id"],
                        postgresql_concurrently=True,
                        postgresql_where=sa.text("batch_id IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_runs_batch_id_id", table_name="runs")
    op.drop_index("ix_runs_parent_id_id", table_name="runs")
    op.drop_index("ix_runs_parent_id_child_name", table_name="runs")
    op.drop_constraint("ck_waitpoints_kind", "waitpoints")
    op.create_check_constraint("kind", "waitpoints", "kind IN ('wait', 'sleep')")
    op.drop_table("batches")
    for column in ("deferrals", "forked_from", "batch_id", "detached", "children", "depth", "child_name",
                   "root_id", "parent_id"):
        op.drop_column("runs", column)
