"""The dashboard's pages and actions (see ``api.dashboard`` for how sign-in works)."""

from __future__ import annotations

import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers.response import Response as BaseResponse

from api import events as event_stream
from api.deps import principal, runtime
from api.hook_sources import source_view
from worker import dispatch, inbound, keys, observe, runs, steps, webhooks
from worker.attempts import Dispatch, attempts
from worker.errors import AgentqError, Conflict, InvalidRequest, NotFound
from worker.models import RunStatus
from worker.submission import RunRequest, submit
from worker.views import (
    attempt_view,
    delivery_attempt_view,
    delivery_view,
    endpoint_view,
    run_view,
    step_view,
)

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")

F = TypeVar("F", bound=Callable[..., Any])
PUBLIC = frozenset({"dashboard.sign_in", "dashboard.static"})
SINCE = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1),
         "7d": timedelta(days=7)}
PAGE = 50


# Signing in, the session, CSRF ------------------------------------------------------------

@bp.before_request
def signed_in() -> BaseResponse | None:
    g.dashboard = True
    if request.endpoint in PUBLIC:
        return None
    key_id = session.get("key_id")
    caller = _live_key(str(key_id)) if key_id else None
    if caller is None:  # never signed in, signed out, or the key was revoked since
        session.clear()
        if request.method == "GET" and request.endpoint != "dashboard.run_events":
            return redirect(url_for("dashboard.sign_in", next=request.full_path.rstrip("?")))
        abort(401)
    g.principal = caller
    if request.method == "POST":
        _check_csrf()
    return None


def _live_key(key_id: str) -> keys.Principal | None:
    """The session's key, if still live: remembered per process as the JSON API's keys are,
    so a revocation (which clears every process's memory) ends the session at once."""
    cache, slot = runtime().key_cache(), f"id:{key_id}"
    caller = cache.get(slot)
    if caller is None:
        with runtime().db.autocommit() as db:
            caller = keys.live_key(db, key_id=key_id)
        if caller is not None:
            cache.put(slot, caller)
    return caller


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _check_csrf() -> None:
    sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    if not hmac.compare_digest(sent.encode(), csrf_token().encode()):
        abort(403, "the form's CSRF token is missing or stale; reload the page and try again")


@bp.app_context_processor
def template_helpers() -> dict[str, Any]:
    if not g.get("dashboard"):
        return {}
    caller = g.get("principal")
    return {"csrf_token": csrf_token, "scopes": caller.scopes if caller else frozenset(),
            "READ": keys.READ, "WRITE": keys.WRITE, "ADMIN": keys.ADMIN}


def needs(scope: str) -> Callable[[F], F]:
    """The signed-in key must have ``scope`` (as the JSON API asks)."""
    def decorate(view: F) -> F:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if scope not in principal().scopes:
                abort(403, f"this key lacks the {scope!r} scope")
            return view(*args, **kwargs)
        return checked  # type: ignore[return-value]
    return decorate


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    error = None
    if request.method == "POST":
        _check_csrf()
        token = request.form.get("key", "").strip()
        with runtime().db.autocommit() as db:
            caller = keys.authenticate(db, token=token) if token else None
        if caller is None:
            error = "That key is not valid (unknown, revoked, or mistyped)."
        else:
            session.clear()  # a fresh session (and CSRF token) for the signed-in key
            session.permanent = True
            session["key_id"] = caller.key_id
            csrf_token()
            return redirect(_local(request.args.get("next", ""))
                            or url_for("dashboard.runs_page"))
    return render_template("dashboard/sign_in.html", error=error), 401 if error else 200


def _local(target: str) -> str:
    """``target`` if it is a path on this site (no open redirects), else ''."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else ""


@bp.after_request
def headers(response: Response) -> Response:
    """Nothing runs or loads from elsewhere; no framing; no caching of tenant data."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    session.clear()
    return redirect(url_for("dashboard.sign_in"))


@bp.errorhandler(NotFound)
def not_found(error: NotFound) -> tuple[str, int]:
    return render_template("dashboard/error.html", title="Not found", message=str(error)), 404


@bp.errorhandler(403)
@bp.errorhandler(401)
@bp.errorhandler(404)
def refused(error: Any) -> tuple[str, int]:
    return render_template("dashboard/error.html", title=error.name,
                           message=error.description), error.code


# Runs ---------------------------------------------------------------------------------------

@bp.get("/")
def home() -> BaseResponse:
    return redirect(url_for("dashboard.runs_page"))


def _filters() -> tuple[runs.RunFilter, dict[str, str]]:
    chosen = {name: request.args.get(name, "").strip()
              for name in ("status", "agent", "session_id", "since")}
    status = chosen["status"] if chosen["status"] in {s.value for s in RunStatus} else None
    since = SINCE.get(chosen["since"])
    where = runs.RunFilter(status=RunStatus(status) if status else None,
                           agent=chosen["agent"] or None,
                           session_id=chosen["session_id"] or None,
                           since=datetime.now(UTC) - since if since else None)
    return where, chosen


def _runs(where: runs.RunFilter) -> list[dict[str, Any]]:
    with runtime().db.autocommit() as db:
        items, _ = runs.page(db, tenant_id=principal().tenant_id, where=where, limit=PAGE,
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
    try:
        run = submit(runtime(), tenant_id=principal().tenant_id, request=RunRequest(
            agent=agent, input=value, priority=request.form.get("priority") or "normal",
            request_id=g.get("request_id")))
    except (InvalidRequest, Conflict, AgentqError) as error:
        details = "; ".join(f"{e['field']}: {e['message']}"
                            for e in getattr(error, "errors", []) or [])
        flash(f"{error}{' — ' + details if details and details != str(error) else ''}",
              "error")
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
        run = runs.get(db, tenant_id=tenant_id, run_id=run_id)
        return {
            "run": run_view(run),
            "last_seq": run.last_seq,
            "terminal": RunStatus(run.status).is_terminal,
            "replayable": run.status in runs.REPLAYABLE,
            "attempts": [attempt_view(a) for a in attempts(db, run_id=run_id)],
            "steps": [step_view(s) for s in steps.listed(db, run_id=run_id)],
            "deliveries": [delivery_view(d) for d in
                           webhooks.deliveries(db, tenant_id=tenant_id, run_id=run_id)],
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
        runs.get(db, tenant_id=principal().tenant_id, run_id=run_id)
    return event_stream.stream(rt, run_id, event_stream.resume_point())


@bp.post("/runs/<run_id>/cancel")
@needs(keys.WRITE)
def cancel_run(run_id: str) -> BaseResponse:
    rt = runtime()
    try:
        with rt.db.transaction() as db:
            outcome = runs.cancel(db, tenant_id=principal().tenant_id, run_id=run_id)
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
    except Conflict as error:
        flash(str(error), "error")
    else:
        flash("Run queued again.", "ok")
    return redirect(_local(request.form.get("back", ""))
                    or url_for("dashboard.run_page", run_id=run_id))


def _replay(run_ids: list[str]) -> int:
    rt = runtime()
    replayed = []
    with rt.db.transaction() as db:
        for run_id in run_ids:
            run = runs.get(db, tenant_id=principal().tenant_id, run_id=run_id)
            runs.replay(db, run=run)
            replayed.append(Dispatch(run.id, run.queue, run.timeout_s))
    for item in replayed:
        dispatch.dispatch(rt, item)
    return len(replayed)


# Dead letters ---------------------------------------------------------------------------------

@bp.get("/dead-letters")
@needs(keys.READ)
def dead_letters() -> str:
    with runtime().db.autocommit() as db:
        dead = [run_view(run) for run in
                runs.dead_letters(db, tenant_id=principal().tenant_id, limit=200)]
    return render_template("dashboard/dead_letters.html", runs=dead)


@bp.post("/dead-letters/replay-all")
@needs(keys.WRITE)
def replay_all() -> BaseResponse:
    with runtime().db.autocommit() as db:
        ids = [run.id for run in runs.dead_letters(db, tenant_id=principal().tenant_id)]
    flash(f"{_replay(ids)} dead-lettered run(s) queued again.", "ok")
    return redirect(url_for("dashboard.dead_letters"))


# Webhooks and hook sources ------------------------------------------------------------------

@bp.get("/webhooks")
@needs(keys.ADMIN)
def webhooks_page(**shown: Any) -> str:
    tenant_id = principal().tenant_id
    with runtime().db.autocommit() as db:
        endpoints = [endpoint_view(e) for e in webhooks.endpoints(db, tenant_id=tenant_id)]
        recent = [delivery_view(d) for d in webhooks.deliveries(db, tenant_id=tenant_id)]
        sources = [{**source_view(s), "url": url_for("hooks.receive", source_id=s.id,
                                                     _external=True)}
                   for s in inbound.sources(db, tenant_id=tenant_id)]
    return render_template("dashboard/webhooks.html", endpoints=endpoints, deliveries=recent,
                           sources=sources, agents=runtime().registry.names(), **shown)


@bp.post("/webhooks/endpoints")
@needs(keys.ADMIN)
def create_endpoint() -> Any:
    rt = runtime()
    events = [e.strip() for e in request.form.get("events", "").split(",") if e.strip()]
    try:
        with rt.db.transaction() as db:
            endpoint = webhooks.create_endpoint(
                db, tenant_id=principal().tenant_id, url=request.form.get("url", "").strip(),
                events=events or None, guard=rt.sender().guard)
            secret = endpoint.secret
    except InvalidRequest as error:
        flash(_describe(error), "error")
        return redirect(url_for("dashboard.webhooks_page"))
    return webhooks_page(new_secret={"for": endpoint.url, "secret": secret})


@bp.post("/webhooks/endpoints/<endpoint_id>/rotate")
@needs(keys.ADMIN)
def rotate_endpoint(endpoint_id: str) -> str:
    rt = runtime()
    with rt.db.transaction() as db:
        endpoint = webhooks.rotate_endpoint_secret(
            db, tenant_id=principal().tenant_id, endpoint_id=endpoint_id,
            overlap_s=rt.settings.webhook_secret_overlap_s)
        shown = {"for": endpoint.url, "secret": endpoint.secret}
    return webhooks_page(new_secret=shown)


@bp.post("/webhooks/endpoints/<endpoint_id>/delete")
@needs(keys.ADMIN)
def delete_endpoint(endpoint_id: str) -> BaseResponse:
    with runtime().db.transaction() as db:
        webhooks.delete_endpoint(db, tenant_id=principal().tenant_id, endpoint_id=endpoint_id)
    flash("Endpoint deleted; its pending deliveries will not be sent.", "ok")
    return redirect(url_for("dashboard.webhooks_page"))


@bp.get("/deliveries/<delivery_id>")
@needs(keys.ADMIN)
def delivery_page(delivery_id: str) -> str:
    with runtime().db.autocommit() as db:
        delivery = webhooks.get_delivery(db, tenant_id=principal().tenant_id,
                                         delivery_id=delivery_id)
        tries = [delivery_attempt_view(a) for a in
                 webhooks.attempts_of(db, delivery_id=delivery_id)]
        return render_template("dashboard/delivery.html", delivery=delivery_view(delivery),
                               attempts=tries)


@bp.post("/deliveries/<delivery_id>/retry")
@needs(keys.ADMIN)
def retry_delivery(delivery_id: str) -> BaseResponse:
    rt = runtime()
    try:
        with rt.db.transaction() as db:
            webhooks.retry(db, tenant_id=principal().tenant_id, delivery_id=delivery_id)
    except Conflict as error:
        flash(str(error), "error")
    else:
        dispatch.dispatch_deliveries(rt, [delivery_id])
        flash("Delivery queued to be sent again.", "ok")
    return redirect(url_for("dashboard.delivery_page", delivery_id=delivery_id))


@bp.post("/hook-sources")
@needs(keys.ADMIN)
def create_source() -> BaseResponse:
    rt = runtime()
    form = request.form
    events = [e.strip() for e in form.get("events", "").split(",") if e.strip()]
    try:
        with rt.db.transaction() as db:
            source = inbound.create_source(
                db, rt=rt, tenant_id=principal().tenant_id, provider=form.get("provider", ""),
                secret=form.get("secret", ""), agent=form.get("agent", ""),
                events=events or None, reply_url=None)
            flash(f"Hook source {source.id} added: point {source.provider} at "
                  f"{url_for('hooks.receive', source_id=source.id, _external=True)}", "ok")
    except (InvalidRequest, KeyError) as error:
        flash(_describe(error) if isinstance(error, InvalidRequest)
              else f"unknown provider {form.get('provider')!r}", "error")
    return redirect(url_for("dashboard.webhooks_page"))


@bp.post("/hook-sources/<source_id>/rotate")
@needs(keys.ADMIN)
def rotate_source(source_id: str) -> BaseResponse:
    rt = runtime()
    try:
        with rt.db.transaction() as db:
            inbound.rotate_secret(db, tenant_id=principal().tenant_id, source_id=source_id,
                                  secret=request.form.get("secret", ""),
                                  overlap_s=rt.settings.webhook_secret_overlap_s)
    except InvalidRequest as error:
        flash(_describe(error), "error")
    else:
        flash("Hook source secret rotated; the previous one is accepted for a while yet.",
              "ok")
    return redirect(url_for("dashboard.webhooks_page"))


@bp.post("/hook-sources/<source_id>/delete")
@needs(keys.ADMIN)
def delete_source(source_id: str) -> BaseResponse:
    with runtime().db.transaction() as db:
        inbound.delete_source(db, tenant_id=principal().tenant_id, source_id=source_id)
    flash("Hook source deleted.", "ok")
    return redirect(url_for("dashboard.webhooks_page"))


def _describe(error: InvalidRequest) -> str:
    details = "; ".join(f"{e['field']}: {e['message']}" for e in error.errors or [])
    return f"{error} ({details})" if details else str(error)


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
