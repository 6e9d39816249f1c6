"""``/v1/schedules``: agents run by cron or every N seconds (fired by beat:
``worker.runs.schedules``)."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, url_for

from api import pagination
from api.auth import require_key
from api.bodies import json_body, query
from api.deps import principal, runtime
from api.idempotency import idempotent
from api.schemas import ScheduleCreate, ScheduleListQuery, ScheduleUpdate
from worker.runs import schedules
from worker.runs.schedules import Spec, schedule_view

bp = Blueprint("schedules", __name__, url_prefix="/v1/schedules")
bp.before_request(require_key)


@bp.post("")
@idempotent
def create_schedule() -> tuple[Response, int, dict[str, str]]:
    body = json_body(ScheduleCreate)
    rt = runtime()
    spec = Spec.of(body)
    with rt.db.transaction() as session:
        schedule = schedules.create(session, rt=rt, tenant_id=principal().tenant_id,
                                    spec=spec)
        view = schedule_view(schedule)
    location = url_for("schedules.get_schedule", schedule_id=view["id"])
    return jsonify(view), 201, {"Location": location}


@bp.get("")
def list_schedules() -> Response:
    q = query(ScheduleListQuery)
    with runtime().db.autocommit() as session:
        items, last = schedules.page(session, tenant_id=principal().tenant_id, limit=q.limit,
                                     before=pagination.decode(q.cursor, prefix="sch_"))
        return jsonify({"items": [schedule_view(item) for item in items],
                        "next_cursor": pagination.encode(last)})


@bp.get("/<schedule_id>")
def get_schedule(schedule_id: str) -> Response:
    with runtime().db.autocommit() as session:
        schedule = schedules.get(session, tenant_id=principal().tenant_id,
                                 schedule_id=schedule_id)
        return jsonify(schedule_view(schedule))


@bp.patch("/<schedule_id>")
def update_schedule(schedule_id: str) -> Response:
    body = json_body(ScheduleUpdate)
    rt = runtime()
    spec = Spec.of(body)
    with rt.db.transaction() as session:
        schedule = schedules.update(session, rt=rt, tenant_id=principal().tenant_id,
                                    schedule_id=schedule_id, spec=spec)
        return jsonify(schedule_view(schedule))


@bp.delete("/<schedule_id>")
def delete_schedule(schedule_id: str) -> tuple[str, int]:
    with runtime().db.transaction() as session:
        schedules.delete(session, tenant_id=principal().tenant_id, schedule_id=schedule_id)
    return "", 204


@bp.post("/<schedule_id>/trigger")
@idempotent
def trigger_schedule(schedule_id: str) -> tuple[Response, int]:
    run = schedules.trigger(runtime(), tenant_id=principal().tenant_id,
                            schedule_id=schedule_id)
    g.run_id = run["id"]
    return jsonify(run), 202
