"""The deliveries outbox: a run's end writes its webhook deliveries in the same transaction
(``lifecycle.ended`` calls ``enqueue``), so a crash between the commit and the send loses
nothing; after the commit they are published to the notifier's queue (``publish``), and
the sweeper publishes what is due and was not (``worker.delivery.notifier``).

Sending them is ``worker.delivery``'s. Functions that take a session never commit.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.base.errors import InvalidRequest
from worker.base.event import Event
from worker.base.models import (
    Delivery,
    DeliveryStatus,
    Run,
    RunStatus,
    Tenant,
    WebhookEndpoint,
    new_id,
)
from worker.base.queues import DELIVER_TASK, PUBLISH_RETRY_POLICY
from worker.base.runtime import Runtime
from worker.runs.views import iso, run_view

log = logging.getLogger(__name__)

EVENT_TYPES = ("run.succeeded", "run.failed", "run.cancelled", "run.dead_lettered",
               "run.waiting", "run.expired", "batch.completed")
STANDARD, SLACK = "standard", "slack"  # delivery formats
_SLACK_TEXT_LIMIT = 3000


def require_default_secret(session: Session, *, tenant_id: str) -> None:
    """A run's webhook_url needs the tenant's secret, or its receiver could verify nothing."""
    secret = session.scalar(select(Tenant.webhook_secret).where(Tenant.id == tenant_id))
    if secret is None:
        raise InvalidRequest("webhook_url needs the tenant's webhook secret", [{
            "field": "webhook_url",
            "message": "create the secret that signs these deliveries first: "
                       "POST /v1/webhook-secret"}])


def slack_message(run: Run) -> dict[str, Any]:
    """The answer a Slack response_url shows: the result's text, or what went wrong."""
    if run.status == "succeeded":
        result = run.result
        if isinstance(result, dict):
            result = result.get("answer") or result.get("text") or result
        text = result if isinstance(result, str) else json.dumps(result, indent=2)
    else:
        error = run.error or {}
        text = f"The run {run.status.replace('_', ' ')}: {error.get('message', 'no detail')}"
    return {"response_type": "in_channel", "text": text[:_SLACK_TEXT_LIMIT]}


def enqueue(session: Session, *, run: Run, event: Event,
            endpoints: list[list[str]] | None = None,
            extra: dict[str, Any] | None = None) -> list[str]:
    """Create the deliveries of a run that ends (or waits) in this transaction, with its
    status event (and its tenant's endpoints if already read; ``extra`` added to the
    payload's data); return the deliveries' ids. A Slack reply_url hears of the end only."""
    event_type = f"run.{event.data['status']}"
    known = endpoints if endpoints is not None else _endpoints(session, run, event_type)
    targets: list[tuple[str | None, str]] = [(endpoint_id, url) for endpoint_id, url in known]
    if run.webhook_url:
        targets.append((None, run.webhook_url))
    reply_url = run.reply_url if RunStatus(run.status).is_terminal else None
    if not targets and not reply_url:
        return []
    payload = {"type": event_type, "timestamp": iso(event.at),
               "data": {**run_view(run), **(extra or {})}}
    outgoing = [(endpoint_id, url, STANDARD, payload) for endpoint_id, url in targets]
    if reply_url:
        outgoing.append((None, reply_url, SLACK, slack_message(run)))
    return _create(session, run=run, event_type=event_type, outgoing=outgoing)


def enqueue_event(session: Session, *, run: Run, event_type: str, data: dict[str, Any],
                  at: datetime) -> list[str]:
    """Create the deliveries of an event about more than a run (``batch.completed``) to
    the tenant's endpoints that want it, filed under ``run`` (the run whose end made it);
    return their ids."""
    payload = {"type": event_type, "timestamp": iso(at), "data": data}
    outgoing = [(endpoint_id, url, STANDARD, payload)
                for endpoint_id, url in _endpoints(session, run, event_type)]
    return _create(session, run=run, event_type=event_type, outgoing=outgoing)


def _create(session: Session, *, run: Run, event_type: str,
            outgoing: Sequence[tuple[str | None, str, str, dict[str, Any]]]) -> list[str]:
    """One pending delivery per (endpoint id, url, format, payload); their ids."""
    created = []
    for endpoint_id, url, kind, body in outgoing:
        delivery = Delivery(
            id=new_id("msg"), tenant_id=run.tenant_id, run_id=run.id,
            endpoint_id=endpoint_id, url=url, event_type=event_type, format=kind,
            payload=body, status=DeliveryStatus.PENDING, attempts=0,
            next_attempt_at=func.now())
        session.add(delivery)
        created.append(delivery.id)
    session.flush()
    return created


def enqueue_reply(session: Session, *, run: Run, url: str, event_type: str,
                  message: dict[str, Any]) -> str:
    """A Slack message to a response_url about ``run`` (a button press's answer), sent by
    the notifier like every delivery; return its id."""
    delivery = Delivery(
        id=new_id("msg"), tenant_id=run.tenant_id, run_id=run.id, endpoint_id=None, url=url,
        event_type=event_type, format=SLACK, payload=message, status=DeliveryStatus.PENDING,
        attempts=0, next_attempt_at=func.now())
    session.add(delivery)
    session.flush()
    return delivery.id


def _endpoints(session: Session, run: Run, event_type: str) -> list[list[str]]:
    """The tenant's live endpoints that want ``event_type``, as [id, url] pairs."""
    query = select(WebhookEndpoint.id, WebhookEndpoint.url).where(
        WebhookEndpoint.tenant_id == run.tenant_id, WebhookEndpoint.deleted_at.is_(None),
        WebhookEndpoint.disabled_at.is_(None), WebhookEndpoint.events.contains([event_type]))
    return [[row.id, row.url] for row in session.execute(query)]


def mark_dispatched(session: Session, *, delivery_ids: list[str]) -> None:
    if delivery_ids:
        session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids))
                        .values(dispatched_at=func.now()))




def publish(rt: Runtime, delivery_id: str) -> bool:
    """Publish a delivery's send task; False (and a log line) if the broker did not take
    it (the sweeper sends it then)."""
    try:
        rt.celery.send_task(DELIVER_TASK, args=[delivery_id], retry=True,
                            retry_policy=PUBLISH_RETRY_POLICY)
    except Exception as error:  # kombu and redis raise many kinds; all mean "not sent"
        log.warning("delivery publish failed; the sweeper will retry",
                    extra={"delivery_id": delivery_id, "error": type(error).__name__})
        return False
    return True


def dispatch(rt: Runtime, delivery_ids: list[str]) -> int:
    """Publish the send tasks of committed deliveries and mark them; never raises."""
    sent = [delivery_id for delivery_id in delivery_ids if publish(rt, delivery_id)]
    if sent:
        try:
            with rt.db.transaction() as session:
                mark_dispatched(session, delivery_ids=sent)
        except Exception as error:  # published already: at worst a harmless second send task
            log.warning("could not mark deliveries dispatched",
                        extra={"error": f"{type(error).__name__}: {error}"})
    return len(sent)
