"""``agentq runs``: an operator's view of runs across tenants: list, show, tree, cancel,
replay, resume (complete a waitpoint), purge (retention by hand)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.base.errors import Conflict, InvalidRequest, NotFound
from worker.base.models import Run, RunStatus, Tenant
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.delivery import webhooks
from worker.runs import admission, attempts, dispatch, events, retention, store, waits
from worker.runs.views import attempt_view, delivery_view, event_view, iso, run_view


def _runtime() -> Runtime:
    from agentq.cli import load_runtime

    return load_runtime()


def _find(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise click.ClickException(f"no such run: {run_id}")
    return run


class Duration(click.ParamType[timedelta, Any]):
    """A duration such as 7d, 12h, 30m, 90s or 2w, as a timedelta."""

    name = "duration"
    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        amount, unit = str(value).strip()[:-1], str(value).strip()[-1:].lower()
        if unit not in self.UNITS or not amount.isdigit() or int(amount) == 0:
            self.fail(f"{value!r} is not a duration such as 7d, 12h, 30m or 90s", param, ctx)
        return timedelta(seconds=int(amount) * self.UNITS[unit])


@click.group("runs")
def runs_group() -> None:
    """Runs of every tenant: list, show (the whole story), tree, cancel, replay, purge."""


@runs_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's runs (by name).")
@click.option("--status", type=click.Choice([s.value for s in RunStatus]), default=None)
@click.option("--agent", default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_runs(tenant: str | None, status: str | None, agent: str | None, limit: int,
              as_json: bool) -> None:
    """The newest runs first."""
    rt = _runtime()
    with rt.db.transaction() as session:
        query = select(Run, Tenant.name).join(Tenant, Tenant.id == Run.tenant_id)
        if tenant:
            query = query.where(Tenant.name == tenant)
        if status:
            query = query.where(Run.status == status)
        if agent:
            query = query.where(Run.agent == agent)
        rows = session.execute(query.order_by(Run.id.desc()).limit(limit)).all()
        items = [{**run_view(run), "tenant": owner} for run, owner in rows]
    if as_json:
        click.echo(json.dumps(items))
        return
    click.echo(f"{'RUN':<32} {'TENANT':<16} {'AGENT':<20} {'STATUS':<14} {'ATT':>3}  CREATED")
    for item in items:
        click.echo(f"{item['id']:<32} {str(item['tenant'])[:16]:<16} {item['agent'][:20]:<20} "
                   f"{item['status']:<14} {item['attempt']:>3}  {item['created_at']}")


@runs_group.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def show_run(run_id: str, as_json: bool) -> None:
    """A run's whole story: the run, its attempts, its events and its deliveries."""
    rt = _runtime()
    with rt.db.transaction() as session:
        run = _find(session, run_id)
        story = {
            "run": {**run_view(run), "tenant_id": run.tenant_id, "queue": run.queue,
                    "request_id": run.request_id, "worker": run.worker},
            "attempts": [attempt_view(item) for item in attempts.attempts(session,
                                                                          run_id=run_id)],
            "events": [event_view(item) for item in events.after(session, run_id=run_id,
                                                                seq=0, limit=10_000)],
            "deliveries": [delivery_view(item) for item in webhooks.deliveries(
                session, tenant_id=run.tenant_id, run_id=run_id, limit=1000)],
        }
    if as_json:
        click.echo(json.dumps(story))
        return
    _tell(story)


def _tell(story: dict[str, Any]) -> None:
    run = story["run"]
    click.echo(f"run {run['id']}  agent {run['agent']}  status {run['status']}  "
               f"tenant {run['tenant_id']}  queue {run['queue']}")
    click.echo(f"  created {run['created_at']}  started {run['started_at']}  "
               f"finished {run['finished_at']}  request {run['request_id']}")
    if run["error"]:
        click.echo(f"  error {run['error']['type']}: {run['error']['message']}")
    click.echo("attempts:")
    for item in story["attempts"]:
        error = item["error"] or {}
        reason = f"  {error.get('type')}: {error.get('message')}" if error else ""
        click.echo(f"  attempt {item['attempt']} on {item['worker']}  {item['started_at']} -> "
                   f"{item['finished_at']}  {item['outcome']}{reason}")
    click.echo("events:")
    for item in story["events"]:
        data = item["data"]
        summary = data.get("status") or data.get("message") or json.dumps(data)[:80]
        click.echo(f"  {item['seq']:>4}  {item['at']}  {item['type']:<8} {summary}")
    click.echo("deliveries:")
    for item in story["deliveries"]:
        click.echo(f"  {item['id']}  {item['type']}  {item['status']}  attempts "
                   f"{item['attempts']}  {item['url']}")


@runs_group.command("tree")
@click.argument("run_id")
@click.option("--limit", type=click.IntRange(1, 100_000), default=500, show_default=True,
              help="Show at most this many runs, the shallowest first.")
@click.option("--json", "as_json", is_flag=True, help="Print nested JSON instead of text.")
def tree_run(run_id: str, limit: int, as_json: bool) -> None:
    """The tree of runs RUN_ID is in (ctx.start, ctx.map): its root and every descendant,
    one line each (id, name under its parent, agent, status), indented under its parent;
    RUN_ID is marked. A bigger tree than --limit is cut, with a note on stderr."""
    rt = _runtime()
    with rt.db.transaction() as session:
        path = _ancestors(session, _find(session, run_id))
        root = path[-1]
        runs, cut = store.tree(session, tenant_id=root.tenant_id, root_id=root.id, limit=limit)
        below = _below([*runs, *path])  # the path too: RUN_ID is shown in a cut tree
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "tenant_id": root.tenant_id, "cut": cut,
                               "tree": _node(root, below)}))
    else:
        _draw(root, below, asked=run_id, level=0)
    if cut:
        click.echo(f"the tree is cut at {limit} runs (--limit): the others are counted under "
                   "their parents as not shown", err=True)


def _ancestors(session: Session, run: Run) -> list[Run]:
    """The run, its parent, and so on up to its tree's root (or the highest one stored)."""
    path = [run]
    while path[-1].parent_id is not None:
        parent = session.get(Run, path[-1].parent_id)
        if parent is None:
            break
        path.append(parent)
    return path


def _below(runs: list[Run]) -> dict[str | None, list[Run]]:
    """The children of each of ``runs`` among them, oldest first, each once."""
    below: dict[str | None, list[Run]] = {}
    for run in sorted({run.id: run for run in runs}.values(), key=lambda run: run.id):
        below.setdefault(run.parent_id, []).append(run)
    return below


def _draw(run: Run, below: dict[str | None, list[Run]], *, asked: str, level: int) -> None:
    mark = "  <- this run" if run.id == asked else ""
    click.echo(f"{'  ' * level}{run.id}  {run.child_name or '-'}  {run.agent}  "
               f"{run.status}{mark}")
    shown = below.get(run.id, [])
    for child in shown:
        _draw(child, below, asked=asked, level=level + 1)
    if run.children > len(shown):
        click.echo(f"{'  ' * (level + 1)}... {run.children - len(shown)} more not shown")


def _node(run: Run, below: dict[str | None, list[Run]]) -> dict[str, Any]:
    shown = below.get(run.id, [])
    return {"id": run.id, "child_name": run.child_name, "agent": run.agent,
            "status": run.status, "depth": run.depth,
            "children": [_node(child, below) for child in shown],
            "not_shown": max(run.children - len(shown), 0)}


@runs_group.command("cancel")
@click.argument("run_id")
def cancel_run(run_id: str) -> None:
    """Cancel a run (exit code 1 if it already ended otherwise)."""
    rt = _runtime()
    try:
        with rt.db.transaction() as session:
            run = _find(session, run_id)
            outcome = store.cancel(session, tenant_id=run.tenant_id, run_id=run_id)
            status = outcome.run.status
    except Conflict as conflict:
        raise click.ClickException(str(conflict)) from None
    if outcome.notify_worker:
        rt.bus.request_cancel(run_id)
    click.echo(f"{run_id} {status}")


@runs_group.command("replay")
@click.argument("run_id")
def replay_run(run_id: str) -> None:
    """Queue a failed, dead-lettered or cancelled run again (its attempts are kept)."""
    rt = _runtime()
    try:
        with rt.db.transaction() as session:
            run = store.replay(session, run=_find(session, run_id),
                              caps=admission.NONE)  # an operator's: past the caps
            job = Dispatch.of(run)
    except Conflict as conflict:
        raise click.ClickException(str(conflict)) from None
    dispatch.dispatch(rt, job)
    click.echo(f"{run_id} queued at {iso(run.created_at)}")


@runs_group.command("resume")
@click.argument("run_id")
@click.argument("name")
@click.option("--data", "data_json", required=True, help="The waitpoint's data, as JSON.")
def resume_run(run_id: str, name: str, data_json: str) -> None:
    """Complete the waitpoint NAME of a waiting run with --data: the run goes on."""
    try:
        data = json.loads(data_json)
    except ValueError as error:
        raise click.ClickException(f"--data is not JSON: {error}") from None
    rt = _runtime()
    try:
        with rt.db.transaction() as session:
            run = _find(session, run_id)
            done = waits.complete(session, tenant_id=run.tenant_id, run_id=run_id, name=name,
                                  data=data, by="cli")
    except (Conflict, NotFound) as refused:
        raise click.ClickException(str(refused)) from None
    except InvalidRequest as invalid:
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in invalid.errors)
        raise click.ClickException(f"{invalid.detail} ({problems})") from None
    if done.dispatch is not None:
        dispatch.dispatch(rt, done.dispatch)
    click.echo(f"{run_id} {done.run.status}: waitpoint {name} completed")


@runs_group.command("purge")
@click.option("--older-than", "older_than", type=Duration(), required=True,
              help="Delete what ended longer ago than this, e.g. 7d, 12h.")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def purge_runs(older_than: timedelta, dry_run: bool, as_json: bool) -> None:
    """Delete runs that ended (not dead letters until dismissed, nor runs with a webhook
    still being delivered) with their events, attempts, steps, waitpoints and deliveries,
    and older inbound webhook records, in batches; prints the rows per table."""
    rt = _runtime()
    kept = retention.at_least_ttl(rt.settings, older_than)
    if kept > older_than:
        click.echo(f"keeping runs that ended within AGENTQ_IDEMPOTENCY_TTL_S ({kept}): their "
                   "Idempotency-Keys may still be repeated", err=True)
    began = time.monotonic()
    counts = retention.purge(rt.db, older_than=kept, max_batches=2**31, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(counts))
    else:
        click.echo(f"{'TABLE':<20} {'ROWS':>12}")
        for table, rows in counts.items():
            click.echo(f"{table:<20} {rows:>12,}")
    done = "would be deleted (dry run: nothing deleted)" if dry_run else "deleted"
    click.echo(f"{counts['runs']:,} run(s) {done} in {time.monotonic() - began:.1f} s", err=True)
