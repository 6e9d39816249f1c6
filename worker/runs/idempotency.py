"""``Idempotency-Key``: a repeated POST gets the first one's answer and creates nothing.

The first request with a key inserts a row under a unique (tenant, key) before doing its
work and holds it for ``AGENTQ_IDEMPOTENCY_LEASE_S``; a repeat that arrives while it is in
flight waits for it (bounded), and one that arrives after gets the stored answer. A first
request that died mid-flight (its process killed) leaves its hold to expire, after which a
repeat takes the key over and does the work; every write names its holder, so a late write
of the first one changes nothing. The same key with a different body is refused. A key
lasts ``AGENTQ_IDEMPOTENCY_TTL_S``; a request that failed leaves no key behind, so it can be
retried with the same one. Keys are stored as their SHA-256, as API keys are.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert

from worker.base.errors import Conflict, InvalidRequest
from worker.base.models import IdempotencyKey
from worker.base.runtime import Runtime

_WAIT_S = 10.0
_POLL_S = 0.05


@dataclass(frozen=True)
class Stored:
    """The first request's answer."""

    status_code: int
    response: Any
    run_id: str | None


@dataclass(frozen=True)
class Hold:
    """This request's hold on a key: go ahead and do the work, then complete or abandon."""

    tenant_id: str
    key: str  # hashed
    holder: str


def hashed(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def begin(rt: Runtime, *, tenant_id: str, key: str, fingerprint: str) -> Stored | Hold:
    """Take the key (a Hold: do the work), or return the first request's answer."""
    key, holder = hashed(key), secrets.token_hex(16)
    settings = rt.settings
    held_until = func.now() + timedelta(seconds=settings.idempotency_lease_s)
    deadline = time.monotonic() + _WAIT_S
    while True:
        with rt.db.transaction() as session:
            session.execute(delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
                IdempotencyKey.expires_at < func.now()))
            taken = session.execute(
                insert(IdempotencyKey)
                .values(tenant_id=tenant_id, key=key, fingerprint=fingerprint,
                        held_until=held_until, holder=holder,
                        expires_at=func.now() + timedelta(seconds=settings.idempotency_ttl_s))
                .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
                .returning(IdempotencyKey.key)
            ).scalar_one_or_none()
            if taken is not None:
                return Hold(tenant_id, key, holder)
            first = session.scalar(select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key))
            if first is not None and first.fingerprint == fingerprint \
                    and first.status_code is None:
                # In flight, or abandoned by a request that died: take it over once its
                # hold has expired.
                taken = session.execute(
                    update(IdempotencyKey)
                    .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
                           IdempotencyKey.status_code.is_(None),
                           or_(IdempotencyKey.held_until.is_(None),
                               IdempotencyKey.held_until < func.now()))
                    .values(holder=holder, held_until=held_until)
                    .returning(IdempotencyKey.key)
                ).scalar_one_or_none()
                if taken is not None:
                    return Hold(tenant_id, key, holder)
        if first is None:
            continue  # it expired or was abandoned in between: try to take it again
        if first.fingerprint != fingerprint:
            raise InvalidRequest("this Idempotency-Key was used with a different request", [{
                "field": "Idempotency-Key",
                "message": "send a new key for a new request; reuse a key only to repeat one"}])
        if first.status_code is not None:
            return Stored(first.status_code, first.response, first.run_id)
        if time.monotonic() > deadline:
            raise Conflict("a request with this Idempotency-Key is still in progress; "
                           "repeat it in a moment")
        time.sleep(_POLL_S)


def complete(rt: Runtime, hold: Hold, *, status_code: int, response: Any,
             run_id: str | None) -> None:
    """Keep the answer for the repeats (if this request still holds the key)."""
    with rt.db.transaction() as session:
        session.execute(update(IdempotencyKey)
                        .where(IdempotencyKey.tenant_id == hold.tenant_id,
                               IdempotencyKey.key == hold.key,
                               IdempotencyKey.holder == hold.holder,
                               IdempotencyKey.status_code.is_(None))
                        .values(status_code=status_code, response=response, run_id=run_id,
                                held_until=None))


def abandon(rt: Runtime, hold: Hold) -> None:
    """The request failed: free the key so it can be tried again."""
    with rt.db.transaction() as session:
        session.execute(delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == hold.tenant_id, IdempotencyKey.key == hold.key,
            IdempotencyKey.holder == hold.holder, IdempotencyKey.status_code.is_(None)))


_PURGE_BATCH = 5000  # keys deleted by one statement: each well within the statement timeout


def purge_expired(rt: Runtime) -> int:
    """Delete expired keys (the sweeper does this), a batch at a time: a backlog goes in a
    few sweeps, and no statement runs long enough to meet the statement timeout."""
    expired = (select(IdempotencyKey.tenant_id, IdempotencyKey.key)
               .where(IdempotencyKey.expires_at < func.now())
               .limit(_PURGE_BATCH).with_for_update(skip_locked=True))
    with rt.db.transaction() as session:
        gone = session.execute(delete(IdempotencyKey)
                               .where(tuple_(IdempotencyKey.tenant_id, IdempotencyKey.key)
                                      .in_(expired))
                               .returning(IdempotencyKey.key)).all()
    return len(gone)
