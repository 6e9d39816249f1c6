"""Notify: signed webhook deliveries to a local receiver, beside a bare HTTP POST loop.

    python bench/notify.py [--deliveries 1000] [--concurrency 16]

Starts its own cluster and a receiver on loopback, then measures:

- throughput: N runs end while the notifier (a threads pool, as in the Procfile), started
  and warm, does not consume, so N deliveries wait in the ``notify`` queue; then it is told to
  consume and sends them all: deliveries/s, beside a bare loop of the same number of POSTs
  from as many threads;
- latency: with the notifier running, runs end one after another; for each, the time from
  the run's terminal commit (its terminal event's timestamp) to the receiver reading the
  request: p50 / p99.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, select

from bench.cluster import Cluster
from bench.report import Figure
from bench.stream import percentile
from tests.harness import wait_for
from worker.base.models import Delivery, RunEvent
from worker.base.ssrf import Guard
from worker.delivery import webhooks
from worker.runs.submission import RunRequest, submit


class Receiver:
    """Counts requests, and notes when each webhook-id arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                now = time.time()
                with lock:
                    receiver.count += 1
                    if "webhook-id" in self.headers:
                        receiver.arrivals[json.loads(body)["data"]["id"]] = now
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def bare_loop(url: str, n: int, threads: int) -> float:
    """POSTs/s of a plain httpx loop, ``threads`` at a time: the baseline."""
    body = json.dumps({"type": "run.succeeded", "data": {"id": "baseline"}}).encode()

    def post_some(count: int) -> None:
        with httpx.Client(timeout=15) as client:
            for _ in range(count):
                client.post(url, content=body, headers={"content-type": "application/json"})

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post_some, [n // threads] * threads))
    return (n // threads * threads) / (time.monotonic() - started)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16, help="notifier threads")
    parser.add_argument("--latency-runs", type=int, default=200)
    return parser


def run(args: argparse.Namespace) -> tuple[float, float, list[float]]:
    """Deliveries/s, the bare loop's POSTs/s, and commit -> receiver latencies (ms)."""
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="agentq-notify-") as tmp:
        cluster = Cluster(Path(tmp), workers=2, concurrency=2, beat=False,
                          queues="runs.high,runs.normal,runs.low,maintenance",
                          settings={"AGENTQ_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8"})
        try:
            rt = cluster.runtime
            tenant_id, _ = cluster.tenant_key("notify")
            with rt.db.transaction() as session:
                webhooks.create_endpoint(session, tenant_id=tenant_id, url=receiver.url,
                                         events=None, guard=Guard.of(rt.settings))

            def queued() -> int:
                with rt.db.transaction() as session:
                    return int(session.scalar(select(func.count()).select_from(Delivery).where(
                        Delivery.tenant_id == tenant_id)) or 0)

            # A warm notifier, told to stop consuming while the deliveries queue up, then to
            # start: its boot (about 2.5 s here) is not part of its delivery rate.
            cluster.start_notifier(args.concurrency)
            notifier = [name for reply in rt.celery.control.ping(timeout=1) for name in reply
                        if name.startswith("notifier@")]
            rt.celery.control.cancel_consumer("notify", destination=notifier, reply=True)
            for _ in range(args.deliveries):
                submit(rt, tenant_id=tenant_id, request=RunRequest(agent="bench.noop"))
            wait_for(lambda: queued() >= args.deliveries, timeout=600, interval=0.5,
                     what="every run to end")
            started = time.monotonic()
            rt.celery.control.add_consumer("notify", destination=notifier, reply=True)
            wait_for(lambda: receiver.count >= args.deliveries, timeout=600, interval=0.01,
                     what="every delivery")
            rate = args.deliveries / (time.monotonic() - started)

            receiver.arrivals.clear()
            run_ids = []
            for _ in range(args.latency_runs):
                run_ids.append(submit(rt, tenant_id=tenant_id,
                                      request=RunRequest(agent="bench.noop")).id)
                time.sleep(0.02)
            wait_for(lambda: all(run_id in receiver.arrivals for run_id in run_ids),
                     timeout=120, what="the latency round's deliveries")
            with rt.db.transaction() as session:
                ended: dict[str, datetime] = {
                    row.run_id: row.at for row in session.execute(
                        select(RunEvent.run_id, func.max(RunEvent.at).label("at"))
                        .where(RunEvent.run_id.in_(run_ids)).group_by(RunEvent.run_id))}
            latencies = [(receiver.arrivals[run_id] - ended[run_id].timestamp()) * 1000
                         for run_id in run_ids]
        finally:
            cluster.close()
    baseline = bare_loop(receiver.url, args.deliveries, args.concurrency)
    return rate, baseline, latencies


def figures(quick: bool) -> list[Figure]:
    args = parser().parse_args(["--deliveries", "500", "--latency-runs", "50"] if quick else [])
    rate, baseline, latencies = run(args)
    return [
        Figure("notify: deliveries/s (vs bare POST loop)", rate, "/s", baseline, ">= 200"),
        Figure("notify: terminal commit -> receiver p50", percentile(latencies, 0.5), "ms",
               None, "<= 50"),
        Figure("notify: terminal commit -> receiver p99", percentile(latencies, 0.99), "ms"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rate, baseline, latencies = run(args)
    print(f"notify: {args.deliveries} deliveries to a loopback receiver, notifier threads "
          f"{args.concurrency}")
    print(f"{'deliveries/s (signed, recorded)':36}{rate:>10.0f}  target >= 200")
    print(f"{'bare POSTs/s, same threads (baseline)':36}{baseline:>10.0f}  "
          f"ratio {rate / baseline:.2f}")
    print(f"{'terminal commit -> receiver p50 (ms)':36}{percentile(latencies, 0.5):>10.1f}"
          "  target <= 50")
    print(f"{'terminal commit -> receiver p99 (ms)':36}{percentile(latencies, 0.99):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
