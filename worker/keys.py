"""Tenants and their API keys. A key is shown once; only its SHA-256 hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from worker.models import ApiKey, Tenant, new_id

KEY_PREFIX = "aq_"
DEFAULT_SCOPES = ("runs:read", "runs:write")
_LAST_USED_RESOLUTION = timedelta(minutes=5)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped to, and what the key may do."""

    tenant_id: str
    key_id: str
    scopes: frozenset[str]


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_tenant(session: Session, *, name: str) -> Tenant:
    """Return the tenant called ``name``, creating it if needed."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("tn"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(
    session: Session, *, tenant: Tenant, name: str = "", scopes: tuple[str, ...] = DEFAULT_SCOPES
) -> str:
    """Create a key for ``tenant`` and return it; it cannot be read back later."""
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            id=new_id("key"),
            tenant_id=tenant.id,
            name=name,
            prefix=token[:12],
            key_hash=hash_key(token),
            scopes=list(scopes),
        )
    )
    return token


def authenticate(session: Session, *, token: str) -> Principal | None:
    """Return the principal for a live key, or None. Lookup is by hash, never by the key."""
    key = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(token), ApiKey.revoked_at.is_(None))
    )
    if key is None:
        return None
    now = datetime.now(UTC)
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))
