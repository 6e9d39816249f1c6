"""``/v1/runs``: submit runs, read them, list them."""

from __future__ import annotations

import base64
import binascii

from flask import Blueprint, Response, g, jsonify, url_for

from api.auth import require_key
from api.bodies import json_body, query
from api.deps import principal, runtime
from api.schemas import RunCreate, RunListQuery, WaitQuery
from worker import attempts, dispatch, runs
from worker.attempts import Dispatch
from worker.errors import InvalidRequest
from worker.models import RunStatus
from worker.submission import RunRequest, submit, wait_until_finished
from worker.views import attempt_view, run_view

bp = Blueprint("runs", __name__, url_prefix="/v1/runs")
bp.before_request(require_key)


@bp.post("")
def create_run() -> tuple[Response, int, dict[str, str]]:
    body = json_body(RunCreate)
    wait = query(WaitQuery).wait
    rt, tenant_id = runtime(), principal().tenant_id
    request = RunRequest(
        agent=body.agent, input=body.input, timeout_s=body.timeout_s,
        max_attempts=body.max_attempts, session_id=body.session_id,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        metadata=body.metadata, request_id=g.request_id,
    )
    run = submit(rt, tenant_id=tenant_id, request=request)
    g.run_id = run.id
    if wait > 0:
        run = wait_until_finished(rt, tenant_id=tenant_id, run_id=run.id, timeout_s=wait)
    finished = RunStatus(run.status).is_terminal
    location = url_for("runs.get_run", run_id=run.id)
    return jsonify(run_view(run)), 200 if finished else 202, {"Location": location}


@bp.get("/<run_id>")
def get_run(run_id: str) -> tuple[Response, dict[str, str]]:
    g.run_id = run_id
    with runtime().db.transaction() as session:
        run = runs.get(session, tenant_id=principal().tenant_id, run_id=run_id)
    headers = {} if RunStatus(run.status).is_terminal else {"Retry-After": "2"}
    return jsonify(run_view(run)), headers


@bp.get("")
def list_runs() -> Response:
    q = query(RunListQuery)
    where = runs.RunFilter(status=q.status, agent=q.agent, session_id=q.session_id)
    with runtime().db.transaction() as session:
        items, last = runs.page(session, tenant_id=principal().tenant_id, where=where,
                                limit=q.limit, before=_decode_cursor(q.cursor))
    return jsonify({"items": [run_view(run) for run in items],
                    "next_cursor": _encode_cursor(last)})


@bp.post("/<run_id>/cancel")
def cancel_run(run_id: str) -> tuple[Response, int]:
    g.run_id = run_id
    rt = runtime()
    with rt.db.transaction() as session:
        outcome = runs.cancel(session, tenant_id=principal().tenant_id, run_id=run_id)
    if outcome.notify_worker:
        rt.bus.request_cancel(run_id)
    return jsonify(run_view(outcome.run)), 202


@bp.post("/<run_id>/replay")
def replay_run(run_id: str) -> tuple[Response, int, dict[str, str]]:
    g.run_id = run_id
    rt = runtime()
    with rt.db.transaction() as session:
        run = runs.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        runs.replay(session, run=run)
    dispatch.dispatch(rt, Dispatch(run.id, run.queue, run.timeout_s))
    return jsonify(run_view(run)), 202, {"Location": url_for("runs.get_run", run_id=run.id)}


@bp.get("/<run_id>/attempts")
def list_attempts(run_id: str) -> Response:
    g.run_id = run_id
    with runtime().db.transaction() as session:
        runs.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        items = attempts.attempts(session, run_id=run_id)
    return jsonify({"items": [attempt_view(item) for item in items]})


def _encode_cursor(run_id: str | None) -> str | None:
    if run_id is None:
        return None
    return base64.urlsafe_b64encode(run_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        run_id = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        run_id = ""
    if run_id.startswith("run_"):
        return run_id
    raise InvalidRequest("the cursor is not valid", [
            {"field": "cursor", "message": "pass next_cursor from a previous page unchanged"}
        ])
