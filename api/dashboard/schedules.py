"""Schedules on the dashboard: the tenant's schedules, when each fires next and its last
run; creating one, pausing and resuming, firing one now, deleting. The JSON API's model
checks the form and ``worker.runs.schedules`` does the work."""

from __future__ import annotations

import json
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from markupsafe import Markup
from sqlalchemy import select, true
from sqlalchemy.orm import Session
from werkzeug.wrappers.response import Response as BaseResponse

from api import pagination
from api.dashboard.access import bp, cursor, describe, form, needs
from api.deps import principal, runtime
from api.schemas import ScheduleCreate
from worker.access import keys
from worker.base.errors import Conflict, InvalidRequest
from worker.base.models import Run, Schedule
from worker.runs import schedules
from worker.runs.schedules import OVERLAPS, Spec, schedule_view

PAGE = 50
TEXT_FIELDS = ("agent", "input", "priority", "cron", "every_s", "timezone", "overlap",
               "catchup_s")


@bp.get("/schedules")
@needs(keys.READ)
def schedules_page() -> str:
    return _page(sent=None)


def _page(*, sent: dict[str, Any] | None) -> str:
    tenant_id = principal().tenant_id
    before = cursor("sch_")
    with runtime().db.autocommit() as db:
        items, last = schedules.page(db, tenant_id=tenant_id, limit=PAGE, before=before)
        ran = _last_runs(db, tenant_id=tenant_id, schedule_ids=[s.id for s in items])
    listed = [{**schedule_view(s), "last_run": ran.get(s.id)} for s in items]
    return render_template("dashboard/schedules.html", schedules=listed,
                           next_cursor=pagination.encode(last), paged=before is not None,
                           agents=runtime().registry.names(), overlaps=OVERLAPS, form=sent)


def _last_runs(db: Session, *, tenant_id: str,
               schedule_ids: list[str]) -> dict[str, dict[str, str]]:
    """Each schedule's latest run (by the slot it fired for): its id and status."""
    last = (select(Run.id, Run.status)
            .where(Run.tenant_id == tenant_id, Run.schedule_id == Schedule.id)
            .order_by(Run.scheduled_for.desc()).limit(1).lateral("last"))
    rows = db.execute(select(Schedule.id, last.c.id, last.c.status).join(last, true())
                      .where(Schedule.tenant_id == tenant_id, Schedule.id.in_(schedule_ids)))
    return {schedule_id: {"id": run_id, "status": status} for schedule_id, run_id, status in rows}


@bp.post("/schedules")
@needs(keys.WRITE)
def create_schedule() -> Any:
    sent: dict[str, Any] = {name: request.form.get(name, "").strip() for name in TEXT_FIELDS}
    sent["paused"] = "paused" in request.form
    rt = runtime()
    try:
        given = {name: value for name, value in sent.items() if value != ""}  # else defaults
        body = form(ScheduleCreate, **{**given, "input": _input(sent["input"])})
        with rt.db.transaction() as db:
            made = schedules.create(db, rt=rt, tenant_id=principal().tenant_id, spec=Spec.of(body))
            schedule_id = made.id
    except InvalidRequest as error:  # a bad cron or zone, an unknown agent, its input, ...
        flash(describe(error), "error")
        return _page(sent=sent), 422
    flash(f"Schedule {schedule_id} created.", "ok")
    return redirect(url_for("dashboard.schedules_page"))


def _input(raw: str) -> Any:
    """The input box's JSON ({} if empty), or InvalidRequest saying where it is not."""
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError as error:
        message = f"is not JSON: {error.msg} (line {error.lineno}, column {error.colno})"
    except (ValueError, RecursionError) as error:  # a number of 5,000 digits, say
        message = f"cannot be read: {error}"
    raise InvalidRequest(f"input: {message}", [{"field": "input", "message": message}])


@bp.post("/schedules/<schedule_id>/pause")
@needs(keys.WRITE)
def pause_schedule(schedule_id: str) -> BaseResponse:
    return _set_paused(schedule_id, paused=True)


@bp.post("/schedules/<schedule_id>/resume")
@needs(keys.WRITE)
def resume_schedule(schedule_id: str) -> BaseResponse:
    return _set_paused(schedule_id, paused=False)


def _set_paused(schedule_id: str, *, paused: bool) -> BaseResponse:
    rt = runtime()
    try:
        with rt.db.transaction() as db:
            schedules.update(db, rt=rt, tenant_id=principal().tenant_id,
                             schedule_id=schedule_id,
                             spec=Spec(paused=paused, given=frozenset({"paused"})))
    except InvalidRequest as error:  # its agent is no longer deployed, say
        flash(describe(error), "error")
    else:
        flash(f"Schedule {schedule_id} paused." if paused else
              f"Schedule {schedule_id} resumed: it fires from its next slot on.", "ok")
    return redirect(url_for("dashboard.schedules_page"))


@bp.post("/schedules/<schedule_id>/trigger")
@needs(keys.WRITE)
def trigger_schedule(schedule_id: str) -> BaseResponse:
    try:
        run = schedules.trigger(runtime(), tenant_id=principal().tenant_id,
                                schedule_id=schedule_id)
    except (Conflict, InvalidRequest) as error:  # overlap: skip with a run going, say
        flash(describe(error), "error")
    else:
        flash(Markup('Schedule {} fired: run <a href="{}"><code>{}</code></a> started.').format(
            schedule_id, url_for("dashboard.run_page", run_id=run["id"]), run["id"]), "ok")
    return redirect(url_for("dashboard.schedules_page"))


@bp.post("/schedules/<schedule_id>/delete")
@needs(keys.WRITE)
def delete_schedule(schedule_id: str) -> BaseResponse:
    with runtime().db.transaction() as db:
        schedules.delete(db, tenant_id=principal().tenant_id, schedule_id=schedule_id)
    flash(f"Schedule {schedule_id} deleted: it fires no more (its runs are kept).", "ok")
    return redirect(url_for("dashboard.schedules_page"))
