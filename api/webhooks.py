"""``/v1/webhook-endpoints`` and ``/v1/webhook-secret``: where completions are sent, signed."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import require_admin
from api.bodies import json_body
from api.deps import principal, runtime
from api.idempotency import withholding
from api.schemas import EndpointCreate
from worker.base.ssrf import Guard
from worker.delivery import webhooks
from worker.runs.views import endpoint_view, iso

bp = Blueprint("webhooks", __name__, url_prefix="/v1")
bp.before_request(require_admin)


@bp.post("/webhook-endpoints")
@withholding("secret")
def create_endpoint() -> tuple[Response, int]:
    body = json_body(EndpointCreate)
    rt = runtime()
    with rt.db.transaction() as session:
        endpoint = webhooks.create_endpoint(session, tenant_id=principal().tenant_id,
                                            url=str(body.url), events=body.events,
                                            guard=Guard.of(rt.settings))
        view = {**endpoint_view(endpoint), "secret": endpoint.secret}
    return jsonify(view), 201


@bp.get("/webhook-endpoints")
def list_endpoints() -> Response:
    with runtime().db.transaction() as session:
        items = webhooks.endpoints(session, tenant_id=principal().tenant_id)
        return jsonify({"items": [endpoint_view(endpoint) for endpoint in items]})


@bp.get("/webhook-endpoints/<endpoint_id>")
def get_endpoint(endpoint_id: str) -> Response:
    with runtime().db.transaction() as session:
        endpoint = webhooks.get_endpoint(session, tenant_id=principal().tenant_id,
                                         endpoint_id=endpoint_id)
        return jsonify(endpoint_view(endpoint))


@bp.delete("/webhook-endpoints/<endpoint_id>")
def delete_endpoint(endpoint_id: str) -> tuple[str, int]:
    with runtime().db.transaction() as session:
        webhooks.delete_endpoint(session, tenant_id=principal().tenant_id,
                                 endpoint_id=endpoint_id)
    return "", 204


@bp.post("/webhook-endpoints/<endpoint_id>/rotate-secret")
def rotate_endpoint_secret(endpoint_id: str) -> Response:
    rt = runtime()
    with rt.db.transaction() as session:
        endpoint = webhooks.rotate_endpoint_secret(
            session, tenant_id=principal().tenant_id, endpoint_id=endpoint_id,
            overlap_s=rt.settings.webhook_secret_overlap_s)
        return jsonify({**endpoint_view(endpoint), "secret": endpoint.secret})


@bp.post("/webhook-secret")
@withholding("secret")
def create_default_secret() -> tuple[Response, int]:
    with runtime().db.transaction() as session:
        secret = webhooks.create_default_secret(session, tenant_id=principal().tenant_id)
    return jsonify({"secret": secret, "previous_secret_expires_at": None}), 201


@bp.post("/webhook-secret/rotate")
def rotate_default_secret() -> Response:
    rt = runtime()
    with rt.db.transaction() as session:
        tenant = webhooks.rotate_default_secret(session, tenant_id=principal().tenant_id,
                                                overlap_s=rt.settings.webhook_secret_overlap_s)
        return jsonify({"secret": tenant.webhook_secret,
                        "previous_secret_expires_at": iso(tenant.webhook_previous_expires_at)})
