"""``Idempotency-Key``: a repeated POST gets the first one's answer and creates nothing.

The first request with a key inserts a row under a unique (tenant, key) before doing its
work; a repeat that arrives while it is in flight waits for it (bounded), and one that
arrives after gets the stored answer. The same key with a different body is refused. A key
lasts ``AGENTQ_IDEMPOTENCY_TTL_S``; a request that failed leaves no key behind, so it can be
retried with the same one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from worker.errors import Conflict, InvalidRequest
from worker.models import IdempotencyKey
from worker.runtime import Runtime

_WAIT_S = 10.0
_POLL_S = 0.05


@dataclass(frozen=True)
class Stored:
    """The first request's answer."""

    status_code: int
    response: Any
    run_id: str | None


def begin(rt: Runtime, *, tenant_id: str, key: str, fingerprint: str) -> Stored | None:
    """Take the key (None: go ahead and do the work), or return the first request's answer."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        with rt.db.transaction() as session:
            session.execute(delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
                IdempotencyKey.expires_at < func.now()))
            taken = session.execute(
                insert(IdempotencyKey)
                .values(tenant_id=tenant_id, key=key, fingerprint=fingerprint,
                        expires_at=func.now() + timedelta(seconds=rt.settings.idempotency_ttl_s))
                .on_conflict_do_nothing(index_elements=["tenant_id", "key"])
                .returning(IdempotencyKey.key)
            ).scalar_one_or_none()
            if taken is not None:
                return None
            first = session.scalar(select(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key))
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


def complete(rt: Runtime, *, tenant_id: str, key: str, status_code: int, response: Any,
             run_id: str | None) -> None:
    """Keep the answer for the repeats."""
    with rt.db.transaction() as session:
        session.execute(update(IdempotencyKey)
                        .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
                        .values(status_code=status_code, response=response, run_id=run_id))


def abandon(rt: Runtime, *, tenant_id: str, key: str) -> None:
    """The request failed: free the key so it can be tried again."""
    with rt.db.transaction() as session:
        session.execute(delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key,
            IdempotencyKey.status_code.is_(None)))


def purge_expired(rt: Runtime) -> int:
    """Delete expired keys (the sweeper does this)."""
    with rt.db.transaction() as session:
        gone = session.execute(delete(IdempotencyKey)
                               .where(IdempotencyKey.expires_at < func.now())
                               .returning(IdempotencyKey.key)).all()
    return len(gone)
