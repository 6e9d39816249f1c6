"""The ``agentq`` command line. Exit codes: 0 done, 1 failed, 2 bad usage or configuration."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

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
