"""The ``agentq`` command line. Exit codes: 0 done, 1 failed, 2 bad usage or configuration."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agentq import devenv
from worker.base.errors import ConfigurationError
from worker.base.runtime import Runtime

T = TypeVar("T")
_MISSING = "is required but not set"  # worker.base.settings' words for a missing variable


class ConfigProblem(click.ClickException):
    """A one-line configuration error (exit code 2)."""

    exit_code = 2


def _configured(load: Callable[[], T]) -> T:
    """Load settings, turning a configuration error into a one-line message."""
    try:
        return load()
    except ConfigurationError as error:
        raise ConfigProblem(_with_hint(str(error))) from None


def _with_hint(message: str) -> str:
    """Add how to provide a missing variable: by hand, or through make dev's .agentq/env."""
    missing = message.count(_MISSING)
    if not missing or devenv.find(Path.cwd()) is not None:
        return message
    return (f"{message}; set {'them' if missing > 1 else 'it'}, or start `make dev` here first "
            f"(agentq then reads the {devenv.ENV_FILE} it writes)")


def _use_dev_env() -> None:
    """Fill in the environment from make dev's .agentq/env in this checkout, saying so."""
    path = devenv.find(Path.cwd())
    if path is None:
        return
    taken = devenv.load(path)
    if taken:
        click.echo(f"agentq: using {os.path.relpath(path)} (make dev's servers) for "
                   f"{', '.join(taken)}", err=True)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """agentq: run slow LLM agents behind an HTTP API, reliably."""
    # Not for `agentq dev`: it would take the servers it started last time for given ones.
    if ctx.invoked_subcommand != "dev":
        _use_dev_env()


@main.command()
def dev() -> None:
    """Start the whole platform locally (embedded Postgres and Redis unless URLs are set)."""
    from agentq import dev as devserver
    from worker.base.settings import load_dev_settings

    sys.exit(devserver.run(_configured(load_dev_settings)))


@main.command(context_settings={"ignore_unknown_options": True,
                                "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker: agentq worker [celery worker options, e.g. -Q runs.high].

    Without --pool it is the Procfile's worker (--pool threads --concurrency 2: its engine
    holds AGENTQ_WORKER_SLOTS runs); --pool prefork is the cpu process's kind."""
    import shutil

    args = list(ctx.args)
    if not any(arg in {"-P", "--pool"} or arg.startswith(("--pool=", "-P")) for arg in args):
        args = ["--pool", "threads", "--concurrency", "2", *args]
    celery = shutil.which("celery", path=os.path.dirname(sys.executable)) or "celery"
    os.execvp(celery, [celery, "-A", "worker", "worker", *args])  # noqa: S606 - argv, no shell


@main.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL (alembic upgrade head)."""
    from agentq import migrate as migrations
    from worker.base.settings import load_database_settings

    migrations.upgrade(_configured(load_database_settings).database_url)
    click.echo("database is at the newest revision", err=True)


@main.group()
def keys() -> None:
    """Manage API keys."""


def _database() -> Any:
    from worker.base.db import Database
    from worker.base.settings import load_database_settings

    return Database(_configured(load_database_settings))


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if it does not exist.")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--scope", "scopes", multiple=True,
              type=click.Choice(["runs:read", "runs:write", "admin"]),
              help="Repeat to grant several; default: all three.")
def create_key(tenant: str, name: str, scopes: tuple[str, ...]) -> None:
    """Create an API key and print it alone on stdout (it is not stored, only its hash)."""
    from worker.access import keys as api_keys

    db = _database()
    with db.transaction() as session:
        owner = api_keys.ensure_tenant(session, name=tenant)
        token = api_keys.create_key(session, tenant=owner, name=name,
                                    scopes=scopes or api_keys.DEFAULT_SCOPES)
    db.dispose()
    click.echo(token)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_keys(tenant: str | None, as_json: bool) -> None:
    """List keys: prefix, name, scopes, created, last used, revoked (never the key)."""
    import json

    from sqlalchemy import select

    from worker.base.models import ApiKey, Tenant
    from worker.runs.views import iso

    db = _database()
    with db.transaction() as session:
        query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
        if tenant:
            query = query.where(Tenant.name == tenant)
        rows = [{"id": key.id, "tenant": owner, "prefix": key.prefix, "name": key.name,
                 "scopes": key.scopes, "created_at": iso(key.created_at),
                 "last_used_at": iso(key.last_used_at), "revoked_at": iso(key.revoked_at)}
                for key, owner in session.execute(query.order_by(ApiKey.id)).all()]
    db.dispose()
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'ID':<32} {'TENANT':<16} {'PREFIX':<13} {'SCOPES':<30} {'LAST USED':<25} STATE")
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        click.echo(f"{row['id']:<32} {str(row['tenant'])[:16]:<16} {row['prefix']:<13} "
                   f"{','.join(row['scopes']):<30} {row['last_used_at'] or '-':<25} {state}")


@keys.command("revoke")
@click.argument("key")
def revoke_key(key: str) -> None:
    """Revoke a key by its id or its display prefix; it stops working at once."""
    from worker.access import keys as api_keys
    from worker.base.errors import NotFound

    rt = load_runtime()
    try:
        with rt.db.transaction() as session:
            record = api_keys.revoke(session, tenant_id=None, key_id=key)
            click.echo(f"revoked {record.id} ({record.prefix}…)", err=True)
    except NotFound:
        raise click.ClickException(f"no API key has the id or prefix {key!r}") from None
    from worker.access.cache import announce_revocation

    announce_revocation(rt.bus.redis, record.id)  # API processes forget it at once


@main.group()
def dlq() -> None:
    """Dead-lettered runs: list them, replay them, or purge (dismiss) them."""


def load_runtime() -> Runtime:
    """The runtime from the environment, or a one-line configuration error (exit 2)."""
    from worker.app import build_runtime
    from worker.base.settings import load_settings

    return build_runtime(_configured(load_settings))


_runtime = load_runtime


_tenant_option = click.option("--tenant", default=None, help="Only this tenant's runs.")


@dlq.command("list")
@_tenant_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_list(tenant: str | None, as_json: bool) -> None:
    """List dead-lettered runs that have not been purged, newest first."""
    from agentq import dlq as dead_letters

    dead_letters.list_dead(_runtime(), tenant=tenant, as_json=as_json)


@dlq.command("replay")
@click.argument("run_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Replay every dead-lettered run.")
@_tenant_option
def dlq_replay(run_ids: tuple[str, ...], everything: bool, tenant: str | None) -> None:
    """Queue dead-lettered runs again (their attempts are kept); prints each run id."""
    from agentq import dlq as dead_letters

    if bool(run_ids) == everything:
        raise click.UsageError("name the runs to replay, or pass --all")
    count = dead_letters.replay(_runtime(), run_ids=run_ids, everything=everything,
                                tenant=tenant)
    click.echo(f"{count} run(s) queued again", err=True)


@dlq.command("purge")
@click.argument("run_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Purge every dead-lettered run.")
@_tenant_option
def dlq_purge(run_ids: tuple[str, ...], everything: bool, tenant: str | None) -> None:
    """Dismiss dead-lettered runs: they leave the list; their history is kept."""
    from agentq import dlq as dead_letters

    if bool(run_ids) == everything:
        raise click.UsageError("name the runs to purge, or pass --all")
    count = dead_letters.purge(_runtime(), run_ids=run_ids, everything=everything,
                               tenant=tenant)
    click.echo(f"{count} run(s) purged", err=True)


def _register() -> None:
    from agentq.runs_cli import runs_group
    from agentq.schedules_cli import schedules_group

    main.add_command(runs_group)
    main.add_command(schedules_group)


_register()
