"""Fixtures on real parts: Postgres, Redis, Celery worker processes, the Flask app.

The harness owns its servers: an embedded PostgreSQL and Redis in a temporary directory,
unless ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` name others; tests on RabbitMQ get a
virtual host of their own on the local one (or ``TEST_AMQP_URL``). Each test works in a tenant
of its own, so tests never see each other's runs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from agentq import migrate
from agentq.embedded import EmbeddedPostgres, EmbeddedRedis
from api import create_app
from tests.agents import CRASH_QUEUE
from tests.harness import ROOT, ApiServer, FakeLLM, Receiver, Worker, wait_for
from worker.access import keys
from worker.app import build_runtime
from worker.base.models import TERMINAL_STATUSES, new_id
from worker.base.queues import MAINTENANCE_QUEUE, NOTIFY_QUEUE, RUN_QUEUES
from worker.base.runtime import Runtime
from worker.base.settings import Settings, load_settings

TEST_AGENTS = "tests.agents"
LLM_KEY = "sk-test-not-a-secret"
# Short intervals so the sweeper's repairs show up within a test's patience.
FAST = {
    "AGENTQ_SWEEP_INTERVAL_S": "0.5",
    "AGENTQ_SCHEDULE_TICK_S": "0.25",
    "AGENTQ_DISPATCH_GRACE_S": "0.5",
    "AGENTQ_REDISPATCH_AFTER_S": "2",
    "AGENTQ_HEARTBEAT_INTERVAL_S": "0.5",
    "AGENTQ_LEASE_TIMEOUT_S": "3",
    "AGENTQ_HARD_TIMEOUT_GRACE_S": "1",
    "AGENTQ_SHUTDOWN_GRACE_S": "2",
    "AGENTQ_BACKOFF_BASE_S": "0.2",
    "AGENTQ_BACKOFF_MAX_S": "1",
    "AGENTQ_CANCEL_GRACE_S": "1",
    "AGENTQ_STREAM_KEEPALIVE_S": "1",
    "AGENTQ_WEBHOOK_RETRY_SCHEDULE": "0.3,0.3,0.3",
    "AGENTQ_WEBHOOK_TIMEOUT_S": "2",
    "AGENTQ_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8",  # the tests' receivers are on loopback
    "AGENTQ_SECRET_KEY": "test-only-dashboard-secret-0123456789abcdef",
}


@dataclass
class Services:
    root: Path
    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None
    redis: EmbeddedRedis | None


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    root = tmp_path_factory.mktemp("services")
    postgres = redis_server = None
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not database_url:
        postgres = EmbeddedPostgres(root / "postgres", database="agentq_test", durable=False)
        database_url = postgres.start()
    if not redis_url:
        redis_server = EmbeddedRedis(root / "redis", durable=False)
        redis_url = redis_server.start()
    migrate.upgrade(database_url)
    yield Services(root, database_url, redis_url, postgres, redis_server)
    if redis_server is not None:
        redis_server.stop()
    if postgres is not None:
        postgres.stop()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    """An OpenAI-compatible endpoint on loopback; every process the tests start uses it."""
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture(scope="session")
def env(services: Services, fake_llm: FakeLLM) -> dict[str, str]:
    """The environment of every process the tests start."""
    return {
        **{k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTQ_", "CELERY", "OTEL_"))},
        "DATABASE_URL": services.database_url,
        "REDIS_URL": services.redis_url,
        "AGENTQ_AGENTS": TEST_AGENTS,
        "AGENTQ_LLM_BASE_URL": fake_llm.base_url,
        "AGENTQ_LLM_API_KEY": LLM_KEY,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **FAST,
    }


@pytest.fixture(scope="session")
def settings(services: Services, fake_llm: FakeLLM) -> Settings:
    fast = {name.removeprefix("AGENTQ_").lower(): value for name, value in FAST.items()}
    return load_settings(database_url=services.database_url, redis_url=services.redis_url,
                         agents=[TEST_AGENTS], llm_base_url=fake_llm.base_url,
                         llm_api_key=LLM_KEY, **fast)


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Runtime:
    return build_runtime(settings)


@pytest.fixture(scope="session")
def app(runtime: Runtime) -> Flask:
    return create_app(runtime=runtime)


@pytest.fixture(scope="session")
def worker(env: dict[str, str], runtime: Runtime, services: Services) -> Iterator[Worker]:
    """One real worker process (with beat, so the sweeper runs) for the whole session."""
    queues = ",".join((*RUN_QUEUES, MAINTENANCE_QUEUE, NOTIFY_QUEUE))  # not cpu: its own
    process = Worker(env=env, log=services.root / "worker.log", name="w-session", beat=True,
                     queues=queues)
    process.start()
    process.wait_ready(runtime.celery)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api_server(env: dict[str, str], services: Services) -> Iterator[ApiServer]:
    """The API under gunicorn, for behaviour that is about HTTP itself."""
    server = ApiServer(env=env, log=services.root / "api.log")
    server.start()
    server.wait_ready()
    yield server
    server.stop()


@dataclass
class Tenant:
    id: str
    name: str
    key: str


def make_tenant(runtime: Runtime, **key_options: Any) -> Tenant:
    """A fresh tenant with one API key."""
    name = new_id("test")
    with runtime.db.transaction() as session:
        tenant = keys.ensure_tenant(session, name=name)
        token = keys.create_key(session, tenant=tenant, **key_options)
    return Tenant(id=tenant.id, name=name, key=token)


class ApiClient:
    """Flask's test client with a tenant's key, and helpers that wait on real workers."""

    def __init__(self, client: FlaskClient, tenant: Tenant) -> None:
        self.client = client
        self.tenant = tenant
        self.headers = {"Authorization": f"Bearer {tenant.key}"}

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, headers={**self.headers, **kwargs.pop("headers", {})},
                               **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.client.post(path, headers={**self.headers, **kwargs.pop("headers", {})},
                                **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.client.patch(path, headers={**self.headers, **kwargs.pop("headers", {})},
                                 **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.client.delete(path, headers={**self.headers, **kwargs.pop("headers", {})},
                                  **kwargs)

    def submit(self, agent: str, input: Any = None, **fields: Any) -> dict[str, Any]:
        body = {"agent": agent, "input": {} if input is None else input, **fields}
        response = self.post("/v1/runs", json=body)
        assert response.status_code == 202, response.get_json()
        run: dict[str, Any] = response.get_json()
        return run

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.get(f"/v1/runs/{run_id}")
        assert response.status_code == 200, response.get_json()
        run: dict[str, Any] = response.get_json()
        return run

    def wait(self, run_id: str, *, statuses: frozenset[str] | set[str] = TERMINAL_STATUSES,
             timeout: float = 30.0) -> dict[str, Any]:
        """Poll the run until its status is one of ``statuses``."""
        return wait_for(lambda: (run := self.run(run_id))["status"] in statuses and run,
                        timeout=timeout, what=f"run {run_id} to reach {sorted(statuses)}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on loopback that records what it is sent."""
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def tenant(runtime: Runtime) -> Tenant:
    return make_tenant(runtime)


@pytest.fixture
def api(app: Flask, tenant: Tenant) -> ApiClient:
    return ApiClient(app.test_client(), tenant)


@pytest.fixture
def other_api(app: Flask, runtime: Runtime) -> ApiClient:
    """A second tenant, to show isolation."""
    return ApiClient(app.test_client(), make_tenant(runtime))


_names = itertools.count(1)
StartWorker = Callable[..., Worker]


@pytest.fixture
def crash_worker(env: dict[str, str], services: Services,
                 runtime: Runtime) -> Iterator[StartWorker]:
    """Start workers that consume only the crash queue (or ``queues``); stopped after the
    test."""
    started: list[Worker] = []

    def start(concurrency: int = 1, pool: str | None = None, *, queues: str = CRASH_QUEUE,
              **env_overrides: str) -> Worker:
        name = f"crash{next(_names)}"
        process = Worker(env={**env, **env_overrides}, log=services.root / f"{name}.log",
                         name=name, concurrency=concurrency, queues=queues, pool=pool)
        process.start()
        process.wait_ready(runtime.celery)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout=10)


@pytest.fixture(scope="session")
def amqp_url(services: Services) -> Iterator[str]:
    """A RabbitMQ broker URL of the session's own: ``TEST_AMQP_URL``, or a fresh virtual host
    on the local RabbitMQ (made with ``rabbitmqctl`` and deleted after the session)."""
    given = os.environ.get("TEST_AMQP_URL")
    if given:
        yield given
        return
    ctl = shutil.which("rabbitmqctl") or next(
        (path for path in ("/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl")
         if os.access(path, os.X_OK)), None)
    if ctl is None:
        pytest.skip("no RabbitMQ: set TEST_AMQP_URL or install rabbitmq-server (rabbitmqctl)")
    vhost = f"agentq-test-{uuid.uuid4().hex[:12]}"

    def rabbitmqctl(*args: str) -> None:
        done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.skip(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[:300]}")

    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)
