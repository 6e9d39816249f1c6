"""Inbound: time to 2xx for signed GitHub deliveries while every worker is busy.

    python bench/inbound.py [--rate 50] [--seconds 10]

Starts its own cluster (one gunicorn+gevent API process, 2 workers), fills every worker
slot with slow runs (and a backlog behind them), then sends signed GitHub deliveries at a
steady rate and times each answer; beside it, the same rate of ``GET /health/live`` (the
same server answering without touching anything) is the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.cluster import Cluster
from bench.report import Figure
from bench.stream import percentile
from worker.inbound import hooks as hook_sources
from worker.runs.submission import RunRequest, submit

SECRET = "bench-github-secret-0123456789"


def paced(rate: float, seconds: float, call: Callable[[], None]) -> list[float]:
    """Call ``call`` ``rate`` times a second for ``seconds``; the milliseconds each took."""
    timings: list[float] = []
    lock = threading.Lock()
    threads = []
    start = time.monotonic()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)

        def one() -> None:
            began = time.perf_counter()
            call()
            with lock:
                timings.append((time.perf_counter() - began) * 1000)

        thread = threading.Thread(target=one)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(timeout=60)
    return timings


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    return parser


def run(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """Milliseconds to 2xx of each delivery, and of each GET /health/live (the baseline)."""
    with tempfile.TemporaryDirectory(prefix="agentq-inbound-") as tmp:
        cluster = Cluster(Path(tmp), workers=2, concurrency=2, beat=False, api=True,
                          settings={"AGENTQ_SHUTDOWN_GRACE_S": "0"})
        try:
            assert cluster.api is not None
            rt = cluster.runtime
            tenant_id, _ = cluster.tenant_key("inbound")
            with rt.db.transaction() as session:
                source = hook_sources.create_source(session, rt=rt, tenant_id=tenant_id,
                                               provider="github", secret=SECRET,
                                               agent="bench.noop", events=None, reply_url=None)
                source_id = source.id
            for _ in range(40):  # every worker slot busy, and a backlog behind them
                submit(rt, tenant_id=tenant_id, request=RunRequest(
                    agent="bench.ticker", input={"warmup_s": 120, "count": 0}))
            time.sleep(2)
            client = httpx.Client(base_url=cluster.api.url, timeout=30,
                                  limits=httpx.Limits(max_connections=200))

            def deliver() -> None:
                body = json.dumps({"action": "opened", "id": uuid.uuid4().hex}).encode()
                signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                response = client.post(f"/hooks/{source_id}", content=body, headers={
                    "X-Hub-Signature-256": f"sha256={signature}", "X-GitHub-Event": "issues",
                    "X-GitHub-Delivery": str(uuid.uuid4()), "Content-Type": "application/json"})
                assert response.status_code == 200, response.text

            def health() -> None:
                client.get("/health/live")

            paced(args.rate, 2, deliver)  # warm-up: pooled connections, first-use imports
            paced(args.rate, 2, health)
            hooks = paced(args.rate, args.seconds, deliver)
            baseline = paced(args.rate, args.seconds, health)
            client.close()
        finally:
            cluster.close()
    return hooks, baseline


def figures(quick: bool) -> list[Figure]:
    hooks, baseline = run(parser().parse_args(["--seconds", "5"] if quick else []))
    return [
        Figure("inbound: delivery -> 2xx p50, busy workers", percentile(hooks, 0.5), "ms",
               percentile(baseline, 0.5)),
        Figure("inbound: delivery -> 2xx p99, busy workers", percentile(hooks, 0.99), "ms",
               percentile(baseline, 0.99), "<= 100"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    hooks, baseline = run(args)
    print(f"inbound: signed GitHub deliveries at {args.rate:g}/s for {args.seconds:g} s, "
          "every worker busy with slow runs")
    print(f"{'delivery -> 2xx p50 (ms)':30}{percentile(hooks, 0.5):>9.1f}")
    print(f"{'delivery -> 2xx p90 (ms)':30}{percentile(hooks, 0.9):>9.1f}")
    print(f"{'delivery -> 2xx p99 (ms)':30}{percentile(hooks, 0.99):>9.1f}  target <= 100")
    print(f"{'GET /health/live p50 (ms)':30}{percentile(baseline, 0.5):>9.1f}  (baseline)")
    print(f"{'GET /health/live p99 (ms)':30}{percentile(baseline, 0.99):>9.1f}")
    return 0 if percentile(hooks, 0.99) <= 100 else 1


if __name__ == "__main__":
    sys.exit(main())
