"""``GET /v1/usage``: the tenant's LLM use today and over the last week, and its budget."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.auth import require_key
from api.deps import principal, runtime
from worker.runs import spend
from worker.runs.views import usage_view

bp = Blueprint("usage", __name__, url_prefix="/v1/usage")
bp.before_request(require_key)


@bp.get("")
def get_usage() -> Response:
    rt = runtime()
    with rt.db.autocommit() as session:
        days = spend.days(session, tenant_id=principal().tenant_id, count=7)
    return jsonify(usage_view(days, rt.settings.tenant_daily_tokens))
