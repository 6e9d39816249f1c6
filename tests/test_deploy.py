"""A rolling deploy: every process restarted once while runs flow; every run ends once.

The test owns its cluster (Postgres, Redis, two workers, beat, the API under gunicorn).
Clients behave as a well-written client does: a POST that meets a restart is repeated with
the same Idempotency-Key, and an SSE stream that drops is resumed with Last-Event-ID.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from agentq import migrate
from agentq.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.conftest import FAST, TEST_AGENTS, make_tenant
from tests.harness import BIN, ROOT, ApiServer, Process, Worker, sse_events, wait_for
from worker.app import build_runtime
from worker.base.models import TERMINAL_STATUSES, Run, RunEvent
from worker.base.runtime import Runtime
from worker.base.settings import load_settings

pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, root: Path) -> None:
        self.postgres = EmbeddedPostgres(root / "postgres", durable=False)
        self.redis = EmbeddedRedis(root / "redis", durable=False)
        database_url, redis_url = self.postgres.start(), self.redis.start()
        migrate.upgrade(database_url)
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "DATABASE_URL": database_url,
               "REDIS_URL": redis_url, "AGENTQ_AGENTS": TEST_AGENTS, "PYTHONPATH": str(ROOT),
               **FAST, "AGENTQ_SHUTDOWN_GRACE_S": "3"}
        fast = {k.removeprefix("AGENTQ_").lower(): v for k, v in FAST.items()}
        self.runtime: Runtime = build_runtime(load_settings(
            database_url=database_url, redis_url=redis_url, agents=[TEST_AGENTS], **fast))
        self.workers = [Worker(env=env, log=root / f"w{i}.log", name=f"deploy{i}")
                        for i in range(2)]
        self.beat = Process([str(BIN / "celery"), "-A", "worker", "beat", "--schedule",
                             str(root / "beat-schedule")], env=env, log=root / "beat.log")
        self.api = ApiServer(env=env, log=root / "api.log")
        for process in (*self.workers, self.beat, self.api):
            process.start()
        for worker in self.workers:
            worker.wait_ready(self.runtime.celery)
        self.api.wait_ready()

    def close(self) -> None:
        for process in (self.api, self.beat, *self.workers):
            process.stop(timeout=10)
        self.redis.stop()
        self.postgres.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.close()


def submit_until_accepted(client: httpx.Client, body: dict[str, Any]) -> str:
    """POST with an Idempotency-Key, repeating it through restarts (at most 60 s)."""
    key = str(uuid.uuid4())

    def accepted() -> str | None:
        try:
            response = client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            return None
        return str(response.json()["id"]) if response.status_code in {200, 202} else None

    return wait_for(accepted, timeout=60, interval=0.1, what=f"{body} to be accepted")


def follow_through_drops(client: httpx.Client, run_id: str) -> list[int]:
    """Read a run's SSE stream to its end, resuming after every drop."""
    seqs: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            headers = {"Accept": "text/event-stream"}
            if seqs:
                headers["Last-Event-ID"] = str(seqs[-1])
            with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as stream:
                if stream.status_code != 200:
                    raise httpx.TransportError(f"HTTP {stream.status_code}")
                for message in sse_events(stream.iter_lines()):
                    if "id" in message:
                        seqs.append(int(message["id"]))
                        data = json.loads(message["data"])
                        if message.get("event") == "status" and \
                                data.get("status") in TERMINAL_STATUSES:
                            return seqs
        except (httpx.TransportError, httpx.RemoteProtocolError):
            time.sleep(0.2)
    raise AssertionError(f"stream of {run_id} did not end: {seqs}")


def test_a_rolling_restart_of_every_process_loses_no_run(cluster: Cluster) -> None:
    key = make_tenant(cluster.runtime).key
    client = httpx.Client(base_url=cluster.api.url, timeout=15,
                          headers={"Authorization": f"Bearer {key}"})
    accepted: list[str] = []
    stop = threading.Event()

    def keep_submitting() -> None:
        while not stop.is_set():
            accepted.append(submit_until_accepted(
                client, {"agent": "sleep", "input": {"seconds": 0.4}}))
            time.sleep(0.05)

    long_run = submit_until_accepted(client, {"agent": "test.steps",
                                              "input": {"count": 25, "pause_s": 0.4}})
    streamed: list[int] = []
    follower = threading.Thread(target=lambda: streamed.extend(
        follow_through_drops(client, long_run)))
    submitter = threading.Thread(target=keep_submitting)
    follower.start()
    submitter.start()
    wait_for(lambda: len(accepted) >= 3, timeout=60, what="traffic before the deploy")
    # The deploy: each worker, beat, then the API, one after another
    for worker in cluster.workers:
        worker.restart()
        worker.wait_ready(cluster.runtime.celery)
    cluster.beat.restart()
    cluster.api.restart()
    cluster.api.wait_ready()
    after = len(accepted)
    wait_for(lambda: len(accepted) >= after + 3, timeout=60, what="traffic after the deploy")
    stop.set()
    submitter.join(timeout=90)
    follower.join(timeout=120)
    ids = [*accepted, long_run]
    assert len(accepted) >= 10

    def ended() -> bool:
        with cluster.runtime.db.transaction() as session:
            return not session.scalar(select(func.count()).select_from(Run).where(
                Run.id.in_(ids), Run.status.not_in(list(TERMINAL_STATUSES))))

    wait_for(ended, timeout=120, interval=0.5, what="every run to end")
    with cluster.runtime.db.transaction() as session:
        statuses = set(session.scalars(select(Run.status).where(Run.id.in_(ids))))
        terminal = session.execute(
            select(RunEvent.run_id, func.count()).where(
                RunEvent.run_id.in_(ids), RunEvent.type == "status",
                RunEvent.data["status"].astext.in_([s.value for s in TERMINAL_STATUSES]))
            .group_by(RunEvent.run_id)).all()
        submitted = session.scalar(select(func.count()).select_from(Run))
    assert statuses == {"succeeded"}
    assert dict(terminal) == dict.fromkeys(ids, 1)  # every run ended, and only once
    assert submitted == len(set(ids))  # no repeated POST made a second run
    # The SSE client saw every event of the long run exactly once, across the API restart
    assert streamed == list(range(1, len(streamed) + 1)) and len(streamed) >= 28
