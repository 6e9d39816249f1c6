"""A whole agentq on this machine for a benchmark: Postgres, Redis, workers, beat, the API."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import psycopg

from agentq import migrate
from agentq.embedded import EmbeddedPostgres, EmbeddedRedis
from tests.harness import BIN, ROOT, ApiServer, Process, Worker
from worker.access import keys
from worker.app import build_runtime
from worker.base.models import new_id
from worker.base.runtime import Runtime
from worker.base.settings import load_settings

FAST = {
    # Benchmarks measure the platform, not its guard rails: no rate limit, no queued cap.
    "AGENTQ_RATE_LIMIT_PER_MINUTE": "0",
    "AGENTQ_TENANT_MAX_QUEUED": "0",
    "AGENTQ_SWEEP_INTERVAL_S": "1",
    "AGENTQ_DISPATCH_GRACE_S": "1",
    "AGENTQ_REDISPATCH_AFTER_S": "5",
    "AGENTQ_HEARTBEAT_INTERVAL_S": "1",
    "AGENTQ_LEASE_TIMEOUT_S": "5",
    "AGENTQ_LOG_LEVEL": "WARNING",
    "AGENTQ_DASHBOARD": "false",  # the JSON API only: no cookie secret needed
}


class Cluster:
    """Everything a benchmark runs against, started in ``root`` and stopped by ``close``."""

    def __init__(self, root: Path, *, workers: int = 2, concurrency: int = 2,
                 beat: bool = True, api: bool = False, settings: dict[str, str] | None = None,
                 api_args: tuple[str, ...] = (), queues: str | None = None) -> None:
        self.root = root
        self.postgres = EmbeddedPostgres(root / "postgres", durable=False)
        self.redis = EmbeddedRedis(root / "redis", durable=False)
        database_url, redis_url = self.postgres.start(), self.redis.start()
        migrate.upgrade(database_url)
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_effects "
                         "(run_id text NOT NULL, attempt int NOT NULL)")
        tuned = {**FAST, **(settings or {})}
        self.env = {"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                    "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                    "BENCH_EFFECTS_URL": database_url, "AGENTQ_AGENTS": "bench.agents",
                    **tuned}
        fast = {k.removeprefix("AGENTQ_").lower(): v for k, v in tuned.items()}
        self.runtime: Runtime = build_runtime(load_settings(
            database_url=database_url, redis_url=redis_url, agents=["bench.agents"], **fast))
        self.processes: list[Process] = []
        if beat:
            self.processes.append(Process(
                [str(BIN / "celery"), "-A", "worker", "beat", "--schedule",
                 str(root / "beat-schedule")], env=self.env, log=root / "beat.log"))
            self.processes[-1].start()
        self.concurrency = concurrency
        self.queues = queues
        self.workers = [self._worker(i) for i in range(workers)]
        for worker in self.workers:
            worker.wait_ready(self.runtime.celery)
        self.api: ApiServer | None = None
        if api:
            self.api = ApiServer(env=self.env, log=root / "api.log", extra_args=api_args)
            self.api.start()
            self.api.wait_ready()

    def process(self, name: str, args: list[str]) -> Process:
        """Start another process of the cluster's (a baseline, say); stopped by ``close``."""
        started = Process(args, env=self.env, log=self.root / f"{name}.log")
        started.start()
        self.processes.append(started)
        return started

    def _worker(self, index: int) -> Worker:
        worker = Worker(env=self.env, log=self.root / f"worker{index}.log",
                        name=f"bench{index}", concurrency=self.concurrency, queues=self.queues)
        worker.start()
        return worker

    def start_notifier(self, concurrency: int = 16) -> Worker:
        """A worker for the notify queue only, with a threads pool (as the Procfile's)."""
        notifier = Worker(env=self.env, log=self.root / "notifier.log", name="notifier",
                          concurrency=concurrency, queues="notify", pool="threads")
        notifier.start()
        notifier.wait_ready(self.runtime.celery)
        self.processes.append(notifier)
        return notifier

    def tenant_key(self, name: str) -> tuple[str, str]:
        """A fresh tenant and an API key for it: (tenant id, key)."""
        with self.runtime.db.transaction() as session:
            tenant = keys.ensure_tenant(session, name=new_id(name))
            token = keys.create_key(session, tenant=tenant)
        return tenant.id, token

    def kill_worker(self) -> None:
        """SIGKILL a random worker with its pool children, and start it again."""
        index = random.randrange(len(self.workers))
        self.workers[index].signal(signal.SIGKILL)
        popen = self.workers[index].popen
        assert popen is not None
        popen.wait(timeout=10)
        self.workers[index] = self._worker(index)

    def close(self) -> None:
        for process in (*([self.api] if self.api else []), *self.workers, *self.processes):
            process.stop(timeout=10)
        self.redis.stop()
        self.postgres.stop()
