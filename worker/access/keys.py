"""Tenants and their API keys. A key is shown once; only its SHA-256 hash is stored."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import redis
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


class KeyCache:
    """What an API process remembers of valid keys, to spare the database a lookup on
    every request. Entries last ``AGENTQ_KEY_CACHE_S``; a revocation anywhere is announced
    on Redis (with the key's id) and clears every process's cache at once (the TTL bounds
    the staleness if the announcement is lost), and ``on_revoked`` ends what the key holds
    open in this process (its streams and sockets).

    A lookup races a revocation: read the key (live), the key is revoked, then remember
    it. So ``put`` takes the ``generation`` read before the lookup, and remembers nothing
    if any revocation was heard since.
    """

    CHANNEL = "agentq:keys:revoked"

    def __init__(self, redis_url: str, ttl_s: float,
                 on_revoked: Callable[[str | None], None] | None = None) -> None:
        self.pid = os.getpid()
        self._ttl_s = ttl_s
        self._on_revoked = on_revoked
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self._pubsub = redis.Redis.from_url(redis_url, socket_connect_timeout=2).pubsub(
            ignore_subscribe_messages=True)
        threading.Thread(target=self._listen, name="agentq-key-cache", daemon=True).start()

    @property
    def generation(self) -> int:
        """Read before looking a key up; pass to ``put``."""
        return self._generation

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, caller: Principal, *, generation: int) -> None:
        """Remember a key looked up at ``generation``, unless a revocation came since."""
        if self._ttl_s <= 0:
            return
        with self._lock:
            if generation == self._generation:
                self._entries[key_hash] = (caller, time.monotonic() + self._ttl_s)

    def forget(self, key_id: str | None = None) -> None:
        """Drop every remembered key: this process revoked ``key_id``, or heard of a
        revocation (None: of some key, unknown, while it was not listening)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
        if self._on_revoked is not None:
            self._on_revoked(key_id)

    def _listen(self) -> None:
        while True:
            try:
                if not self._pubsub.channels:
                    self._pubsub.subscribe(self.CHANNEL)
                    self.forget()  # (re)subscribed: anything may have been missed
                message = self._pubsub.get_message(timeout=5.0)
                if message is not None:
                    data = message.get("data")
                    self.forget(data.decode() if isinstance(data, bytes) else None)
            except (redis.RedisError, OSError):
                self.forget()
                time.sleep(1.0)


def announce_revocation(redis_client: redis.Redis, key_id: str) -> None:
    """Tell every API process to forget the keys it remembers and to end what ``key_id``
    holds open (best effort: else caches expire in AGENTQ_KEY_CACHE_S, and open streams
    notice at their next check)."""
    with contextlib.suppress(redis.RedisError):
        redis_client.publish(KeyCache.CHANNEL, key_id)


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
