"""``/v1/deliveries``: every outbound webhook, its attempts, and retrying one by hand.

All of it needs the ``admin`` scope, as webhook endpoints do: deliveries show receivers'
URLs and answers, and a retry re-enables a disabled endpoint."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api import pagination
from api.auth import require_admin
from api.bodies import query
from api.deps import principal, runtime
from api.schemas import DeliveryListQuery
from worker.base.models import DeliveryStatus
from worker.delivery import webhooks
from worker.runs import outbox
from worker.runs.views import delivery_attempt_view, delivery_view

bp = Blueprint("deliveries", __name__, url_prefix="/v1/deliveries")
bp.before_request(require_admin)


@bp.get("")
def list_deliveries() -> Response:
    q = query(DeliveryListQuery)
    with runtime().db.transaction() as session:
        items = webhooks.deliveries(
            session, tenant_id=principal().tenant_id, run_id=q.run_id,
            endpoint_id=q.endpoint_id, status=DeliveryStatus(q.status) if q.status else None,
            limit=q.limit + 1, before=pagination.decode(q.cursor, prefix="msg_"))
        more = len(items) > q.limit
        items = items[:q.limit]
        return jsonify({"items": [delivery_view(item) for item in items],
                        "next_cursor": pagination.encode(items[-1].id if more else None)})


@bp.get("/<delivery_id>")
def get_delivery(delivery_id: str) -> Response:
    with runtime().db.transaction() as session:
        delivery = webhooks.get_delivery(session, tenant_id=principal().tenant_id,
                                         delivery_id=delivery_id)
        tries = webhooks.attempts_of(session, delivery_id=delivery_id)
        return jsonify({**delivery_view(delivery),
                        "attempt_log": [delivery_attempt_view(item) for item in tries]})


@bp.post("/<delivery_id>/retry")
def retry_delivery(delivery_id: str) -> tuple[Response, int]:
    rt = runtime()
    with rt.db.transaction() as session:
        delivery = webhooks.retry(session, tenant_id=principal().tenant_id,
                                  delivery_id=delivery_id)
        view = delivery_view(delivery)
    outbox.dispatch(rt, [delivery_id])
    return jsonify(view), 202
