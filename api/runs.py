"""``/v1/runs``: submit runs, read them, list them."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, url_for

from api import pagination
from api.auth import require_key
from api.bodies import json_body, query
from api.deps import principal, runtime
from api.idempotency import idempotent
from api.schemas import ChildrenQuery, RunCreate, RunListQuery, WaitQuery
from worker.base.models import Run, RunStatus
from worker.base.queues import Dispatch
from worker.runs import admission, attempts, dispatch, steps, store
from worker.runs.submission import RunRequest, submit, wait_until_finished
from worker.runs.views import attempt_view, run_view, step_view

bp = Blueprint("runs", __name__, url_prefix="/v1/runs")
bp.before_request(require_key)


@bp.post("")
@idempotent
def create_run() -> tuple[Response, int, dict[str, str]]:
    body = json_body(RunCreate)
    wait = query(WaitQuery).wait
    rt, tenant_id = runtime(), principal().tenant_id
    request = RunRequest(
        agent=body.agent, input=body.input, timeout_s=body.timeout_s,
        max_attempts=body.max_attempts, session_id=body.session_id,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        metadata=body.metadata, request_id=g.request_id, multitask=body.multitask,
        priority=body.priority, start_at=body.start_at, delay_s=body.delay_s,
        ttl_s=body.ttl_s, concurrency_key=body.concurrency_key,
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
    rt = runtime()
    with rt.db.autocommit() as session:
        run = store.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        view = run_view(run)
        if run.children:
            view["children"] = store.children_by_status(session, run_id=run.id)
        if run.status == RunStatus.QUEUED:
            view["waiting_for"] = store.waiting_for(
                session, run=run, running_cap=rt.settings.tenant_max_running)
    headers = {} if RunStatus(run.status).is_terminal else {"Retry-After": "2"}
    return jsonify(view), headers


@bp.get("")
def list_runs() -> Response:
    q = query(RunListQuery)
    where = store.RunFilter(status=q.status, agent=q.agent, session_id=q.session_id,
                            parent_id=q.parent_id, batch_id=q.batch_id)
    with runtime().db.autocommit() as session:
        items, last = store.page(session, tenant_id=principal().tenant_id, where=where,
                                limit=q.limit, before=pagination.decode(q.cursor, prefix="run_"))
    return jsonify({"items": [run_view(run) for run in items],
                    "next_cursor": pagination.encode(last)})


@bp.post("/<run_id>/cancel")
def cancel_run(run_id: str) -> tuple[Response, int]:
    g.run_id = run_id
    rt = runtime()
    with rt.db.transaction() as session:
        outcome = store.cancel(session, tenant_id=principal().tenant_id, run_id=run_id)
    if outcome.notify_worker:
        rt.bus.request_cancel(run_id)
    return jsonify(run_view(outcome.run)), 202


@bp.post("/<run_id>/replay")
def replay_run(run_id: str) -> tuple[Response, int, dict[str, str]]:
    g.run_id = run_id
    rt = runtime()
    tenant_id, caps = principal().tenant_id, admission.Caps.of(rt.settings)

    def replay() -> Run:
        with rt.db.transaction() as session:
            run = store.get(session, tenant_id=tenant_id, run_id=run_id)
            return store.replay(session, run=run, caps=caps)

    run = admission.admitted(rt.db, tenant_id=tenant_id, caps=caps, store=replay)
    dispatch.dispatch(rt, Dispatch.of(run))
    return jsonify(run_view(run)), 202, {"Location": url_for("runs.get_run", run_id=run.id)}


@bp.get("/<run_id>/children")
def list_children(run_id: str) -> Response:
    """The run's children (``ctx.start``), oldest first, paged."""
    q = query(ChildrenQuery)
    tenant_id = principal().tenant_id
    with runtime().db.autocommit() as session:
        store.get(session, tenant_id=tenant_id, run_id=run_id)  # 404 for another tenant's
        items, last = store.children(session, tenant_id=tenant_id, run_id=run_id,
                                     limit=q.limit,
                                     after=pagination.decode(q.cursor, prefix="run_"))
    return jsonify({"items": [run_view(run) for run in items],
                    "next_cursor": pagination.encode(last)})


@bp.get("/<run_id>/attempts")
def list_attempts(run_id: str) -> Response:
    g.run_id = run_id
    with runtime().db.transaction() as session:
        store.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        items = attempts.attempts(session, run_id=run_id)
    return jsonify({"items": [attempt_view(item) for item in items]})


@bp.get("/<run_id>/steps")
def list_steps(run_id: str) -> Response:
    g.run_id = run_id
    with runtime().db.autocommit() as session:
        store.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        items = steps.listed(session, run_id=run_id)
    return jsonify({"items": [step_view(item) for item in items]})
