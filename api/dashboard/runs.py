"""Runs on the dashboard: the live list, starting one, a run's page with its events,
cancel and replay; dead letters; the status strip."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, flash, g, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response as BaseResponse

from api import events as event_stream
from api.dashboard.access import bp, describe, form, local, needs
from api.deps import principal, runtime
from api.schemas import RunCreate
from worker.access import keys
from worker.base.errors import AgentqError, Conflict, LimitExceeded
from worker.base.models import RunStatus
from worker.base.queues import Dispatch
from worker.delivery import webhooks
from worker.runs import admission, dispatch, observe, steps, store
from worker.runs.attempts import attempts
from worker.runs.submission import RunRequest, submit
from worker.runs.views import attempt_view, delivery_view, run_view, step_view

SINCE = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1),
         "7d": timedelta(days=7)}
PAGE = 50


# The runs list, a run's page ------------------------------------------------------------------

@bp.get("/")
def home() -> BaseResponse:
    return redirect(url_for("dashboard.runs_page"))


def _filters() -> tuple[store.RunFilter, dict[str, str]]:
    chosen = {name: request.args.get(name, "").strip()
              for name in ("status", "agent", "session_id", "since")}
    status = chosen["status"] if chosen["status"] in {s.value for s in RunStatus} else None
    since = SINCE.get(chosen["since"])
    where = store.RunFilter(status=RunStatus(status) if status else None,
                           agent=chosen["agent"] or None,
                           session_id=chosen["session_id"] or None,
                           since=datetime.now(UTC) - since if since else None)
    return where, chosen


def _runs(where: store.RunFilter) -> list[dict[str, Any]]:
    with runtime().db.autocommit() as db:
        items, _ = store.page(db, tenant_id=principal().tenant_id, where=where, limit=PAGE,
                             before=None)
    return [run_view(run) for run in items]


@bp.get("/runs")
@needs(keys.READ)
def runs_page() -> str:
    where, chosen = _filters()
    return render_template("dashboard/runs.html", runs=_runs(where), chosen=chosen,
                           agents=runtime().registry.names(),
                           statuses=[s.value for s in RunStatus], since=list(SINCE))


@bp.get("/runs/rows")
@needs(keys.READ)
def run_rows() -> str:
    where, _ = _filters()
    return render_template("dashboard/_run_rows.html", runs=_runs(where))


@bp.post("/runs")
@needs(keys.WRITE)
def start_run() -> Any:
    agent = request.form.get("agent", "")
    raw = request.form.get("input", "").strip() or "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        flash(f"The input is not JSON: {error.msg} (line {error.lineno}, column "
              f"{error.colno}).", "error")
        return _back_to_form(agent, raw)
    except (ValueError, RecursionError) as error:  # a number of 5,000 digits, say
        flash(f"The input cannot be read: {error}.", "error")
        return _back_to_form(agent, raw)
    try:
        body = form(RunCreate, agent=agent, input=value,
                    priority=request.form.get("priority") or "normal")
        run = submit(runtime(), tenant_id=principal().tenant_id, request=RunRequest(
            agent=body.agent, input=body.input, priority=body.priority,
            request_id=g.get("request_id")))
    except AgentqError as error:  # an unknown agent, a cap reached, a bad priority, ...
        flash(describe(error), "error")
        return _back_to_form(agent, raw)
    flash(f"Run {run.id} started.", "ok")
    return redirect(url_for("dashboard.run_page", run_id=run.id))


def _back_to_form(agent: str, raw: str) -> tuple[str, int]:
    where, chosen = _filters()
    return render_template("dashboard/runs.html", runs=_runs(where), chosen=chosen,
                           agents=runtime().registry.names(),
                           statuses=[s.value for s in RunStatus], since=list(SINCE),
                           form={"agent": agent, "input": raw}), 422


def _run_details(run_id: str) -> dict[str, Any]:
    tenant_id = principal().tenant_id
    with runtime().db.autocommit() as db:
        run = store.get(db, tenant_id=tenant_id, run_id=run_id)
        return {
            "run": run_view(run),
            "last_seq": run.last_seq,
            "terminal": RunStatus(run.status).is_terminal,
            "replayable": run.status in store.REPLAYABLE,
            "attempts": [attempt_view(a) for a in attempts(db, run_id=run_id)],
            "steps": [step_view(s) for s in steps.listed(db, run_id=run_id)],
            "deliveries": [delivery_view(d) for d in  # receivers' URLs and answers: admin
                           webhooks.deliveries(db, tenant_id=tenant_id, run_id=run_id)]
            if keys.ADMIN in principal().scopes else None,
        }


@bp.get("/runs/<run_id>")
@needs(keys.READ)
def run_page(run_id: str) -> str:
    return render_template("dashboard/run.html", **_run_details(run_id))


@bp.get("/runs/<run_id>/panel")
@needs(keys.READ)
def run_panel(run_id: str) -> str:
    return render_template("dashboard/_run_panel.html", **_run_details(run_id))


@bp.get("/runs/<run_id>/events")
@needs(keys.READ)
def run_events(run_id: str) -> Response:
    """The run's events, live (SSE, resuming after Last-Event-ID), for this page's
    EventSource: the JSON API's stream, behind the session cookie."""
    rt = runtime()
    with rt.db.autocommit() as db:
        store.get(db, tenant_id=principal().tenant_id, run_id=run_id)
    return event_stream.stream(rt, run_id, event_stream.resume_point(), caller=principal())


@bp.post("/runs/<run_id>/cancel")
@needs(keys.WRITE)
def cancel_run(run_id: str) -> BaseResponse:
    rt = runtime()
    try:
        with rt.db.transaction() as db:
            outcome = store.cancel(db, tenant_id=principal().tenant_id, run_id=run_id)
    except Conflict as error:
        flash(str(error), "error")
    else:
        if outcome.notify_worker:
            rt.bus.request_cancel(run_id)
        flash("Cancel requested." if outcome.notify_worker else "Run cancelled.", "ok")
    return redirect(url_for("dashboard.run_page", run_id=run_id))


@bp.post("/runs/<run_id>/replay")
@needs(keys.WRITE)
def replay_run(run_id: str) -> BaseResponse:
    try:
        _replay([run_id])
    except (Conflict, LimitExceeded) as error:
        flash(str(error), "error")
    else:
        flash("Run queued again.", "ok")
    return redirect(local(request.form.get("back", ""))
                    or url_for("dashboard.run_page", run_id=run_id))


def _replay(run_ids: list[str]) -> int:
    rt, tenant_id = runtime(), principal().tenant_id
    caps = admission.Caps.of(rt.settings)

    def replay() -> list[Dispatch]:
        with rt.db.transaction() as db:
            return [Dispatch.of(run) for run in (
                store.replay(db, run=store.get(db, tenant_id=tenant_id, run_id=run_id),
                            caps=caps) for run_id in run_ids)]

    replayed = admission.admitted(rt.db, tenant_id=tenant_id, caps=caps, store=replay)
    for item in replayed:
        dispatch.dispatch(rt, item)
    return len(replayed)


# Dead letters ---------------------------------------------------------------------------------

@bp.get("/dead-letters")
@needs(keys.READ)
def dead_letters() -> str:
    with runtime().db.autocommit() as db:
        dead = [run_view(run) for run in
                store.dead_letters(db, tenant_id=principal().tenant_id, limit=200)]
    return render_template("dashboard/dead_letters.html", runs=dead)


@bp.post("/dead-letters/replay-all")
@needs(keys.WRITE)
def replay_all() -> BaseResponse:
    with runtime().db.autocommit() as db:
        ids = [run.id for run in store.dead_letters(db, tenant_id=principal().tenant_id)]
    try:
        flash(f"{_replay(ids)} dead-lettered run(s) queued again.", "ok")
    except (Conflict, LimitExceeded) as error:  # none is replayed then: try again
        flash(str(error), "error")
    return redirect(url_for("dashboard.dead_letters"))


# The status strip ---------------------------------------------------------------------------

_workers: tuple[float, int] = (0.0, 0)  # (read at, workers online), per process


def _workers_online() -> int:
    """Workers answering a ping, asked at most every 15 s (a ping waits out its timeout)."""
    global _workers
    if time.monotonic() - _workers[0] > 15:
        _workers = (time.monotonic(), len(observe.live_workers(runtime(), timeout_s=0.5)))
    return _workers[1]


@bp.get("/status.json")
@needs(keys.READ)
def status() -> Response:
    with runtime().db.autocommit() as db:
        now = observe.pulse(db, tenant_id=principal().tenant_id)
    return jsonify({"workers": _workers_online(), "queued": now.queued, "running": now.running,
                    "runs_per_minute": now.ended_per_minute,
                    "failures_per_minute": now.failed_per_minute})
