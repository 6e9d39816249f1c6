"""Tenants and their API keys. A key is shown once; only its SHA-256 hash is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from worker.base.errors import InvalidRequest, NotFound
from worker.base.models import ApiKey, Tenant, new_id
from worker.base.settings import Settings

KEY_PREFIX = "aq_"
READ, WRITE, ADMIN = "runs:read", "runs:write", "admin"
SCOPES = (READ, WRITE, ADMIN)
DEFAULT_SCOPES = SCOPES  # keys made by an operator can do everything unless narrowed
JWT_DEFAULT_SCOPES = (READ, WRITE)
JWT_PREFIX = "jwt:"
_LAST_USED_RESOLUTION = timedelta(minutes=5)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every query is scoped to, and what the key may do.

    ``key_id`` names the credential (an API key's id, or ``jwt:<tenant>:<subject hash>``):
    it is the rate limit's bucket, and what a revocation ends. A JWT's ``expires_at`` (Unix
    time) ends the streams and sockets it opened.
    """

    tenant_id: str
    key_id: str
    scopes: frozenset[str]
    expires_at: float | None = None

    @property
    def is_api_key(self) -> bool:
        return not self.key_id.startswith(JWT_PREFIX)


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
    session: Session, *, tenant: Tenant, name: str = "", scopes: Sequence[str] = DEFAULT_SCOPES
) -> str:
    """Create a key for ``tenant`` and return it; it cannot be read back later."""
    return issue_key(session, tenant_id=tenant.id, name=name, scopes=scopes)[0]


def issue_key(session: Session, *, tenant_id: str, name: str,
              scopes: Sequence[str]) -> tuple[str, ApiKey]:
    """Create a key; return it (shown once) and its stored record (hash and prefix only)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidRequest("unknown scopes", [{
            "field": "scopes", "message": f"{', '.join(unknown)} unknown; "
                                          f"choose from {', '.join(SCOPES)}"}])
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(id=new_id("key"), tenant_id=tenant_id, name=name, prefix=token[:12],
                    key_hash=hash_key(token), scopes=sorted(set(scopes)))
    session.add(record)
    session.flush()
    return token, record


def keys_of(session: Session, *, tenant_id: str) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.id)
    return list(session.scalars(query))


def revoke(session: Session, *, tenant_id: str | None, key_id: str) -> ApiKey:
    """Revoke a key by id or display prefix (in a tenant, or any tenant for an operator)."""
    query = select(ApiKey).where(or_(ApiKey.id == key_id, ApiKey.prefix == key_id))
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    record = session.scalar(query)
    if record is None:
        raise NotFound("API key", key_id)
    if record.revoked_at is None:
        record.revoked_at = datetime.now(UTC)
    return record


def authenticate_jwt(session: Session, *, token: str, settings: Settings) -> Principal | None:
    """The principal of a valid JWT from the product's own front end, or None.

    The key is chosen by the token's algorithm and only from what is configured (HS256:
    the shared secret, RS256: the public key), so neither ``none`` nor a key confusion
    can pass; issuer, audience and expiry are checked; the tenant comes from a claim.
    """
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        return None
    key = {"HS256": settings.jwt_secret, "RS256": settings.jwt_public_key}.get(algorithm or "")
    if not key:
        return None
    try:
        claims = jwt.decode(token, key, algorithms=[algorithm or ""],
                            audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                            options={"require": ["exp", "iss", "aud"]})
    except jwt.InvalidTokenError:
        return None
    scopes = _jwt_scopes(claims.get(settings.jwt_scopes_claim, JWT_DEFAULT_SCOPES))
    tenant_name = claims.get(settings.jwt_tenant_claim)
    if scopes is None or not isinstance(tenant_name, str):
        return None
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        return None
    # One rate-limit bucket per tenant and subject (hashed: a subject is the issuer's text).
    subject = hashlib.sha256(str(claims.get("sub", "")).encode()).hexdigest()[:32]
    expires_at = claims["exp"] if isinstance(claims["exp"], int | float) else None
    return Principal(tenant_id=tenant.id, key_id=f"{JWT_PREFIX}{tenant.id}:{subject}",
                     scopes=scopes, expires_at=expires_at)


def _jwt_scopes(granted: object) -> frozenset[str] | None:
    """The scopes a JWT's claim grants: a space-separated string or a list of strings;
    None (the token is refused) for anything else."""
    if isinstance(granted, str):
        return frozenset(granted.split()) & set(SCOPES)
    if isinstance(granted, list | tuple) and all(isinstance(item, str) for item in granted):
        return frozenset(granted) & set(SCOPES)
    return None


_BY_HASH = text(  # every request runs it
    "SELECT id, tenant_id, scopes, last_used_at FROM api_keys "
    "WHERE key_hash = :key_hash AND revoked_at IS NULL"
)


_BY_ID = text(
    "SELECT id, tenant_id, scopes FROM api_keys WHERE id = :key_id AND revoked_at IS NULL")


def live_key(session: Session, *, key_id: str) -> Principal | None:
    """The principal of a key known by id (a dashboard session's), if it is not revoked."""
    key = session.execute(_BY_ID, {"key_id": key_id}).one_or_none()
    if key is None:
        return None
    return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))


def authenticate(session: Session, *, token: str) -> Principal | None:
    """Return the principal for a live key, or None. Lookup is by hash, never by the key."""
    key = session.execute(_BY_HASH, {"key_hash": hash_key(token)}).one_or_none()
    if key is None:
        return None
    now = datetime.now(UTC)
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return Principal(tenant_id=key.tenant_id, key_id=key.id, scopes=frozenset(key.scopes))
