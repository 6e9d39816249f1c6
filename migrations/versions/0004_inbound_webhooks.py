"""inbound webhooks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 04:02:59.787671
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hook_sources",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.String(length=100)), nullable=True),
        sa.Column("reply_url", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_hook_sources_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hook_sources")),
    )
    op.create_index(op.f("ix_hook_sources_tenant_id"), "hook_sources", ["tenant_id"], unique=False)
    op.create_table(
        "inbound_events",
        sa.Column("source_id", sa.String(length=40), nullable=False),
        sa.Column("delivery_id", sa.String(length=200), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=True),
        sa.Column("ignored", sa.Boolean(), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_inbound_events_run_id_runs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["hook_sources.id"],
            name=op.f("fk_inbound_events_source_id_hook_sources"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_inbound_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("source_id", "delivery_id", name=op.f("pk_inbound_events")),
    )
    op.add_column(
        "deliveries",
        sa.Column("format", sa.String(length=20), server_default="standard", nullable=False),
    )
    op.add_column("runs", sa.Column("reply_url", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "reply_url")
    op.drop_column("deliveries", "format")
    op.drop_table("inbound_events")
    op.drop_index(op.f("ix_hook_sources_tenant_id"), table_name="hook_sources")
    op.drop_table("hook_sources")
