"""``/v1/api-keys``: list, create and revoke the tenant's keys (the ``admin`` scope)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import require_admin
from api.bodies import json_body
from api.deps import principal, runtime
from api.idempotency import withholding
from api.schemas import ApiKeyCreate
from worker.access import cache, keys
from worker.base.models import ApiKey
from worker.runs.views import iso

bp = Blueprint("api_keys", __name__, url_prefix="/v1/api-keys")
bp.before_request(require_admin)


def key_view(record: ApiKey) -> dict[str, object]:
    """A key as listed: its display prefix, never the key or its hash."""
    return {"id": record.id, "prefix": record.prefix, "name": record.name,
            "scopes": record.scopes, "created_at": iso(record.created_at),
            "last_used_at": iso(record.last_used_at), "revoked_at": iso(record.revoked_at)}


@bp.get("")
def list_keys() -> Response:
    with runtime().db.transaction() as session:
        items = keys.keys_of(session, tenant_id=principal().tenant_id)
        return jsonify({"items": [key_view(item) for item in items]})


@bp.post("")
@withholding("key")
def create_key() -> tuple[Response, int]:
    body = json_body(ApiKeyCreate)
    with runtime().db.transaction() as session:
        token, record = keys.issue_key(session, tenant_id=principal().tenant_id,
                                       name=body.name, scopes=body.scopes)
        return jsonify({**key_view(record), "key": token}), 201


@bp.delete("/<key_id>")
def revoke_key(key_id: str) -> tuple[str, int]:
    rt = runtime()
    with rt.db.transaction() as session:
        revoked = keys.revoke(session, tenant_id=principal().tenant_id, key_id=key_id)
    cache.revoked(rt, revoked.id)
    return "", 204
