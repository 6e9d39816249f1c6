"""The ``agentq`` command line. Exit codes: 0 done, 1 failed, 2 bad usage or configuration."""

from __future__ import annotations

import sys

import click

from worker.errors import ConfigurationError


class ConfigProblem(click.ClickException):
    """A one-line configuration error (exit code 2)."""

    exit_code = 2


@click.group()
def main() -> None:
    """agentq: run slow LLM agents behind an HTTP API, reliably."""


@main.command()
def dev() -> None:
    """Start the whole platform locally (embedded Postgres and Redis unless URLs are set)."""
    from agentq import dev as devserver
    from worker.settings import load_dev_settings

    try:
        settings = load_dev_settings()
    except ConfigurationError as error:
        raise ConfigProblem(str(error)) from None
    sys.exit(devserver.run(settings))


@main.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL (alembic upgrade head)."""
    from agentq import migrate as migrations
    from worker.settings import load_database_settings

    try:
        settings = load_database_settings()
    except ConfigurationError as error:
        raise ConfigProblem(str(error)) from None
    migrations.upgrade(settings.database_url)
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

    try:
        db = Database(load_database_settings())
    except ConfigurationError as error:
        raise ConfigProblem(str(error)) from None
    with db.transaction() as session:
        owner = api_keys.ensure_tenant(session, name=tenant)
        token = api_keys.create_key(session, tenant=owner, name=name)
    db.dispose()
    click.echo(token)
