"""``agentq dlq``: list, replay and purge dead-lettered runs (an operator's view: all tenants)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click
from sqlalchemy import select

from worker.base.models import Run, Tenant
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.runs import admission, dispatch, store
from worker.runs.views import iso, run_view


def _tenant_id(rt: Runtime, name: str | None) -> str | None:
    if name is None:
        return None
    with rt.db.transaction() as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == name))
    if tenant_id is None:
        raise click.ClickException(f"no tenant is called {name!r}")
    return tenant_id


def list_dead(rt: Runtime, *, tenant: str | None, as_json: bool) -> None:
    with rt.db.transaction() as session:
        dead = store.dead_letters(session, tenant_id=_tenant_id(rt, tenant))
    if as_json:
        click.echo(json.dumps([{**run_view(run), "tenant_id": run.tenant_id} for run in dead]))
        return
    if not dead:
        click.echo("no dead-lettered runs", err=True)
        return
    click.echo(f"{'RUN':<32} {'AGENT':<20} {'ATTEMPTS':>8}  {'SINCE':<24} ERROR")
    for run in dead:
        error = run.error or {}
        reason = f"{error.get('type', '')}: {error.get('message', '')}"[:80]
        click.echo(f"{run.id:<32} {run.agent[:20]:<20} {run.attempt:>8}  "
                   f"{iso(run.finished_at) or '':<24} {reason}")


def replay(rt: Runtime, *, run_ids: tuple[str, ...], everything: bool,
           tenant: str | None) -> int:
    """Queue the named dead letters (or all of them) again; return how many."""
    with rt.db.transaction() as session:
        if everything:
            chosen = store.dead_letters(session, tenant_id=_tenant_id(rt, tenant))
        else:
            chosen = _named(session.scalars(select(Run).where(Run.id.in_(run_ids))).all(),
                            run_ids)
        for run in chosen:
            store.replay(session, run=run, caps=admission.NONE)  # an operator's: past the caps
        jobs = [Dispatch.of(run) for run in chosen]
    for job in jobs:
        dispatch.dispatch(rt, job)
        click.echo(job.run_id)
    return len(jobs)


def purge(rt: Runtime, *, run_ids: tuple[str, ...], everything: bool,
          tenant: str | None) -> int:
    """Dismiss dead letters: marked discarded, never deleted; return how many."""
    with rt.db.transaction() as session:
        if everything:
            ids = [run.id for run in store.dead_letters(session, tenant_id=_tenant_id(rt, tenant))]
        else:
            ids = list(run_ids)
        return store.discard(session, run_ids=ids)


def _named(found: Sequence[Run], run_ids: tuple[str, ...]) -> list[Run]:
    missing = sorted(set(run_ids) - {run.id for run in found})
    if missing:
        raise click.ClickException(f"no such run: {', '.join(missing)}")
    return list(found)
