"""Postgres and Redis restarted under load: every run ends once; the API says 503, not 500.

These tests own a cluster of their own (Postgres, Redis, two workers, the API under
gunicorn) because they stop its servers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from agentq import migrate
from agentq.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import FAST, TEST_AGENTS, make_tenant
from tests.harness import ROOT, ApiServer, Worker, holds, wait_for
from worker.app import build_runtime
from worker.base.models import TERMINAL_STATUSES, Run, RunEvent
from worker.base.runtime import Runtime
from worker.base.settings import load_settings

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    runtime: Runtime
    api: ApiServer
    workers: list[Worker]
    key: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, timeout=15,
                            headers={"Authorization": f"Bearer {self.key}"})


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    postgres = EmbeddedPostgres(tmp_path / "postgres", durable=False)
    redis_server = EmbeddedRedis(tmp_path / "redis", durable=False)  # a restart loses all
    database_url, redis_url = postgres.start(), redis_server.start()
    migrate.upgrade(database_url)
    env = {"PATH": str(Path(ROOT / ".venv" / "bin")) + ":/usr/bin:/bin",
           "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "AGENTQ_AGENTS": TEST_AGENTS, "PYTHONPATH": str(ROOT), **FAST}
    fast = {name.removeprefix("AGENTQ_").lower(): value for name, value in FAST.items()}
    runtime = build_runtime(load_settings(database_url=database_url, redis_url=redis_url,
                                          agents=[TEST_AGENTS], **fast))
    workers = [Worker(env=env, log=tmp_path / f"w{i}.log", name=f"outage{i}", beat=i == 0)
               for i in range(2)]
    api = ApiServer(env=env, log=tmp_path / "api.log")
    for process in (*workers, api):
        process.start()
    for worker in workers:
        worker.wait_ready(runtime.celery)
    api.wait_ready()
    try:
        yield Cluster(postgres, redis_server, runtime, api, workers,
                      make_tenant(runtime).key)
    finally:
        for process in (api, *workers):
            process.stop(timeout=10)
        redis_server.stop()
        postgres.stop()


def submit(client: httpx.Client, n: int, seconds: float = 0.3) -> list[str]:
    ids = []
    for _ in range(n):
        response = client.post("/v1/runs", json={"agent": "sleep", "input": {"seconds": seconds}})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def all_finished_once(runtime: Runtime, ids: list[str], timeout: float) -> dict[str, str]:
    """Wait until every run is terminal; check each made exactly one terminal transition."""

    def finished() -> dict[str, str] | None:
        with runtime.db.transaction() as session:
            rows = dict(session.execute(select(Run.id, Run.status).where(Run.id.in_(ids)))
                        .all())
        done = all(status in TERMINAL_STATUSES for status in rows.values())
        return rows if done and len(rows) == len(ids) else None

    statuses = wait_for(finished, timeout=timeout, interval=0.5, what="every run to end")
    with runtime.db.transaction() as session:
        terminal = session.execute(
            select(RunEvent.run_id, func.count()).where(
                RunEvent.run_id.in_(ids), RunEvent.type == "status",
                RunEvent.data["status"].astext.in_([s.value for s in TERMINAL_STATUSES]))
            .group_by(RunEvent.run_id)).all()
    assert {run_id: count for run_id, count in terminal} == dict.fromkeys(ids, 1)
    return statuses


def test_postgres_restart_under_load(cluster: Cluster) -> None:
    with cluster.client() as client:
        ids = submit(client, 30)
        # When Postgres goes away under load
        cluster.postgres.stop()
        # Then the API answers 503 problem+json with Retry-After, never a 500
        during = [client.post("/v1/runs", json={"agent": "echo"}),
                  client.get(f"/v1/runs/{ids[0]}")]
        for response in during:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.headers["Retry-After"]
        holds(lambda: client.get(f"/v1/runs/{ids[0]}").status_code == 503, seconds=3,
              interval=0.5, what="503s while Postgres is down")
        cluster.postgres.start()
        # And it recovers by itself: new runs are accepted, and every run ends once
        ids += submit(client, 5)
    statuses = all_finished_once(cluster.runtime, ids, timeout=120)
    assert set(statuses.values()) == {"succeeded"}


def test_redis_restart_under_load_loses_no_run(cluster: Cluster) -> None:
    results: list[Any] = []
    with cluster.client() as client:
        ids = submit(client, 30)
        # When Redis dies (and with it every queued message) under load
        cluster.redis.kill()

        def submit_during_outage() -> None:
            results.extend(client.post("/v1/runs", json={"agent": "echo"}) for _ in range(3))

        thread = threading.Thread(target=submit_during_outage)
        thread.start()
        thread.join(timeout=60)
        # Then runs are still accepted and stored
        assert [r.status_code for r in results] == [202, 202, 202]
        ids += [r.json()["id"] for r in results]
        holds(lambda: client.get(f"/v1/runs/{ids[0]}").status_code == 200, seconds=2,
              interval=0.5, what="runs read from Postgres while Redis is down")
        cluster.redis.start()
    # And once Redis is back every run ends, once
    statuses = all_finished_once(cluster.runtime, ids, timeout=180)
    assert set(statuses.values()) == {"succeeded"}
