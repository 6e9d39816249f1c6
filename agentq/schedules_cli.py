"""``agentq schedules``: an operator's view of every tenant's schedules: list, create,
pause, resume, trigger, delete."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import select

from worker.base.errors import AgentqError, InvalidRequest
from worker.base.models import Schedule, Tenant
from worker.base.runtime import Runtime
from worker.runs import schedules
from worker.runs.schedules import OVERLAPS, Spec, schedule_view


def _runtime() -> Runtime:
    from agentq.cli import load_runtime

    return load_runtime()


def _refused(error: AgentqError) -> click.ClickException:
    if isinstance(error, InvalidRequest) and error.errors:
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in error.errors)
        return click.ClickException(f"{error.detail} ({problems})")
    return click.ClickException(str(error))


def _tenant_of(rt: Runtime, schedule_id: str) -> str:
    with rt.db.autocommit() as session:
        tenant_id = session.scalar(select(Schedule.tenant_id).where(
            Schedule.id == schedule_id, Schedule.deleted_at.is_(None)))
    if tenant_id is None:
        raise click.ClickException(f"no such schedule: {schedule_id}")
    return tenant_id


@click.group("schedules")
def schedules_group() -> None:
    """Schedules of every tenant: agents run by cron or every N seconds (fired by beat)."""


@schedules_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's schedules (by name).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_schedules(tenant: str | None, as_json: bool) -> None:
    """Live schedules, newest first."""
    rt = _runtime()
    with rt.db.autocommit() as session:
        query = (select(Schedule, Tenant.name).join(Tenant, Tenant.id == Schedule.tenant_id)
                 .where(Schedule.deleted_at.is_(None)))
        if tenant:
            query = query.where(Tenant.name == tenant)
        rows = session.execute(query.order_by(Schedule.id.desc()).limit(1000)).all()
        items = [{**schedule_view(item), "tenant": owner} for item, owner in rows]
    if as_json:
        click.echo(json.dumps(items))
        return
    click.echo(f"{'SCHEDULE':<32} {'TENANT':<16} {'AGENT':<20} {'WHEN':<18} {'OVERLAP':<12} "
               "NEXT")
    for item in items:
        when = item["cron"] or f"every {item['every_s']:g} s"
        nxt = "paused" if item["paused"] else item["next_fire_at"]
        click.echo(f"{item['id']:<32} {str(item['tenant'])[:16]:<16} {item['agent'][:20]:<20} "
                   f"{when[:18]:<18} {item['overlap']:<12} {nxt}")


@schedules_group.command("create")
@click.option("--tenant", required=True, help="The tenant's name.")
@click.option("--agent", required=True)
@click.option("--input", "input_json", default="{}", show_default=True, help="JSON.")
@click.option("--cron", default=None, help="e.g. '0 9 * * 1-5'.")
@click.option("--every", "every_s", type=float, default=None, help="Seconds between runs.")
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--overlap", type=click.Choice(OVERLAPS), default="skip", show_default=True)
@click.option("--catchup", "catchup_s", type=click.FloatRange(1), default=60.0,
              show_default=True, help="Seconds a missed slot may still fire.")
@click.option("--paused", is_flag=True)
def create_schedule(tenant: str, agent: str, input_json: str, cron: str | None,
                    every_s: float | None, timezone: str, overlap: str, catchup_s: float,
                    paused: bool) -> None:
    """Create a schedule for a tenant; prints its id."""
    try:
        payload: Any = json.loads(input_json)
    except ValueError as error:
        raise click.ClickException(f"--input is not JSON: {error}") from None
    if (cron is None) == (every_s is None):
        raise click.UsageError("give --cron or --every (one of them)")
    if every_s is not None and every_s < 1:
        raise click.UsageError("--every is at least 1 second")
    rt = _runtime()
    try:
        with rt.db.transaction() as session:
            tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == tenant))
            if tenant_id is None:
                raise click.ClickException(f"no such tenant: {tenant}")
            made = schedules.create(session, rt=rt, tenant_id=tenant_id, spec=Spec(
                agent=agent, input=payload, cron=cron, every_s=every_s, timezone=timezone,
                overlap=overlap, catchup_s=catchup_s, paused=paused))
            view = schedule_view(made)
    except AgentqError as error:
        raise _refused(error) from None
    click.echo(view["id"])
    click.echo(f"next: {'paused' if paused else view['next_fire_at']}", err=True)


def _set_paused(schedule_id: str, paused: bool) -> None:
    rt = _runtime()
    tenant_id = _tenant_of(rt, schedule_id)
    with rt.db.transaction() as session:
        changed = schedules.update(session, rt=rt, tenant_id=tenant_id,
                                   schedule_id=schedule_id,
                                   spec=Spec(paused=paused, given=frozenset({"paused"})))
        view = schedule_view(changed)
    click.echo(f"{schedule_id} {'paused' if paused else 'next: ' + str(view['next_fire_at'])}")


@schedules_group.command("pause")
@click.argument("schedule_id")
def pause_schedule(schedule_id: str) -> None:
    """Stop firing (until resume)."""
    _set_paused(schedule_id, True)


@schedules_group.command("resume")
@click.argument("schedule_id")
def resume_schedule(schedule_id: str) -> None:
    """Fire again, from the next slot (what was missed while paused is not made up)."""
    _set_paused(schedule_id, False)


@schedules_group.command("trigger")
@click.argument("schedule_id")
def trigger_schedule(schedule_id: str) -> None:
    """Fire now (the overlap policy still holds); prints the run's id."""
    rt = _runtime()
    try:
        run = schedules.trigger(rt, tenant_id=_tenant_of(rt, schedule_id),
                                schedule_id=schedule_id)
    except AgentqError as error:
        raise _refused(error) from None
    click.echo(run["id"])


@schedules_group.command("delete")
@click.argument("schedule_id")
def delete_schedule(schedule_id: str) -> None:
    """Delete it (its runs stay)."""
    rt = _runtime()
    with rt.db.transaction() as session:
        schedules.delete(session, tenant_id=_tenant_of(rt, schedule_id),
                         schedule_id=schedule_id)
    click.echo(f"{schedule_id} deleted")
