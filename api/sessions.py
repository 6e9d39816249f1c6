"""``/v1/sessions/{id}``: a conversation's state, its version, and its runs; or forget it."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import require_key
from api.deps import principal, runtime
from worker.runs import sessions

bp = Blueprint("sessions", __name__, url_prefix="/v1/sessions")
bp.before_request(require_key)


@bp.get("/<session_id>")
def get_session(session_id: str) -> Response:
    with runtime().db.transaction() as session:
        return jsonify(sessions.view(session, tenant_id=principal().tenant_id,
                                     session_id=session_id))


@bp.delete("/<session_id>")
def forget_session(session_id: str) -> tuple[str, int]:
    with runtime().db.transaction() as session:
        sessions.forget(session, tenant_id=principal().tenant_id, session_id=session_id)
    return "", 204
