"""A run committed but never published is not lost: the sweeper dispatches it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from agentq.embedded import free_port
from api import create_app
from tests.conftest import ApiClient, Tenant
from worker.app import build_runtime
from worker.base.models import Run
from worker.base.runtime import Runtime
from worker.base.settings import Settings


@pytest.fixture
def broken_broker_api(settings: Settings, tenant: Tenant) -> ApiClient:
    """The API with a broker URL nothing listens on: every publish fails."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    runtime = build_runtime(settings.model_copy(update={"broker_url": dead}))
    return ApiClient(create_app(runtime=runtime).test_client(), tenant)


def test_publish_failure_after_commit_is_dispatched_by_the_sweeper(
    broken_broker_api: ApiClient, runtime: Runtime, worker: object
) -> None:
    # Given a broker that refuses every publish from the API
    started = time.monotonic()
    response = broken_broker_api.post("/v1/runs", json={"agent": "echo", "input": {"x": 1}})
    # Then the client still gets its run, promptly
    assert response.status_code == 202
    assert time.monotonic() - started < 5
    run_id = response.get_json()["id"]
    # And the run is stored, marked as never published
    with runtime.db.transaction() as session:
        stored = session.scalar(select(Run).where(Run.id == run_id))
        assert stored is not None and stored.dispatched_at is None
    # When the sweeper (beat, on the worker) finds it, the run is published and runs
    done = broken_broker_api.wait(run_id, timeout=30)
    assert done["status"] == "succeeded"
    assert done["result"] == {"x": 1}
    with runtime.db.transaction() as session:
        stored = session.scalar(select(Run).where(Run.id == run_id))
        assert stored is not None and stored.dispatched_at is not None
