"""Throughput: submit, end to end, and a worker process's rate, beside the bare stack.

    python bench/throughput.py [--quick]

1. submit: ``POST /v1/runs`` at 32 concurrent connections (2 gunicorn gevent workers), beside
   the minimal Flask endpoint (one ORM INSERT + COMMIT, one ``apply_async``) served the same way.
2. end to end: no-op runs submitted at full speed for a while, one worker process (the
   Procfile's, its default slots): completed runs/s and submit -> terminal p50/p99, beside
   the minimal pipeline (that endpoint plus 2 prefork Celery processes whose task UPDATEs
   the row to done).
3. per worker process: a backlog of no-op runs drained by one worker process (default
   slots), beside raw Celery (one prefork child) draining no-op tasks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg
from sqlalchemy import func, select

from agentq.embedded import free_port
from bench.cluster import Cluster
from bench.load import Load, combined, drive
from bench.report import Figure, table
from bench.stream import percentile
from tests.harness import BIN, Worker, wait_for
from worker.base.models import Run, RunStatus
from worker.runs.submission import RunRequest, submit

CONNECTIONS = 32
WARMUP_S = 2
ROUNDS = 3
NOOP: dict[str, object] = {"agent": "bench.noop", "input": {}}


def _baseline_api(cluster: Cluster) -> str:
    port = free_port()
    cluster.process("baseline-api", [
        str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--worker-class", "gevent",
        "--workers", "2", "--worker-connections", "2000", "bench.baseline.minimal:app"])
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.post(f"{url}/jobs", json={}, timeout=1).status_code == 202
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=30, interval=0.2, what="the baseline endpoint")
    return url


def baseline(cluster: Cluster) -> Any:
    """The baseline module, imported in this process for this cluster's servers."""
    os.environ["DATABASE_URL"] = cluster.env["DATABASE_URL"]
    os.environ["REDIS_URL"] = cluster.env["REDIS_URL"]
    module = importlib.import_module("bench.baseline.minimal")
    if cluster.env["REDIS_URL"] != module.REDIS_URL:  # a module from an earlier cluster
        module = importlib.reload(module)
    return module


def _baseline_worker(cluster: Cluster, concurrency: int) -> None:
    worker = Worker(env=cluster.env, log=cluster.root / "baseline-worker.log",
                    name="baseline", concurrency=concurrency, queues="baseline",
                    app="bench.baseline.minimal:celery")
    worker.start()
    cluster.processes.append(worker)
    worker.wait_ready(baseline(cluster).celery)


def _cluster(root: Path, *, workers: int, concurrency: int = 2) -> Cluster:
    cluster = Cluster(root, workers=workers, concurrency=concurrency, beat=False, api=True,
                      api_args=("--workers", "2"))
    with psycopg.connect(cluster.env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baseline_jobs (id bigserial PRIMARY KEY, "
                     "payload jsonb, status text NOT NULL, created_at timestamptz NOT NULL "
                     "DEFAULT clock_timestamp(), done_at timestamptz)")
    return cluster


def submit_figures(seconds: float) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="agentq-submit-") as tmp:
        cluster = _cluster(Path(tmp), workers=0)
        try:
            assert cluster.api is not None
            _, key = cluster.tenant_key("submit")
            baseline_url = _baseline_api(cluster)
            agentq = partial(drive, f"{cluster.api.url}/v1/runs", body=NOOP,
                             headers={"Authorization": f"Bearer {key}"},
                             connections=CONNECTIONS)
            bare = partial(drive, f"{baseline_url}/jobs", body={"n": 1}, headers={},
                           connections=CONNECTIONS)
            # Both warmed alike first (pools filled, statements prepared, caches made),
            # then measured in alternating rounds, so that a drift in what else the
            # machine is doing weighs on both alike.
            agentq(seconds=WARMUP_S), bare(seconds=WARMUP_S)
            rounds = [(agentq(seconds=seconds / ROUNDS), bare(seconds=seconds / ROUNDS))
                      for _ in range(ROUNDS)]
            ours, theirs = (combined([pair[i] for pair in rounds]) for i in (0, 1))
        finally:
            cluster.close()
    _check(ours)
    return [
        Figure("submit: requests/s at 32 connections", ours.requests_per_s, "req/s",
               theirs.requests_per_s, ">= 0.8x"),
        Figure("submit: p50 latency", ours.p50_ms, "ms", theirs.p50_ms),
        Figure("submit: p99 latency", ours.p99_ms, "ms", theirs.p99_ms),
    ]


def _check(load: Load) -> None:
    if load.errors:
        raise AssertionError(f"{load.errors} requests failed during the load")


def _drain(count: Callable[[], tuple[int, int]], expected: int, timeout: float) -> None:
    wait_for(lambda: count()[0] >= expected, timeout=timeout, interval=0.2,
             what="the backlog to drain")


def end_to_end_figures(seconds: float) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="agentq-e2e-") as tmp:
        # One worker process with its default slots; the baseline, Celery's prefork with 2
        cluster = _cluster(Path(tmp), workers=1, concurrency=500)
        try:
            assert cluster.api is not None
            tenant_id, key = cluster.tenant_key("e2e")
            baseline_url = _baseline_api(cluster)
            _baseline_worker(cluster, concurrency=2)
            ours = _pipeline(lambda: drive(
                f"{cluster.api.url}/v1/runs", body=NOOP,  # type: ignore[union-attr]
                headers={"Authorization": f"Bearer {key}"}, connections=CONNECTIONS,
                seconds=seconds), lambda: _agentq_stats(cluster, tenant_id))
            theirs = _pipeline(lambda: drive(
                f"{baseline_url}/jobs", body={"n": 1}, headers={}, connections=CONNECTIONS,
                seconds=seconds), lambda: _baseline_stats(cluster))
        finally:
            cluster.close()
    return [
        Figure("end to end: completed runs/s, 1 worker process (bare: 2)", ours[0], "runs/s",
               theirs[0],
               ">= 0.5x"),
        Figure("end to end: submit -> done p50", ours[1], "ms", theirs[1]),
        Figure("end to end: submit -> done p99", ours[2], "ms", theirs[2]),
    ]


def _pipeline(load: Callable[[], Load],
              stats: Callable[[], tuple[int, int, list[float], float]]) -> tuple[float, ...]:
    _check(load())
    wait_for(lambda: (s := stats())[0] >= s[1], timeout=600, interval=0.5,
             what="every submitted run to finish")
    done, _, latencies, span = stats()
    return done / span, percentile(latencies, 0.5), percentile(latencies, 0.99)


def _agentq_stats(cluster: Cluster, tenant_id: str) -> tuple[int, int, list[float], float]:
    with cluster.runtime.db.transaction() as session:
        rows = session.execute(select(Run.created_at, Run.finished_at).where(
            Run.tenant_id == tenant_id)).all()
    return _stats([(row.created_at, row.finished_at) for row in rows])


def _baseline_stats(cluster: Cluster) -> tuple[int, int, list[float], float]:
    with psycopg.connect(cluster.env["DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT created_at, done_at FROM baseline_jobs").fetchall()
    return _stats(rows)


def _stats(rows: list[tuple[object, object]]) -> tuple[int, int, list[float], float]:
    done = [(created, finished) for created, finished in rows if finished is not None]
    latencies = [(f - c).total_seconds() * 1000 for c, f in done]  # type: ignore[operator]
    if not done:
        return 0, len(rows), [], 1.0
    span = (max(f for _, f in done) - min(c for c, _ in done)).total_seconds()  # type: ignore
    return len(done), len(rows), latencies, max(span, 1e-3)


def per_process_figures(backlog: int) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="agentq-rate-") as tmp:
        cluster = _cluster(Path(tmp), workers=0)
        try:
            rt = cluster.runtime
            tenant_id, _ = cluster.tenant_key("rate")
            for _ in range(backlog):
                submit(rt, tenant_id=tenant_id, request=RunRequest(agent="bench.noop"))
            started = time.monotonic()
            # The Procfile's worker: one process, its default AGENTQ_WORKER_SLOTS
            worker = Worker(env=cluster.env, log=cluster.root / "rate.log", name="rate",
                            concurrency=500)
            worker.start()
            cluster.processes.append(worker)

            def finished() -> int:
                with rt.db.transaction() as session:
                    return int(session.scalar(select(func.count()).select_from(Run).where(
                        Run.tenant_id == tenant_id, Run.status == RunStatus.SUCCEEDED)) or 0)

            wait_for(lambda: finished() >= backlog, timeout=600, interval=0.2,
                     what="the run backlog")
            ours = backlog / (time.monotonic() - started)
            bare = baseline(cluster)
            for _ in range(backlog):
                bare.noop.apply_async()
            started = time.monotonic()
            _baseline_worker(cluster, concurrency=1)

            def left() -> int:
                with bare.celery.connection_for_read() as conn:
                    return int(conn.default_channel.client.llen("baseline"))

            wait_for(lambda: left() == 0, timeout=600, interval=0.1, what="the task backlog")
            theirs = backlog / (time.monotonic() - started)
        finally:
            cluster.close()
    return [Figure("one worker process: no-op runs/s", ours, "runs/s", theirs)]


def figures(quick: bool) -> list[Figure]:
    return [*submit_figures(9 if quick else 30),
            *end_to_end_figures(5 if quick else 15),
            *per_process_figures(500 if quick else 3000)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (under a minute)")
    args = parser.parse_args(argv)
    print(table(figures(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
