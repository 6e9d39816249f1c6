"""Outbound webhooks in Postgres: endpoints and their secrets, and each delivery's attempts
(held by one sender at a time, recorded fenced by the attempt they name), retried by hand.

The deliveries themselves are made with the run's end (``worker.runs.outbox``).
Every function takes a session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from worker.base import signing
from worker.base.errors import Conflict, InvalidRequest, NotFound
from worker.base.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    Tenant,
    WebhookEndpoint,
    new_id,
)
from worker.base.signing import live_secrets
from worker.base.ssrf import Guard, refuse_internal
from worker.runs.outbox import EVENT_TYPES
from worker.runs.views import iso

# Endpoints ------------------------------------------------------------------------------

def create_endpoint(session: Session, *, tenant_id: str, url: str,
                    events: Sequence[str] | None, guard: Guard) -> WebhookEndpoint:
    refuse_internal(url, guard=guard, field="url")
    chosen = list(events) if events else list(EVENT_TYPES)
    unknown = sorted(set(chosen) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequest("unknown event types", [{
            "field": "events",
            "message": f"{', '.join(unknown)} unknown; choose from {', '.join(EVENT_TYPES)}"}])
    endpoint = WebhookEndpoint(id=new_id("ep"), tenant_id=tenant_id, url=url, events=chosen,
                               secret=signing.new_secret())
    session.add(endpoint)
    session.flush()
    return endpoint


def endpoints(session: Session, *, tenant_id: str) -> list[WebhookEndpoint]:
    query = (select(WebhookEndpoint)
             .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))
             .order_by(WebhookEndpoint.id.desc()))
    return list(session.scalars(query))


def get_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.scalar(select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id,
        WebhookEndpoint.deleted_at.is_(None)))
    if endpoint is None:
        raise NotFound("webhook endpoint", endpoint_id)
    return endpoint


def delete_endpoint(session: Session, *, tenant_id: str, endpoint_id: str) -> None:
    """Stop delivering to it; past deliveries keep their history."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    endpoint.deleted_at = datetime.now(UTC)
    _end_deliveries(session, endpoint_id=endpoint_id, reason="the endpoint was deleted")


def rotate_endpoint_secret(session: Session, *, tenant_id: str, endpoint_id: str,
                           overlap_s: float) -> WebhookEndpoint:
    """A new secret; the old one keeps signing beside it for ``overlap_s``."""
    endpoint = get_endpoint(session, tenant_id=tenant_id, endpoint_id=endpoint_id)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_expires_at = datetime.now(UTC) + timedelta(seconds=overlap_s)
    endpoint.secret = signing.new_secret()
    return endpoint


# The tenant's default secret (for runs' own webhook_url) ---------------------------------

def create_default_secret(session: Session, *, tenant_id: str) -> str:
    tenant = session.get_one(Tenant, tenant_id, with_for_update=True)
    if tenant.webhook_secret is not None:
        raise Conflict("the tenant already has a webhook secret; rotate it instead")
    tenant.webhook_secret = signing.new_secret()
    return tenant.webhook_secret


def rotate_default_secret(session: Session, *, tenant_id: str, overlap_s: float) -> Tenant:
    tenant = session.get_one(Tenant, tenant_id, with_for_update=True)
    if tenant.webhook_secret is None:
        raise NotFound("webhook secret", "default")
    tenant.webhook_previous_secret = tenant.webhook_secret
    tenant.webhook_previous_expires_at = datetime.now(UTC) + timedelta(seconds=overlap_s)
    tenant.webhook_secret = signing.new_secret()
    return tenant


# A delivery waiting to be sent, nobody sending it, to a live endpoint (or a URL of its own).
_UNHELD_TO_LIVE_ENDPOINT = """
    status IN ('pending', 'retrying') AND (locked_until IS NULL OR locked_until < now())
    AND (endpoint_id IS NULL OR EXISTS (
        SELECT 1 FROM webhook_endpoints AS e WHERE e.id = endpoint_id
          AND e.deleted_at IS NULL AND e.disabled_at IS NULL))
"""
_DUE = text(f"""
    WITH due AS (
        SELECT id, tenant_id, next_attempt_at,
               row_number() OVER (PARTITION BY tenant_id ORDER BY next_attempt_at) AS nth
        FROM deliveries
        WHERE {_UNHELD_TO_LIVE_ENDPOINT}
          AND (
              -- a first attempt whose publish never happened (or that was deferred)
              (attempts = 0 AND dispatched_at IS NULL
               AND next_attempt_at < now() - make_interval(secs => :grace_s))
              -- a retry whose time has come
              OR (attempts > 0 AND dispatched_at IS NULL AND next_attempt_at <= now())
              -- one whose send task was lost
              OR (dispatched_at < now() - make_interval(secs => :lost_after_s)
                  AND next_attempt_at < now() - make_interval(secs => :lost_after_s)))
    ), room AS (
        SELECT tenant_id, :per_tenant - (
            SELECT count(*) FROM deliveries AS busy
            WHERE busy.tenant_id = tenants.tenant_id AND busy.locked_until > now()
              AND busy.status IN ('pending', 'retrying')) AS free
        FROM (SELECT DISTINCT tenant_id FROM due) AS tenants
    )
    SELECT due.id FROM due JOIN room USING (tenant_id)
    WHERE due.nth <= room.free
    ORDER BY due.next_attempt_at
    LIMIT :limit
""")  # noqa: S608 (constants only)


def due(session: Session, *, grace_s: float, lost_after_s: float, limit: int,
        per_tenant: int) -> list[str]:
    """Deliveries that are due with no send task on its way: a retry whose time has come,
    a first attempt whose publish never happened (or that was deferred while its tenant
    had ``per_tenant`` deliveries held), or one whose task was lost. Deliveries of dead
    endpoints are left out, and each tenant gets no more than it has room for now, so one
    tenant's backlog never fills the batch and holds up another's."""
    return list(session.scalars(_DUE, {"grace_s": grace_s, "lost_after_s": lost_after_s,
                                       "limit": limit, "per_tenant": per_tenant}))


@dataclass(frozen=True)
class Sending:
    """A delivery held by one sender for one attempt."""

    delivery_id: str
    run_id: str
    attempt: int
    schedule_base: int
    format: str
    url: str
    payload: dict[str, Any]
    endpoint_id: str | None
    secrets: list[str]
    tenant_id: str
    traceparent: str | None = None  # its run's trace (worker.base.tracing)


@dataclass(frozen=True)
class Recorded:
    """An attempt recorded: where its delivery stands (None: it had moved on meanwhile),
    and the tenant's next delivery that waited for room, now this one's to send."""

    status: DeliveryStatus | None
    next_id: str | None = None


# A delivery may be held (one attempt made) if it is due, nobody holds it, its endpoint is
# live, and its tenant has fewer than :per_tenant deliveries held (so one tenant's slow
# receivers cannot take every sender). The tenant's holds are counted by
# agentq_delivery_holds (migration 0009): it takes a lock of the tenant's, held to the end
# of this statement, and, being VOLATILE, counts with a snapshot taken after the lock, so
# concurrent holds count one after another. A delivery refused only for its tenant's count
# is left undispatched: an attempt of the tenant's that ends hands its place on to it.
_SENDABLE = f"next_attempt_at <= now() AND {_UNHELD_TO_LIVE_ENDPOINT}"
_HOLD = text(f"""
    WITH target AS MATERIALIZED (
        SELECT id, agentq_delivery_holds(tenant_id) AS holds
        FROM deliveries WHERE id = :delivery_id AND {_SENDABLE}
    ), held AS (
        UPDATE deliveries
        SET locked_until = now() + make_interval(secs => :hold_s), attempts = attempts + 1
        FROM target
        WHERE deliveries.id = target.id AND target.holds < :per_tenant AND {_SENDABLE}
        RETURNING deliveries.run_id, deliveries.attempts, deliveries.schedule_base,
                  deliveries.format, deliveries.url, deliveries.payload,
                  deliveries.endpoint_id, deliveries.tenant_id
    ), deferred AS (
        UPDATE deliveries SET dispatched_at = NULL
        FROM target WHERE deliveries.id = target.id AND target.holds >= :per_tenant
        RETURNING deliveries.id
    )
    SELECT held.*,
           CASE WHEN held.endpoint_id IS NULL THEN t.webhook_secret ELSE e.secret END
               AS secret,
           CASE WHEN held.endpoint_id IS NULL THEN t.webhook_previous_secret
                ELSE e.previous_secret END AS previous_secret,
           CASE WHEN held.endpoint_id IS NULL THEN t.webhook_previous_expires_at
                ELSE e.previous_expires_at END AS previous_expires_at,
           r.traceparent
    FROM held
    JOIN tenants t ON t.id = held.tenant_id
    LEFT JOIN webhook_endpoints e ON e.id = held.endpoint_id
    LEFT JOIN runs r ON r.id = held.run_id
""")  # noqa: S608 (constants only)


def hold(session: Session, *, delivery_id: str, hold_s: float,
         per_tenant: int) -> Sending | None:
    """Take the delivery's next attempt if it may be sent now (see ``_SENDABLE``), with the
    secrets that sign it: one atomic statement (no transaction needed around it)."""
    row = session.execute(_HOLD, {"delivery_id": delivery_id, "hold_s": hold_s,
                                  "per_tenant": per_tenant}).one_or_none()
    if row is None:
        return None
    secrets = live_secrets(row.secret, row.previous_secret, row.previous_expires_at)
    return Sending(delivery_id, row.run_id, row.attempts, row.schedule_base, row.format,
                   row.url, row.payload, row.endpoint_id, secrets, row.tenant_id,
                   row.traceparent)


@dataclass(frozen=True)
class Response:
    """What one HTTP attempt came to."""

    status_code: int | None
    latency_ms: float
    started_at: datetime
    error: str | None = None
    body: str | None = None
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# An attempt that ends frees one of its tenant's holds: the tenant's oldest delivery that
# is due and waiting for a send task (one deferred for the tenant's count, say) is marked
# dispatched here, and the caller publishes it. So a tenant at its count keeps that many
# going, without waiting for the sweeper.
_NEXT_OF_TENANT = """
    UPDATE deliveries SET dispatched_at = now()
    WHERE id = (SELECT waiting.id FROM deliveries AS waiting
                WHERE waiting.tenant_id = :tenant_id AND waiting.dispatched_at IS NULL
                  AND waiting.status IN ('pending', 'retrying')
                  AND waiting.next_attempt_at <= now() AND waiting.id <> :delivery_id
                  AND (waiting.locked_until IS NULL OR waiting.locked_until < now())
                ORDER BY waiting.next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING id
"""

# Every outcome write names the attempt it records: once the delivery has moved on (a
# later attempt held it after this one's hold expired, its endpoint was deleted, it was
# retried by hand), a late write changes nothing but the attempt's own history row.
_DELIVERED = text(f"""
    WITH attempt AS (
        INSERT INTO delivery_attempts (delivery_id, attempt, started_at, latency_ms,
                                       status_code, error, response_body)
        VALUES (:delivery_id, :attempt, :started_at, :latency_ms, :status_code, NULL, :body)
    ), delivered AS (
        UPDATE deliveries
        SET status = 'delivered', delivered_at = now(), next_attempt_at = NULL,
            locked_until = NULL, last_status_code = :status_code, last_error = NULL,
            dispatched_at = NULL
        WHERE id = :delivery_id AND attempts = :attempt
          AND status IN ('pending', 'retrying', 'dead')
        RETURNING id
    ), endpoint AS (
        UPDATE webhook_endpoints SET failing_since = NULL
        WHERE id = :endpoint_id AND failing_since IS NOT NULL
          AND EXISTS (SELECT 1 FROM delivered)
    ), handed_on AS ({_NEXT_OF_TENANT})
    SELECT (SELECT count(*) FROM delivered) AS recorded, (SELECT id FROM handed_on) AS next_id
""")  # noqa: S608 (constants only)


def record_delivered(session: Session, *, sending: Sending, response: Response) -> Recorded:
    """Keep a successful attempt and mark the delivery delivered (status None if it moved
    on meanwhile: the attempt is kept, nothing else changes): one atomic statement."""
    row = session.execute(_DELIVERED, {
        "delivery_id": sending.delivery_id, "attempt": sending.attempt,
        "started_at": response.started_at, "latency_ms": response.latency_ms,
        "status_code": response.status_code, "body": response.body,
        "endpoint_id": sending.endpoint_id, "tenant_id": sending.tenant_id}).one()
    return Recorded(DeliveryStatus.DELIVERED if row.recorded else None, row.next_id)


def record(session: Session, *, sending: Sending, response: Response,
           schedule: list[float], disable_after_s: float) -> Recorded:
    """Keep the attempt; decide whether the delivery is done, retried later, or dead (status
    None if it moved on meanwhile, see ``_DELIVERED``); hand the tenant's hold on to its
    next waiting delivery. A success is one atomic statement; a failure may disable the
    endpoint, so call it in a transaction then."""
    if response.ok:
        return record_delivered(session, sending=sending, response=response)
    session.add(DeliveryAttempt(
        delivery_id=sending.delivery_id, attempt=sending.attempt,
        started_at=response.started_at, latency_ms=response.latency_ms,
        status_code=response.status_code, error=response.error, response_body=response.body))
    values: dict[str, Any] = {"locked_until": None, "last_status_code": response.status_code,
                              "last_error": response.error, "dispatched_at": None}
    values["status"] = status = _after_failure(sending, response, schedule, values)
    current = session.execute(
        update(Delivery)
        .where(Delivery.id == sending.delivery_id, Delivery.attempts == sending.attempt,
               Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]))
        .values(**values).returning(Delivery.id)).first()
    if current is None:
        return Recorded(None)
    endpoint = (session.get(WebhookEndpoint, sending.endpoint_id, with_for_update=True)
                if sending.endpoint_id else None)
    if endpoint is not None:
        _endpoint_failed(endpoint, response, disable_after_s)
        if endpoint.disabled_at is not None:
            _end_deliveries(session, endpoint_id=endpoint.id,
                            reason=f"endpoint disabled: {endpoint.disabled_reason}")
            status = DeliveryStatus.DEAD
    next_id = session.execute(text(_NEXT_OF_TENANT), {
        "tenant_id": sending.tenant_id, "delivery_id": sending.delivery_id}).scalar()
    return Recorded(status, next_id)


def _end_deliveries(session: Session, *, endpoint_id: str, reason: str) -> None:
    """The endpoint will not be sent to again: its deliveries still to go are dead (a retry
    by hand re-enables it)."""
    session.execute(
        update(Delivery)
        .where(Delivery.endpoint_id == endpoint_id,
               Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.RETRYING]))
        .values(status=DeliveryStatus.DEAD, next_attempt_at=None, last_error=reason)
    )


def _after_failure(sending: Sending, response: Response, schedule: list[float],
                   values: dict[str, Any]) -> DeliveryStatus:
    retries_used = sending.attempt - 1 - sending.schedule_base
    if response.status_code == 410 or retries_used >= len(schedule):
        values["next_attempt_at"] = None
        return DeliveryStatus.DEAD
    wait = max(schedule[retries_used], response.retry_after_s or 0)
    values["next_attempt_at"] = func.now() + timedelta(seconds=wait)
    return DeliveryStatus.RETRYING


def _endpoint_failed(endpoint: WebhookEndpoint, response: Response,
                     disable_after_s: float) -> None:
    now = datetime.now(UTC)
    if response.status_code == 410:
        endpoint.disabled_at = now
        endpoint.disabled_reason = "the receiver answered 410 Gone"
        return
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    elif now - endpoint.failing_since > timedelta(seconds=disable_after_s):
        endpoint.disabled_at = now
        endpoint.disabled_reason = (f"every delivery failed for {disable_after_s / 86400:g} days "
                                    f"(since {iso(endpoint.failing_since)})")


# Reading and retrying by hand -------------------------------------------------------------

def deliveries(session: Session, *, tenant_id: str, run_id: str | None = None,
               endpoint_id: str | None = None, status: DeliveryStatus | None = None,
               limit: int = 50, before: str | None = None) -> list[Delivery]:
    query = select(Delivery).where(Delivery.tenant_id == tenant_id)
    if run_id is not None:
        query = query.where(Delivery.run_id == run_id)
    if endpoint_id is not None:
        query = query.where(Delivery.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(Delivery.status == status)
    if before is not None:
        query = query.where(Delivery.id < before)
    return list(session.scalars(query.order_by(Delivery.id.desc()).limit(limit)))


def get_delivery(session: Session, *, tenant_id: str, delivery_id: str) -> Delivery:
    delivery = session.scalar(select(Delivery).where(Delivery.id == delivery_id,
                                                     Delivery.tenant_id == tenant_id))
    if delivery is None:
        raise NotFound("delivery", delivery_id)
    return delivery


def attempts_of(session: Session, *, delivery_id: str) -> list[DeliveryAttempt]:
    query = (select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id)
             .order_by(DeliveryAttempt.attempt))
    return list(session.scalars(query))


def retry(session: Session, *, tenant_id: str, delivery_id: str) -> Delivery:
    """Send again now: a dead delivery gets another round of the schedule. Refused while
    an attempt is being made (a second sender would send it at the same time)."""
    found = session.execute(
        select(Delivery, func.coalesce(Delivery.locked_until > func.now(), False))
        .where(Delivery.id == delivery_id, Delivery.tenant_id == tenant_id)
        .with_for_update(of=Delivery)).one_or_none()
    if found is None:
        raise NotFound("delivery", delivery_id)
    delivery, being_sent = found
    if delivery.status == DeliveryStatus.DELIVERED:
        raise Conflict(f"delivery {delivery_id} was delivered; nothing to retry")
    if being_sent:
        raise Conflict(f"delivery {delivery_id} is being sent right now; retry it after "
                       "this attempt ends")
    if delivery.endpoint_id is not None:
        endpoint = session.get_one(WebhookEndpoint, delivery.endpoint_id)
        if endpoint.deleted_at is not None:
            raise Conflict("its endpoint was deleted")
        endpoint.disabled_at = endpoint.disabled_reason = endpoint.failing_since = None
    if delivery.status == DeliveryStatus.DEAD:
        delivery.schedule_base = delivery.attempts  # a full schedule again; history kept
    delivery.status = DeliveryStatus.PENDING
    delivery.next_attempt_at = func.now()
    delivery.locked_until = delivery.dispatched_at = None
    session.flush()
    session.refresh(delivery)
    return delivery
