"""No secret reaches a log line or an error's text: SQLAlchemy's bound parameters (signing
secrets, inputs) are hidden on every error path, the ORM's and ``Database.one_row``'s."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.conftest import ApiClient
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")

SECRET = "hook-secret-that-must-never-be-logged-7f3a9c"


@pytest.fixture
def refusing(runtime: Runtime, api: ApiClient) -> Iterator[None]:
    """Make Postgres refuse every row the test's tenant writes to hook_sources and runs."""
    with runtime.db.transaction() as session:
        session.execute(text("""
            CREATE OR REPLACE FUNCTION agentq_test_refuse() RETURNS trigger AS $$
            BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql"""))
        for table in ("hook_sources", "runs"):
            session.execute(text(
                f"CREATE TRIGGER agentq_test_refuse_{table} BEFORE INSERT ON {table} "
                f"FOR EACH ROW WHEN (NEW.tenant_id = '{api.tenant.id}') "
                "EXECUTE FUNCTION agentq_test_refuse()"))
    yield
    with runtime.db.transaction() as session:
        for table in ("hook_sources", "runs"):
            session.execute(text(f"DROP TRIGGER agentq_test_refuse_{table} ON {table}"))


@pytest.mark.usefixtures("refusing")
def test_a_failed_write_logs_no_secret(api: ApiClient, caplog: pytest.LogCaptureFixture,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    # When a write carrying a secret fails: the ORM's path, and the submission's one_row path
    made = api.post("/v1/hook-sources", json={"provider": "github", "secret": SECRET,
                                              "agent": "echo"})
    submitted = api.post("/v1/runs", json={"agent": "echo", "input": {"token": SECRET}})
    # Then the client gets a problem (with no secret in it), and no log line holds the secret
    for response in (made, submitted):
        assert response.status_code == 500
        assert SECRET not in response.get_data(as_text=True)
    printed = capsys.readouterr()
    logged = caplog.text + printed.out + printed.err
    assert "refused by the test" in logged  # the error itself was logged, traceback and all
    assert SECRET not in logged


def test_database_errors_hide_their_parameters(runtime: Runtime) -> None:
    # (Postgres's own message may quote a value, as a failed cast does; agentq puts no
    # secret where that can happen. Here the server's message holds none.)
    with pytest.raises(DBAPIError) as raw:
        runtime.db.one_row("SELECT 1 / 0 WHERE %(secret)s <> ''", {"secret": SECRET})
    with pytest.raises(DBAPIError) as orm, runtime.db.transaction() as session:
        session.execute(text("SELECT 1 / 0 WHERE :secret <> ''"), {"secret": SECRET})
    for error in (raw.value, orm.value):
        assert SECRET not in str(error)
        assert "hidden" in str(error)
