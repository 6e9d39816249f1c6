"""Schedules: an agent run by cron (in a time zone) or every N seconds, fired by beat.

Every ``SCHEDULE_TICK_S`` beat sends ``fire_due``. Each due schedule is taken under its
row's lock (``FOR UPDATE SKIP LOCKED``: two beats, a misconfigured deploy, never work on one
schedule at once), and each slot from its ``next_fire_at`` up to now becomes one run
carrying ``schedule_id`` and ``scheduled_for``. A unique index on the two is the last word:
a slot can never make a second run, whatever the number of beats or triggers. Slots late by
more than ``catchup_s`` (beat was down) are skipped; then ``next_fire_at`` moves to the
first slot after now, in the same transaction as the runs.

``overlap`` decides what a slot does while an earlier run of the schedule has not ended:

- ``skip``: nothing (the slot is passed over);
- ``allow``: a run starts anyway;
- ``buffer_one``: one run waits behind the running one (a second waiting one is skipped);
- ``cancel_other``: the running one is cancelled and the new one starts when it has stopped.

The last two run the schedule's runs in the session named after it (``schedule:<id>``),
which is what makes them wait their turn; their agent's ``ctx.session`` is the schedule's.

Functions that take a session never commit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.base.errors import Conflict, InvalidRequest, NotFound
from worker.base.models import TERMINAL_STATUSES, Run, RunStatus, Schedule, new_id
from worker.base.runtime import Runtime
from worker.runs import admission
from worker.runs.submission import RunRequest, Stored, launch, plan, store_run
from worker.runs.views import iso, run_view

log = logging.getLogger(__name__)

OVERLAPS = ("skip", "buffer_one", "allow", "cancel_other")
SCHEDULE_TICK_S = 1.0  # how often beat looks for due schedules
_DUE_BATCH = 100  # schedules fired per tick at most
_SLOTS_MAX = 100  # slots one schedule fires per tick at most (a long catch-up goes on next)


def _invalid(name: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{name}: {message}", [{"field": name, "message": message}])


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _invalid("timezone", f"{name!r} is not an IANA time zone such as "
                       "'Europe/Paris' or 'UTC'") from None


def check_cron(expression: str) -> None:
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as error:
        raise _invalid("cron", f"{expression!r} is not a cron expression ({error}); for "
                       "example '0 9 * * 1-5' is 9:00 on weekdays") from None


def slots(schedule: Schedule, *, after: datetime) -> Iterator[datetime]:
    """The schedule's slots strictly after ``after``, in order."""
    if schedule.cron is not None:
        for slot in CronSim(schedule.cron, after.astimezone(zone(schedule.timezone))):
            yield slot.astimezone(UTC)
        return
    assert schedule.every_s is not None
    every = timedelta(seconds=schedule.every_s)
    anchor = schedule.created_at
    count = max(0, math.floor((after - anchor) / every) + 1)
    while True:
        slot = anchor + count * every
        if slot > after:
            yield slot
        count += 1


def next_slot(schedule: Schedule, *, after: datetime) -> datetime:
    return next(slots(schedule, after=after))


def schedule_view(schedule: Schedule) -> dict[str, Any]:
    return {
        "id": schedule.id, "agent": schedule.agent, "input": schedule.input,
        "metadata": schedule.meta, "priority": schedule.priority, "cron": schedule.cron,
        "every_s": schedule.every_s, "timezone": schedule.timezone,
        "overlap": schedule.overlap, "catchup_s": schedule.catchup_s,
        "paused": schedule.paused, "next_fire_at": iso(schedule.next_fire_at),
        "last_fired_for": iso(schedule.last_fired_for),
        "created_at": iso(schedule.created_at), "updated_at": iso(schedule.updated_at),
    }


@dataclass(frozen=True)
class Spec:
    """What a schedule is made of (all of it on create; what is given, on update)."""

    agent: str | None = None
    input: Any = None
    metadata: dict[str, Any] | None = None
    priority: str | None = None
    cron: str | None = None
    every_s: float | None = None
    timezone: str | None = None
    overlap: str | None = None
    catchup_s: float | None = None
    paused: bool | None = None
    given: frozenset[str] = field(default_factory=frozenset)  # the fields the client sent

    @classmethod
    def of(cls, body: Any) -> Spec:
        """The spec a validated request body (a pydantic model) gives: what it sent."""
        return cls(**body.model_dump(), given=frozenset(body.model_fields_set))


def _now(session: Session) -> datetime:
    now = session.scalar(select(func.now()))
    assert isinstance(now, datetime)
    return now


def _check(rt: Runtime, schedule: Schedule) -> None:
    """Refuse (422) a schedule whose runs could not be made: its agent, its input."""
    if (schedule.cron is None) == (schedule.every_s is None):
        raise _invalid("cron", "give cron or every_s (one of them)")
    if schedule.cron is not None:
        check_cron(schedule.cron)
    zone(schedule.timezone)
    plan(rt, _request(schedule, scheduled_for=None))  # the agent, the input: as a run's


def create(session: Session, *, rt: Runtime, tenant_id: str, spec: Spec) -> Schedule:
    now = _now(session)
    schedule = Schedule(
        id=new_id("sch"), tenant_id=tenant_id, agent=spec.agent,
        input={} if spec.input is None else spec.input, meta=spec.metadata or {},
        priority=spec.priority or "normal", cron=spec.cron, every_s=spec.every_s,
        timezone=spec.timezone or "UTC", overlap=spec.overlap or "skip",
        catchup_s=60.0 if spec.catchup_s is None else spec.catchup_s,
        paused=bool(spec.paused), created_at=now, updated_at=now)
    _check(rt, schedule)
    schedule.next_fire_at = next_slot(schedule, after=now)
    session.add(schedule)
    session.flush()
    return schedule


def get(session: Session, *, tenant_id: str, schedule_id: str,
        lock: bool = False) -> Schedule:
    query = select(Schedule).where(Schedule.id == schedule_id, Schedule.tenant_id == tenant_id,
                                   Schedule.deleted_at.is_(None))
    schedule = session.scalar(query.with_for_update() if lock else query)
    if schedule is None:
        raise NotFound("schedule", schedule_id)
    return schedule


def page(session: Session, *, tenant_id: str, limit: int,
         before: str | None) -> tuple[list[Schedule], str | None]:
    query = select(Schedule).where(Schedule.tenant_id == tenant_id,
                                   Schedule.deleted_at.is_(None))
    if before is not None:
        query = query.where(Schedule.id < before)
    rows = list(session.scalars(query.order_by(Schedule.id.desc()).limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)


def update(session: Session, *, rt: Runtime, tenant_id: str, schedule_id: str,
           spec: Spec) -> Schedule:
    """Change what was given; a new timing, or a resume, counts from now (what was missed
    while paused is not made up)."""
    schedule = get(session, tenant_id=tenant_id, schedule_id=schedule_id, lock=True)
    given = spec.given
    retimed = bool(given & {"cron", "every_s", "timezone"}) or (
        "paused" in given and schedule.paused and not spec.paused)
    if "cron" in given and spec.cron is not None and "every_s" not in given:
        schedule.every_s = None
    if "every_s" in given and spec.every_s is not None and "cron" not in given:
        schedule.cron = None
    for name in ("agent", "input", "priority", "cron", "every_s", "timezone", "overlap",
                 "catchup_s", "paused"):
        if name in given:
            setattr(schedule, name, getattr(spec, name))
    if "metadata" in given:
        schedule.meta = spec.metadata or {}
    if schedule.input is None:
        schedule.input = {}
    _check(rt, schedule)
    now = _now(session)
    if retimed:
        if schedule.every_s is not None:
            schedule.created_at = now  # every N s from now on
        schedule.next_fire_at = next_slot(schedule, after=now)
    schedule.updated_at = now
    session.flush()
    return schedule


def delete(session: Session, *, tenant_id: str, schedule_id: str) -> None:
    schedule = get(session, tenant_id=tenant_id, schedule_id=schedule_id, lock=True)
    schedule.deleted_at = schedule.updated_at = _now(session)


def _request(schedule: Schedule, *, scheduled_for: datetime | None) -> RunRequest:
    serial = schedule.overlap in ("buffer_one", "cancel_other")
    return RunRequest(
        agent=schedule.agent, input=schedule.input,
        metadata={**schedule.meta, "schedule_id": schedule.id},
        priority=schedule.priority,
        session_id=f"schedule:{schedule.id}" if serial else None,
        multitask="interrupt" if schedule.overlap == "cancel_other" else "enqueue",
        schedule_id=schedule.id, scheduled_for=scheduled_for)


def _going(session: Session, schedule: Schedule, *, not_started: bool = False) -> bool:
    statuses = [RunStatus.SCHEDULED, RunStatus.QUEUED] if not_started else [
        status for status in RunStatus if status not in TERMINAL_STATUSES]
    return bool(session.scalar(select(exists().where(
        Run.tenant_id == schedule.tenant_id, Run.schedule_id == schedule.id,
        Run.status.in_(statuses)))))


def fire(session: Session, *, rt: Runtime, schedule: Schedule,
         slot: datetime) -> Stored | str:
    """Make the slot's run as ``overlap`` says; the Stored run, or why there is none."""
    if schedule.overlap == "skip" and _going(session, schedule):
        return "an earlier run is going (overlap: skip)"
    if schedule.overlap == "buffer_one" and _going(session, schedule, not_started=True):
        return "a run is already waiting its turn (overlap: buffer_one)"
    new = plan(rt, _request(schedule, scheduled_for=slot))
    for counted in (False, True):
        try:
            with session.begin_nested():
                return store_run(rt, session, tenant_id=schedule.tenant_id, new=new)
        except IntegrityError:
            return "this slot was fired already"
        except admission.Full as full:
            if counted:
                return f"the tenant is full: {full}"
            # the tenant's figure is old or says full: count (a transaction of its own)
            admission.recount(rt.db, tenant_id=schedule.tenant_id)
    raise AssertionError("unreachable")


@dataclass
class Fired:
    runs: list[Stored] = field(default_factory=list)
    skipped_since: datetime | None = None


def fire_due(rt: Runtime) -> int:
    """Fire every due slot of every due schedule (beat, each ``SCHEDULE_TICK_S``); the
    number of runs made."""
    with rt.db.autocommit() as session:
        due = list(session.scalars(
            select(Schedule.id)
            .where(Schedule.deleted_at.is_(None), Schedule.paused.is_(False),
                   Schedule.next_fire_at <= func.now())
            .order_by(Schedule.next_fire_at).limit(_DUE_BATCH)))
    made = 0
    for schedule_id in due:
        try:
            made += _fire_one(rt, schedule_id)
        except Exception:  # one schedule's trouble must not stop the others
            log.exception("schedule failed to fire", extra={"schedule_id": schedule_id})
    return made


def _fire_one(rt: Runtime, schedule_id: str) -> int:
    fired = Fired()
    with rt.db.transaction() as session:
        schedule = session.scalar(
            select(Schedule)
            .where(Schedule.id == schedule_id, Schedule.deleted_at.is_(None),
                   Schedule.paused.is_(False), Schedule.next_fire_at <= func.now())
            .with_for_update(skip_locked=True))
        if schedule is None:  # another beat has it, or got there first
            return 0
        now = _now(session)
        assert schedule.next_fire_at is not None
        slot, oldest = schedule.next_fire_at, now - timedelta(seconds=schedule.catchup_s)
        if slot < oldest:  # beat was down: what is older than catchup_s is not made up
            fired.skipped_since = slot
            slot = next_slot(schedule, after=oldest - timedelta(microseconds=1))
        pending: list[datetime] = []
        while slot <= now and len(pending) < _SLOTS_MAX:
            pending.append(slot)
            slot = next_slot(schedule, after=slot)
        for due in pending:
            outcome = fire(session, rt=rt, schedule=schedule, slot=due)
            if isinstance(outcome, str):
                log.info("schedule slot skipped", extra={
                    "schedule_id": schedule.id, "slot": iso(due), "reason": outcome})
            else:
                fired.runs.append(outcome)
                schedule.last_fired_for = due
        schedule.next_fire_at = slot  # after now, or the rest of a long catch-up
    if fired.skipped_since is not None:
        log.warning("schedule slots missed by more than catchup_s skipped", extra={
            "schedule_id": schedule_id, "since": iso(fired.skipped_since)})
    for stored in fired.runs:
        launch(rt, stored)
        log.info("schedule fired", extra={"schedule_id": schedule_id,
                                          "run_id": stored.run.id})
    return len(fired.runs)


def trigger(rt: Runtime, *, tenant_id: str, schedule_id: str) -> dict[str, Any]:
    """Fire the schedule now, outside its timing (its overlap still holds: a skip is a
    409). The run, as the API shows it."""
    with rt.db.transaction() as session:
        schedule = get(session, tenant_id=tenant_id, schedule_id=schedule_id, lock=True)
        outcome = fire(session, rt=rt, schedule=schedule, slot=_now(session))
        if isinstance(outcome, str):
            raise Conflict(f"schedule {schedule_id} did not fire: {outcome}")
    launch(rt, outcome)
    return run_view(outcome.run)
