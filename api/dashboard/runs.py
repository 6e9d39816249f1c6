"""Runs on the dashboard: the live list with its chart of the last hour, starting one, a
run's page with its timeline and events, cancel and replay, its parent and children
(paged), and its waitpoints (answered with a form made from their JSON Schema); dead
letters; the status strip."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, flash, g, jsonify, redirect, render_template, request, url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.wrappers.response import Response as BaseResponse

from api import events as event_stream
from api import pagination
from api.bodies import query
from api.dashboard import pictures
from api.dashboard.access import bp, cursor, describe, form, local, needs
from api.deps import principal, runtime
from api.schemas import EventsQuery, RunCreate, WaitpointComplete
from worker.access import keys
from worker.base.errors import AgentqError, Conflict, InvalidRequest, LimitExceeded, NotFound
from worker.base.models import TERMINAL_STATUSES, Run, RunAttempt, RunStatus, RunStep, Waitpoint
from worker.base.queues import Dispatch
from worker.delivery import webhooks
from worker.runs import admission, dispatch, observe, steps, store, waits
from worker.runs.attempts import attempts
from worker.runs.submission import RunRequest, submit
from worker.runs.views import attempt_view, delivery_view, run_view, step_view

SINCE = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(days=1),
         "7d": timedelta(days=7)}
PAGE = 50
CHILDREN = 50  # a run's children shown on its page, and on each page of them after


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


def _list_page(**extra: Any) -> str:
    where, chosen = _filters()
    return render_template("dashboard/runs.html", runs=_runs(where), chosen=chosen,
                           agents=runtime().registry.names(), chart=_chart(),
                           statuses=[s.value for s in RunStatus], since=list(SINCE), **extra)


@bp.get("/runs")
@needs(keys.READ)
def runs_page() -> str:
    return _list_page()


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
    return _list_page(form={"agent": agent, "input": raw}), 422


# The chart of the last hour: runs ended per minute ----------------------------------------

FAILED = (RunStatus.FAILED, RunStatus.DEAD_LETTERED)  # as the status strip's Failures/min
OTHER = (RunStatus.CANCELLED, RunStatus.EXPIRED)


def _ended_per_minute(db: Session, *, tenant_id: str) -> pictures.Chart:
    """The tenant's runs ended in each of the last 60 minutes, in one grouped query: a
    range of ix_runs_tenant_id_finished_at, so its cost is the hour's runs, not all."""
    this_minute = db.scalar(select(func.date_trunc("minute", func.now())))
    assert this_minute is not None
    minute = func.date_trunc("minute", Run.finished_at)
    rows = db.execute(
        select(minute, func.count().filter(Run.status == RunStatus.SUCCEEDED),
               func.count().filter(Run.status.in_(FAILED)),
               func.count().filter(Run.status.in_(OTHER)))
        .where(Run.tenant_id == tenant_id,
               Run.finished_at >= this_minute - timedelta(minutes=pictures.MINUTES - 1),
               Run.status.in_(list(TERMINAL_STATUSES)))
        .group_by(minute))
    return pictures.per_minute({at: pictures.Ended(int(ok), int(failed), int(other))
                                for at, ok, failed, other in rows}, this_minute=this_minute)


def _chart() -> pictures.Chart:
    with runtime().db.autocommit() as db:
        return _ended_per_minute(db, tenant_id=principal().tenant_id)


@bp.get("/runs/chart")
@needs(keys.READ)
def runs_chart() -> str:
    """The chart alone, for the runs page to redraw it."""
    return render_template("dashboard/_runs_chart.html", chart=_chart())


# A run's page ---------------------------------------------------------------------------------

def _waterfall(tried: Iterable[RunAttempt], stored: Iterable[Any]) -> pictures.Waterfall | None:
    """The run's timeline from its attempts and its steps (RunSteps, or rows of their
    name, attempt, finished_at, duration_ms and usage)."""
    return pictures.waterfall(
        [pictures.Attempt(a.attempt, a.started_at, a.finished_at, a.outcome) for a in tried],
        [pictures.Step(s.name, s.attempt, s.finished_at, s.duration_ms, s.usage)
         for s in stored], now=datetime.now(UTC))


def _run_details(run_id: str, answer: Answer | None = None) -> dict[str, Any]:
    tenant_id = principal().tenant_id
    with runtime().db.autocommit() as db:
        run = store.get(db, tenant_id=tenant_id, run_id=run_id)
        tried, stored = attempts(db, run_id=run_id), steps.listed(db, run_id=run_id)
        return {
            **_waitpoints(db, run_id=run_id, answer=answer),
            "run": run_view(run),
            "last_seq": run.last_seq,
            "terminal": RunStatus(run.status).is_terminal,
            "replayable": run.status in store.REPLAYABLE,
            "attempts": [attempt_view(a) for a in tried],
            "steps": [step_view(s) for s in stored],
            "timeline": _waterfall(tried, stored),
            **_family(db, run),
            "deliveries": [delivery_view(d) for d in  # receivers' URLs and answers: admin
                           webhooks.deliveries(db, tenant_id=tenant_id, run_id=run_id)]
            if keys.ADMIN in principal().scopes else None,
        }


def _kin(db: Session, run: Run) -> dict[str, Any]:
    """The run's parent and root (id, agent, status) if it is a child; just the id of one
    that is gone."""
    if run.parent_id is None:
        return {"parent": None, "root": None}
    wanted = {run.parent_id, run.root_id or run.parent_id}
    found = {row.id: row._asdict() for row in db.execute(
        select(Run.id, Run.agent, Run.status)
        .where(Run.tenant_id == run.tenant_id, Run.id.in_(wanted)))}
    return {"parent": found.get(run.parent_id, {"id": run.parent_id}),
            "root": found.get(run.root_id or run.parent_id, {"id": run.root_id})}


def _children(db: Session, run: Run, *, after: str | None) -> dict[str, Any]:
    """A page of the run's children (``CHILDREN`` of them) after ``after``, with how many
    it has in each status, how many come after this page, and the cursor to them."""
    if not run.children:
        return {"children": [], "counts": [], "more": 0, "next_cursor": None}
    by_status = store.children_by_status(db, run_id=run.id)
    items, last = store.children(db, tenant_id=run.tenant_id, run_id=run.id,
                                 limit=CHILDREN, after=after)
    before = 0 if after is None else int(db.scalar(  # the earlier pages' children
        select(func.count()).where(Run.parent_id == run.id, Run.id <= after)) or 0)
    return {"children": [run_view(child) for child in items],
            "counts": [(s.value, by_status[s.value]) for s in RunStatus if s.value in by_status],
            "more": sum(by_status.values()) - before - len(items),
            "next_cursor": pagination.encode(last)}


def _family(db: Session, run: Run) -> dict[str, Any]:
    """The run's place in its tree: its parent and root, and its first children."""
    return {**_kin(db, run), **_children(db, run, after=None)}


@bp.get("/runs/<run_id>")
@needs(keys.READ)
def run_page(run_id: str) -> str:
    return render_template("dashboard/run.html", **_run_details(run_id))


@bp.get("/runs/<run_id>/waitpoints")
@needs(keys.READ)
def run_waitpoints(run_id: str) -> str:
    """The run's waitpoints alone, for the page to refresh them when they change."""
    with runtime().db.autocommit() as db:
        run = store.get(db, tenant_id=principal().tenant_id, run_id=run_id)
        found = _waitpoints(db, run_id=run.id, answer=None)
    return render_template("dashboard/_waitpoints.html", run={"id": run_id}, **found)


@bp.get("/runs/<run_id>/panel")
@needs(keys.READ)
def run_panel(run_id: str) -> str:
    return render_template("dashboard/_run_panel.html", **_run_details(run_id))


@bp.get("/runs/<run_id>/children")
@needs(keys.READ)
def run_children(run_id: str) -> str:
    """A page of the run's children, oldest first, from the cursor its page links to."""
    after = cursor("run_")
    with runtime().db.autocommit() as db:
        run = store.get(db, tenant_id=principal().tenant_id, run_id=run_id)
        family = _children(db, run, after=after)
    return render_template("dashboard/run_children.html", run=run_view(run),
                           paged=after is not None, **family)


@bp.get("/runs/<run_id>/timeline")
@needs(keys.READ)
def run_timeline(run_id: str) -> str:
    """The run's timeline alone, for the page to redraw it as steps finish (read without
    the steps' results: it is fetched again after each of them)."""
    with runtime().db.autocommit() as db:
        store.get(db, tenant_id=principal().tenant_id, run_id=run_id)
        stored = db.execute(select(RunStep.name, RunStep.attempt, RunStep.finished_at,
                                   RunStep.duration_ms, RunStep.usage)
                            .where(RunStep.run_id == run_id)).all()
        timeline = _waterfall(attempts(db, run_id=run_id), stored)
    return render_template("dashboard/_run_timeline.html", timeline=timeline)


@bp.get("/runs/<run_id>/events")
@needs(keys.READ)
def run_events(run_id: str) -> Response:
    """The run's events, live (SSE, resuming after Last-Event-ID), for this page's
    EventSource: the JSON API's stream, behind the session cookie; with ``?tokens=1`` the
    streamed LLM calls' text too, as it is written (``token`` / ``token.reset`` frames)."""
    rt = runtime()
    after, tokens = event_stream.resume_point(), query(EventsQuery).tokens
    with rt.db.autocommit() as db:
        store.get(db, tenant_id=principal().tenant_id, run_id=run_id)
    return event_stream.stream(rt, run_id, after, caller=principal(), tokens=tokens)


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


# Waitpoints: a run's page answers its ctx.wait_for with a form ----------------------------

FIELD = "field:"  # a generated input's name: this, then the property's name


@dataclass
class Field:
    """One input of a waitpoint's form: a property of its (object) schema."""

    key: str  # the property
    label: str
    hint: str | None
    widget: str  # checkbox, text, number, select or json
    required: bool
    nullable: bool  # an empty input means null
    step: str | None = None  # a number's: "1" for an integer
    minimum: Any = None
    maximum: Any = None
    options: list[tuple[str, str]] = field(default_factory=list)  # a select's (value, label)
    value: str = ""
    checked: bool = False
    invalid: bool = False

    @property
    def input(self) -> str:
        return FIELD + self.key


@dataclass(frozen=True)
class Answer:
    """What was sent for waitpoint ``name`` and refused, shown again with why."""

    name: str
    values: Mapping[str, str]
    errors: list[dict[str, Any]]


def _follow(root: dict[str, Any], spec: Any) -> Any:
    """``spec`` with a local ``$ref`` (pydantic's ``#/$defs/...``) followed."""
    for _ in range(8):
        ref = spec.get("$ref") if isinstance(spec, dict) else None
        if not isinstance(ref, str):
            break
        target: Any = root
        for part in ref.removeprefix("#").strip("/").split("/") if ref.startswith("#") else [""]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) and part else None
        if not isinstance(target, dict):
            return {}
        spec = {**target, **{k: v for k, v in spec.items() if k != "$ref"}}
    return spec


def _field(root: dict[str, Any], key: str, spec: Any, *, required: bool) -> Field:
    spec = _follow(root, spec)
    spec = spec if isinstance(spec, dict) else {}
    nullable = False
    branches = spec.get("anyOf", spec.get("oneOf"))
    if isinstance(branches, list) and "type" not in spec and "enum" not in spec:
        # pydantic's ``X | None``: anyOf [X, {"type": "null"}]
        followed = [_follow(root, branch) for branch in branches]
        nulls = [b for b in followed if isinstance(b, dict) and b.get("type") == "null"]
        rest = [b for b in followed if not (isinstance(b, dict) and b.get("type") == "null")]
        if nulls and len(rest) == 1 and isinstance(rest[0], dict):
            outer = {k: v for k, v in spec.items() if k not in ("anyOf", "oneOf")}
            spec, nullable = {**rest[0], **outer}, True
    kinds = spec.get("type")
    types = [kinds] if isinstance(kinds, str) else list(kinds) if isinstance(kinds, list) else []
    nullable = nullable or "null" in types
    base = sorted({t for t in types if t != "null"})
    title, hint = spec.get("title"), spec.get("description")
    made = Field(key=key, label=title if isinstance(title, str) and title else key,
                 hint=hint if isinstance(hint, str) else None, widget="json",
                 required=required, nullable=nullable)
    default, has_default = spec.get("default"), "default" in spec
    enum = spec.get("enum")
    if base == ["boolean"] and not isinstance(enum, list):
        if not nullable:
            made.widget, made.checked = "checkbox", default is True
            return made
        enum = [True, False]
    if isinstance(enum, list) and enum:
        made.nullable = nullable = nullable or None in enum
        made.widget = "select"
        if nullable or not required:
            made.options.append(("", "null" if nullable else "(leave out)"))
        made.options += [(json.dumps(v), v if isinstance(v, str) else json.dumps(v))
                         for v in enum if v is not None]
        if has_default and default in enum:
            made.value = "" if default is None else json.dumps(default)
        else:
            made.value = made.options[0][0]
    elif base == ["string"]:
        made.widget, made.value = "text", default if isinstance(default, str) else ""
    elif base in (["integer"], ["number"], ["integer", "number"]):
        made.widget, made.step = "number", "1" if base == ["integer"] else "any"
        made.minimum, made.maximum = _bound(spec.get("minimum")), _bound(spec.get("maximum"))
        if isinstance(default, int | float) and not isinstance(default, bool):
            made.value = str(default)
    elif has_default:
        made.value = json.dumps(default)
    return made


def _bound(value: Any) -> Any:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fields(schema: dict[str, Any] | None) -> list[Field] | None:
    """The form's inputs for an object schema with ``properties``; None for any other
    schema (or none): that is answered as raw JSON."""
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties")
    kind = schema.get("type")
    if kind != "object" and not (isinstance(kind, list) and kind == ["object"]):
        return None
    if not isinstance(properties, dict) or not properties:
        return None
    required = schema.get("required")
    needed = [key for key in required if key in properties] \
        if isinstance(required, list) else []
    # Stored as JSONB, the schema's properties lost their order (shorter keys come first):
    # the required ones go first in the order "required" lists them, then the others by name.
    order = {key: i for i, key in reversed(list(enumerate(needed)))}
    keys_ = sorted(properties, key=lambda key: (order.get(key, len(order)), str(key)))
    return [_field(schema, str(key), properties[key], required=key in order)
            for key in keys_]


def _refill(fields: list[Field], values: Mapping[str, str],
            errors: list[dict[str, Any]]) -> None:
    """The inputs as they were sent, those the errors name marked invalid."""
    named = {str(e.get("field", "")) for e in errors}
    for item in fields:
        item.value, item.checked = values.get(item.input, ""), item.input in values
        item.invalid = any(f == f"data.{item.key}" or f.startswith(f"data.{item.key}.")
                           for f in named)


def _number(raw: str) -> int | float:
    if re.fullmatch(r"-?[0-9]+", raw):
        return int(raw)  # ValueError past 4,300 digits
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value


def _read(schema: dict[str, Any] | None, values: Mapping[str, str]) -> Any:
    """The data a waitpoint's form sent, or InvalidRequest saying which inputs cannot be
    read (whether it matches the schema is ``waits.complete``'s to say)."""
    fields = _fields(schema)
    problems: list[dict[str, Any]] = []
    if fields is None:
        raw, data = values.get("data", "").strip(), None
        try:
            if not raw:
                raise ValueError("it is empty: enter the data as JSON")
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            problems.append({"field": "data", "message": f"is not JSON: {error.msg} (line "
                                                         f"{error.lineno}, column {error.colno})"})
        except (ValueError, RecursionError) as error:
            problems.append({"field": "data", "message": f"cannot be read: {error}"})
    else:
        data = {}
        for item in fields:
            path, raw = f"data.{item.key}", values.get(item.input, "")
            if item.widget == "checkbox":
                data[item.key] = item.input in values
                continue
            if item.widget != "text":
                raw = raw.strip()
            if raw == "":
                if item.nullable:
                    data[item.key] = None
                elif item.widget == "text" and item.required:
                    data[item.key] = ""
                continue  # left out: the schema says whether it may be
            try:
                if item.widget == "text":
                    data[item.key] = raw
                elif item.widget == "number":
                    data[item.key] = _number(raw)
                else:
                    data[item.key] = json.loads(raw)
            except (ValueError, RecursionError):
                problems.append({"field": path, "message": {
                    "number": "is not a number", "select": "is not one of the choices"}.get(
                    item.widget, "is not JSON")})
    if problems:
        noun = "input cannot" if len(problems) == 1 else "inputs cannot"
        raise InvalidRequest(f"{len(problems)} {noun} be read; see below", problems)
    return form(WaitpointComplete, data=data).data


def _waitpoints(db: Session, *, run_id: str, answer: Answer | None) -> dict[str, Any]:
    """The run's waitpoints for its page (each waiting one with its form), and a version
    that changes when any of them does (so the page refreshes them only then)."""
    points = waits.listed(db, run_id=run_id)
    now = datetime.now(UTC)
    views = [_waitpoint(point, now=now, answer=answer if answer and answer.name ==
                        point.name else None) for point in points]
    version = hashlib.sha256("|".join(f"{p.id}:{p.status}" for p in points).encode())
    return {"waitpoints": views, "waitpoints_version": version.hexdigest()[:16]}


def _waitpoint(point: Waitpoint, *, now: datetime, answer: Answer | None) -> dict[str, Any]:
    view = waits.waitpoint_view(point, url=None)
    fields = _fields(point.schema)
    view.update(due=point.deadline <= now, fields=fields, errors=[], raw="{}")
    if point.schema is not None and fields is None:
        default = point.schema.get("default", ...)
        view["raw"] = "" if default is ... and point.schema.get("type") != "object" \
            else json.dumps({} if default is ... else default, indent=2)
    if answer is not None:
        view["errors"] = answer.errors
        view["raw"] = answer.values.get("data", "")
        if fields is not None:
            _refill(fields, answer.values, answer.errors)
    return view


@bp.post("/runs/<run_id>/waitpoints/<path:name>")
@needs(keys.WRITE)
def answer_waitpoint(run_id: str, name: str) -> Any:
    """Complete the waitpoint with what its form sent (as the JSON API does), and go back
    to the run's page; a refused answer is shown again there, with why."""
    rt, caller = runtime(), principal()
    values = {key: value for key, value in request.form.items() if key != "csrf"}
    with rt.db.autocommit() as db:
        store.get(db, tenant_id=caller.tenant_id, run_id=run_id)
        point = next((p for p in waits.listed(db, run_id=run_id) if p.name == name), None)
    if point is None:
        raise NotFound("waitpoint", name)
    try:
        data = _read(point.schema, values)
        with rt.db.transaction() as db:
            done = waits.complete(db, tenant_id=caller.tenant_id, run_id=run_id, name=name,
                                  data=data, by=f"dashboard:{caller.key_id}"[:200])
    except InvalidRequest as error:
        flash(str(error), "error")
        errors = error.errors or [{"field": "data", "message": str(error)}]
        return render_template("dashboard/run.html", **_run_details(
            run_id, Answer(name, values, errors))), 422
    except Conflict as error:
        flash(str(error), "error")
        return render_template("dashboard/run.html", **_run_details(run_id)), 409
    if done.dispatch is not None:  # committed: a lost publish is the sweeper's to redo
        dispatch.dispatch(rt, done.dispatch)
    flash(f"Waitpoint {name!r} completed: the run goes on.", "ok")
    return redirect(url_for("dashboard.run_page", run_id=run_id))


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
    tenant_id = principal().tenant_id
    with runtime().db.autocommit() as db:
        now = observe.pulse(db, tenant_id=tenant_id)
        waiting = db.scalar(select(func.count()).select_from(Run).where(
            Run.tenant_id == tenant_id, Run.status == RunStatus.WAITING))
    return jsonify({"workers": _workers_online(), "queued": now.queued, "running": now.running,
                    "waiting": int(waiting or 0), "runs_per_minute": now.ended_per_minute,
                    "failures_per_minute": now.failed_per_minute})
