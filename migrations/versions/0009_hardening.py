"""caps taken atomically, idempotency keys hashed and leased

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:00:00

- tenants: what worker.admission counts, so a tenant's caps hold under concurrent
  submissions without counting its runs on every one.
- deliveries: agentq_delivery_holds, which counts a tenant's deliveries being sent one caller
  at a time; an index of those, which every hold counts,
  and one of those waiting for a send task, which every attempt's end hands on to.
- idempotency_keys: the key is stored as its SHA-256 (existing keys are hashed in place;
  a row whose key already equals another's hash, which only a client's trick can make, is
  dropped first), answers kept so far lose the secrets they showed (``key``, ``secret``),
  and a request in flight holds its key only until ``held_until``, named by ``holder``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A tenant's deliveries being sent, counted one caller at a time: the advisory lock is held
# to the end of the caller's transaction, and a VOLATILE function's query takes its snapshot
# after it (so it sees what the previous holder committed). worker/webhooks.py's _HOLD.
_HOLDS_FUNCTION = """
    CREATE FUNCTION agentq_delivery_holds(tenant text) RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(73001, hashtext(tenant));
        RETURN (SELECT count(*) FROM deliveries
                WHERE tenant_id = tenant AND locked_until > now()
                  AND status IN ('pending', 'retrying'));
    END $$
"""


def upgrade() -> None:
    op.add_column("tenants", sa.Column("admitted_waiting", sa.Integer(), server_default="0",
                                       nullable=False))
    op.add_column("tenants", sa.Column("admitted_active", sa.Integer(), server_default="0",
                                       nullable=False))
    op.add_column("tenants", sa.Column("admission_counted_at", sa.DateTime(timezone=True)))
    op.add_column("idempotency_keys", sa.Column("held_until", sa.DateTime(timezone=True)))
    op.add_column("idempotency_keys", sa.Column("holder", sa.String(32)))
    op.execute("""
        DELETE FROM idempotency_keys AS taken USING idempotency_keys AS other
        WHERE taken.tenant_id = other.tenant_id
          AND taken.key = encode(sha256(convert_to(other.key, 'UTF8')), 'hex')
    """)
    op.execute("UPDATE idempotency_keys SET key = encode(sha256(convert_to(key, 'UTF8')), 'hex')")
    op.execute("""
        UPDATE idempotency_keys SET response = jsonb_set(response, '{key}', 'null')
        WHERE jsonb_typeof(response) = 'object' AND response ? 'key'
    """)
    op.execute("""
        UPDATE idempotency_keys SET response = jsonb_set(response, '{secret}', 'null')
        WHERE jsonb_typeof(response) = 'object' AND response ? 'secret'
    """)
    op.execute(_HOLDS_FUNCTION)
    with op.get_context().autocommit_block():  # deliveries stay writable while it builds
        op.create_index("ix_deliveries_held", "deliveries", ["tenant_id"],
                        postgresql_concurrently=True, postgresql_where=sa.text(
                            "locked_until IS NOT NULL AND status IN ('pending', 'retrying')"))
        op.create_index("ix_deliveries_waiting", "deliveries", ["tenant_id", "next_attempt_at"],
                        postgresql_concurrently=True, postgresql_where=sa.text(
                            "dispatched_at IS NULL AND status IN ('pending', 'retrying')"))


def downgrade() -> None:
    op.execute("DROP FUNCTION agentq_delivery_holds(text)")
    op.drop_index("ix_deliveries_waiting", table_name="deliveries", postgresql_where=sa.text(
        "dispatched_at IS NULL AND status IN ('pending', 'retrying')"))
    op.drop_index("ix_deliveries_held", table_name="deliveries", postgresql_where=sa.text(
        "locked_until IS NOT NULL AND status IN ('pending', 'retrying')"))
    # Hashed keys cannot be turned back: their repeats are answered as new requests.
    op.execute("DELETE FROM idempotency_keys")
    op.drop_column("idempotency_keys", "holder")
    op.drop_column("idempotency_keys", "held_until")
    op.drop_column("tenants", "admission_counted_at")
    op.drop_column("tenants", "admitted_active")
    op.drop_column("tenants", "admitted_waiting")
