"""``/v1/hook-sources``: the signed third-party senders whose events start runs."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, url_for

from api.auth import require_admin
from api.bodies import json_body
from api.deps import principal, runtime
from api.idempotency import idempotent
from api.schemas import HookSourceCreate, HookSourceRotate
from worker.base.models import HookSource
from worker.inbound import hooks
from worker.runs.views import iso

bp = Blueprint("hook_sources", __name__, url_prefix="/v1/hook-sources")
bp.before_request(require_admin)


def source_view(source: HookSource) -> dict[str, object]:
    """A hook source as the API shows it: never its secret."""
    return {
        "id": source.id,
        "url": url_for("hooks.receive", source_id=source.id),
        "provider": source.provider,
        "agent": source.agent,
        "events": source.events,
        "reply": source.reply_url,
        "created_at": iso(source.created_at),
        "previous_secret_expires_at": iso(source.previous_expires_at),
    }


@bp.post("")
@idempotent
def create_source() -> tuple[Response, int]:
    body = json_body(HookSourceCreate)
    rt = runtime()
    with rt.db.transaction() as session:
        source = hooks.create_source(
            session, rt=rt, tenant_id=principal().tenant_id, provider=body.provider,
            secret=body.secret, agent=body.agent, events=body.events,
            reply_url=str(body.reply) if body.reply else None)
        return jsonify(source_view(source)), 201


@bp.get("")
def list_sources() -> Response:
    with runtime().db.transaction() as session:
        items = hooks.sources(session, tenant_id=principal().tenant_id)
        return jsonify({"items": [source_view(source) for source in items]})


@bp.get("/<source_id>")
def get_source(source_id: str) -> Response:
    with runtime().db.transaction() as session:
        source = hooks.get_source(session, tenant_id=principal().tenant_id,
                                    source_id=source_id)
        return jsonify(source_view(source))


@bp.delete("/<source_id>")
def delete_source(source_id: str) -> tuple[str, int]:
    with runtime().db.transaction() as session:
        hooks.delete_source(session, tenant_id=principal().tenant_id, source_id=source_id)
    return "", 204


@bp.post("/<source_id>/rotate-secret")
def rotate_secret(source_id: str) -> Response:
    body = json_body(HookSourceRotate)
    rt = runtime()
    with rt.db.transaction() as session:
        source = hooks.rotate_secret(session, tenant_id=principal().tenant_id,
                                       source_id=source_id, secret=body.secret,
                                       overlap_s=rt.settings.webhook_secret_overlap_s)
        return jsonify(source_view(source))
