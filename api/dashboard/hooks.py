"""Webhooks on the dashboard: endpoints (the secret shown once), deliveries with their
attempts and a retry button, and hook sources."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response as BaseResponse

from api.dashboard.access import bp, describe, form, needs
from api.deps import principal, runtime
from api.hook_sources import source_view
from api.schemas import EndpointCreate, HookSourceCreate, HookSourceRotate
from worker.access import keys
from worker.base.errors import Conflict, InvalidRequest
from worker.base.ssrf import Guard
from worker.delivery import webhooks
from worker.inbound import hooks
from worker.runs import outbox
from worker.runs.views import delivery_attempt_view, delivery_view, endpoint_view


@bp.get("/webhooks")
@needs(keys.ADMIN)
def webhooks_page(**shown: Any) -> str:
    tenant_id = principal().tenant_id
    with runtime().db.autocommit() as db:
        endpoints = [endpoint_view(e) for e in webhooks.endpoints(db, tenant_id=tenant_id)]
        recent = [delivery_view(d) for d in webhooks.deliveries(db, tenant_id=tenant_id)]
        sources = [{**source_view(s), "url": url_for("hooks.receive", source_id=s.id,
                                                     _external=True)}
                   for s in hooks.sources(db, tenant_id=tenant_id)]
    return render_template("dashboard/webhooks.html", endpoints=endpoints, deliveries=recent,
                           sources=sources, agents=runtime().registry.names(), **shown)


@bp.post("/webhooks/endpoints")
@needs(keys.ADMIN)
def create_endpoint() -> Any:
    rt = runtime()
    events = [e.strip() for e in request.form.get("events", "").split(",") if e.strip()]
    try:
        body = form(EndpointCreate, url=request.form.get("url", "").strip(),
                    events=events or None)
        with rt.db.transaction() as db:
            endpoint = webhooks.create_endpoint(
                db, tenant_id=principal().tenant_id, url=str(body.url), events=body.events,
                guard=Guard.of(rt.settings))
            secret = endpoint.secret
    except InvalidRequest as error:
        flash(describe(error), "error")
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
        outbox.dispatch(rt, [delivery_id])
        flash("Delivery queued to be sent again.", "ok")
    return redirect(url_for("dashboard.delivery_page", delivery_id=delivery_id))


@bp.post("/hook-sources")
@needs(keys.ADMIN)
def create_source() -> BaseResponse:
    rt = runtime()
    fields = request.form
    events = [e.strip() for e in fields.get("events", "").split(",") if e.strip()]
    try:
        body = form(HookSourceCreate, provider=fields.get("provider", ""),
                    secret=fields.get("secret", ""), agent=fields.get("agent", ""),
                    events=events or None)
        with rt.db.transaction() as db:
            source = hooks.create_source(
                db, rt=rt, tenant_id=principal().tenant_id, provider=body.provider,
                secret=body.secret, agent=body.agent, events=body.events, reply_url=None)
            flash(f"Hook source {source.id} added: point {source.provider} at "
                  f"{url_for('hooks.receive', source_id=source.id, _external=True)}", "ok")
    except InvalidRequest as error:
        flash(describe(error), "error")
    return redirect(url_for("dashboard.webhooks_page"))


@bp.post("/hook-sources/<source_id>/rotate")
@needs(keys.ADMIN)
def rotate_source(source_id: str) -> BaseResponse:
    rt = runtime()
    try:
        with rt.db.transaction() as db:
            body = form(HookSourceRotate, secret=request.form.get("secret", ""))
            hooks.rotate_secret(db, tenant_id=principal().tenant_id, source_id=source_id,
                                  secret=body.secret,
                                  overlap_s=rt.settings.webhook_secret_overlap_s)
    except InvalidRequest as error:
        flash(describe(error), "error")
    else:
        flash("Hook source secret rotated; the previous one is accepted for a while yet.",
              "ok")
    return redirect(url_for("dashboard.webhooks_page"))


@bp.post("/hook-sources/<source_id>/delete")
@needs(keys.ADMIN)
def delete_source(source_id: str) -> BaseResponse:
    with runtime().db.transaction() as db:
        hooks.delete_source(db, tenant_id=principal().tenant_id, source_id=source_id)
    flash("Hook source deleted.", "ok")
    return redirect(url_for("dashboard.webhooks_page"))
