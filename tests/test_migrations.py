"""The models and the Alembic migrations agree, and the migrations run both ways."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from agentq.migrate import alembic_config
from tests.conftest import Services
from tests.harness import BIN, ROOT
from worker.base.models import Base, new_id
from worker.base.settings import normalize_database_url


@pytest.fixture
def empty_database(services: Services) -> Iterator[str]:
    """A brand-new, empty database on the test server; dropped afterwards."""
    url = make_url(normalize_database_url(services.database_url))
    name = new_id("mig").lower()
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_autogenerate_finds_nothing_to_change(empty_database: str) -> None:
    command.upgrade(alembic_config(empty_database), "head")
    engine = create_engine(empty_database)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    config = alembic_config(empty_database)
    engine = create_engine(empty_database)
    command.upgrade(config, "head")
    assert {"runs", "run_events", "run_attempts", "tenants", "api_keys", "sessions"} <= set(
        inspect(engine).get_table_names())
    command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    command.upgrade(config, "head")
    assert "runs" in inspect(engine).get_table_names()
    engine.dispose()


def test_alembic_cli_migrates_the_database_named_by_database_url(empty_database: str) -> None:
    # As a managed service hands it out: postgres://, no driver
    plain = "postgres://" + empty_database.split("://", 1)[1]
    result = subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT,
                            env={"DATABASE_URL": plain, "PATH": str(BIN)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    engine = create_engine(empty_database)
    assert "runs" in inspect(engine).get_table_names()
    engine.dispose()


def test_0009_hashes_kept_keys_and_drops_the_secrets_they_showed(empty_database: str) -> None:
    import hashlib
    import json

    config = alembic_config(empty_database)
    command.upgrade(config, "0008")
    sha = hashlib.sha256(b"order-1").hexdigest()
    with psycopg.connect(empty_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("INSERT INTO tenants (id, name) VALUES ('tn_m', 'm')")
        for key, response in (("order-1", {"id": "key_1", "key": "aq_secret"}),
                              (sha, {"id": "ep_1", "secret": "whsec_secret"}),  # a trick
                              ("plain", {"id": "run_1"})):
            conn.execute("INSERT INTO idempotency_keys (tenant_id, key, fingerprint, "
                         "status_code, response, expires_at) VALUES ('tn_m', %s, 'f', 201, "
                         "%s, now() + interval '1 day')", (key, json.dumps(response)))
    command.upgrade(config, "head")  # a client's colliding key does not stop the upgrade
    with psycopg.connect(empty_database.replace("+psycopg", ""), autocommit=True) as conn:
        rows = dict(conn.execute("SELECT key, response FROM idempotency_keys").fetchall())
    assert rows == {sha: {"id": "key_1", "key": None},
                    hashlib.sha256(b"plain").hexdigest(): {"id": "run_1"}}
