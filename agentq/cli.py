"""The ``agentq`` command line. Exit codes: 0 done, 1 failed, 2 bad usage or configuration."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from worker.errors import ConfigurationError

T = TypeVar("T")


class ConfigProblem(click.ClickException):
    """A one-line configuration error (exit code 2)."""

    exit_code = 2


def _configured(load: Callable[[], T]) -> T:
    """Load settings, turning a configuration error into a one-line message."""
    try:
        return load()
    except ConfigurationError as error:
        raise ConfigProblem(str(error)) from None


@click.group()
def main() -> None:
    """agentq: run slow LLM agents behind an HTTP API, reliably."""


@main.command()
def dev() -> None:
    """Start the whole platform locally (embedded Postgres and Redis unless URLs are set)."""
    from agentq import dev as devserver
    from worker.settings import load_dev_settings

    sys.exit(devserver.run(_configured(load_dev_settings)))


@main.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL (alembic upgrade head)."""
    from agentq import migrate as migrations
    from worker.settings import load_database_settings

    migrations.upgrade(_configured(load_database_settings).database_url)
    click.echo("database is at the newest revision", err=True)


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name; created if it does not exist.")
@click.option("--name", default="", help="A label to recognise the key by.")
def create_key(tenant: str, name: str) -> None:
    """Create an API key and print it alone on stdout (it is not stored, only its hash)."""
    from worker import keys as api_keys
    from worker.db import Database
    from worker.settings import load_database_settings

    db = Database(_configured(load_database_settings))
    with db.transaction() as session:
        owner = api_keys.ensure_tenant(session, name=tenant)
        token = api_keys.create_key(session, tenant=owner, name=name)
    db.dispose()
    click.echo(token)


@main.group()
def dlq() -> None:
    """Dead-lettered runs: list them, replay them, or purge (dismiss) them."""


def _runtime() -> Any:
    from worker.runtime import build_runtime
    from worker.settings import load_settings

    return build_runtime(_configured(load_settings))


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
