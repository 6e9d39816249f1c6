"""Per-tenant caps and input caps: one tenant at its cap never delays another."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from api import create_app
from tests.agents import CAPPED_QUEUE
from tests.conftest import ApiClient, Services, make_tenant
from tests.harness import Worker
from worker.app import build_runtime
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.runs import admission

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def capped_worker(env: dict[str, str], services: Services,
                  runtime: Runtime) -> Iterator[Worker]:
    """A worker whose tenants may each run one run at a time."""
    process = Worker(env={**env, "AGENTQ_TENANT_MAX_RUNNING": "1"},
                     log=services.root / "capped.log", name="capped", concurrency=3,
                     queues=CAPPED_QUEUE)
    process.start()
    process.wait_ready(runtime.celery)
    yield process
    process.stop(timeout=5)


def test_a_tenant_at_its_running_cap_does_not_delay_another(
    app: Flask, runtime: Runtime, capped_worker: Worker, settings: Settings
) -> None:
    capped_app = create_app(runtime=build_runtime(settings.model_copy(
        update={"tenant_max_running": 1}))).test_client()
    busy = ApiClient(capped_app, make_tenant(runtime))
    calm = ApiClient(capped_app, make_tenant(runtime))
    # Given a tenant with a backlog of 4 runs, capped at one running at a time
    backlog = [busy.submit("test.capped", {"seconds": 0.6})["id"] for _ in range(4)]
    # When another tenant submits one
    quick = calm.submit("test.capped", {"seconds": 0.1})
    done = calm.wait(quick["id"], timeout=10)
    # Then it runs at once, beside the busy tenant's one running run
    busy_done = [busy.wait(run_id, timeout=30)["result"] for run_id in backlog]
    spans = sorted((r["began"], r["ended"]) for r in busy_done)
    assert done["result"]["began"] < spans[1][0]  # before the busy tenant's second run
    assert all(spans[i][1] <= spans[i + 1][0] + 0.05 for i in range(3)), spans


def test_the_queued_cap_is_429(settings: Settings, runtime: Runtime) -> None:
    capped = ApiClient(create_app(runtime=build_runtime(settings.model_copy(
        update={"tenant_max_queued": 2}))).test_client(), make_tenant(runtime))
    for _ in range(2):
        assert capped.post("/v1/runs", json={"agent": "test.parked"}).status_code == 202
    refused = capped.post("/v1/runs", json={"agent": "test.parked"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"]
    assert "AGENTQ_TENANT_MAX_QUEUED" in refused.get_json()["detail"]


def test_an_input_too_large_or_too_deep_is_422(api: ApiClient, settings: Settings) -> None:
    big = {"blob": "x" * (settings.max_input_bytes + 1)}
    assert api.post("/v1/runs", json={"agent": "echo", "input": big}).status_code in {413, 422}
    deep: Any = "leaf"
    for _ in range(settings.max_json_depth + 1):
        deep = {"nested": deep}
    response = api.post("/v1/runs", json={"agent": "echo", "input": deep})
    assert response.status_code == 422
    assert "AGENTQ_MAX_JSON_DEPTH" in response.get_json()["errors"][0]["message"]


def test_page_size_is_capped(api: ApiClient) -> None:
    assert api.get("/v1/runs?limit=1000").status_code == 422


def burst(clients: list[ApiClient], count: int) -> list[int]:
    """``count`` submissions at once, spread over ``clients`` (API processes, as it were)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    start = Barrier(count)

    def submit(number: int) -> int:
        start.wait(timeout=10)
        client = clients[number % len(clients)]
        return int(client.post("/v1/runs", json={"agent": "test.parked"}).status_code)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(submit, range(count)))


@pytest.mark.parametrize("cap", [
    {"tenant_max_queued": 10},
    {"tenant_max_running": 10, "tenant_running_cap_mode": "reject"},
], ids=["queued cap", "running cap, reject mode"])
def test_fifty_submissions_at_once_never_pass_a_cap_of_ten(
        settings: Settings, runtime: Runtime, cap: dict[str, Any]) -> None:
    tenant = make_tenant(runtime)
    # Two API processes' worth of apps, each with its own memory, against one database
    clients = [ApiClient(create_app(runtime=build_runtime(settings.model_copy(update=cap)))
                         .test_client(), tenant) for _ in range(2)]
    codes = burst(clients, 50)
    assert codes.count(202) == 10 and codes.count(429) == 40, sorted(codes)
    # And once counted, the cap still holds one at a time
    assert clients[0].post("/v1/runs", json={"agent": "test.parked"}).status_code == 429


def test_runs_that_ended_free_their_place_under_the_cap(settings: Settings,
                                                      runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    capped = ApiClient(create_app(runtime=build_runtime(settings.model_copy(
        update={"tenant_max_queued": 2}))).test_client(), tenant)
    ids = [capped.submit("test.parked")["id"] for _ in range(2)]
    assert capped.post("/v1/runs", json={"agent": "test.parked"}).status_code == 429
    assert capped.post(f"/v1/runs/{ids[0]}/cancel").status_code == 202
    # (at once: only a submission that waited for the refusing count's lock believes it)
    assert capped.post("/v1/runs", json={"agent": "test.parked"}).status_code == 202


def test_counting_a_tenants_runs_never_blocks_writes_that_refer_to_the_tenant(
        runtime: Runtime) -> None:
    import psycopg

    tenant = make_tenant(runtime)
    with runtime.db.transaction() as session:
        # Given a recount of the tenant's runs, the row locked (as it locks it) to its commit
        session.execute(admission._LOCK, {"tenant_id": tenant.id})
        # Then a worker's write that refers to the tenant (a delivery, a session) goes on
        url = runtime.settings.database_url.replace("+psycopg", "")
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SET statement_timeout = '3s'")
            other.execute("INSERT INTO sessions (tenant_id, id) VALUES (%s, 'locked-out')",
                          (tenant.id,))


def test_a_replay_takes_a_place_under_the_cap(settings: Settings, runtime: Runtime) -> None:
    capped = ApiClient(create_app(runtime=build_runtime(settings.model_copy(
        update={"tenant_max_queued": 2}))).test_client(), make_tenant(runtime))
    ended = capped.submit("test.parked")["id"]
    assert capped.post(f"/v1/runs/{ended}/cancel").status_code == 202
    for _ in range(2):
        capped.submit("test.parked")
    refused = capped.post(f"/v1/runs/{ended}/replay")
    assert refused.status_code == 429 and "AGENTQ_TENANT_MAX_QUEUED" in refused.get_json()["detail"]
    assert capped.run(ended)["status"] == "cancelled"  # nothing changed
