"""Dispatch latency: from ``POST /v1/runs`` to the agent's first line, on an idle worker.

    python bench/dispatch.py [--runs 200]

Starts its own cluster (one worker process with 2 pool processes, one gunicorn API) and
submits ``bench.stamp`` runs one at a time, each after the last has finished, so the worker
is idle when the next arrives. The agent returns the wall-clock time of its first line.
Figures: from the POST returning to that line (0 if the agent started before the answer
reached the client), and from the POST being sent; beside raw Celery: ``apply_async`` to
the task body's first line, on the same Redis, with a worker of the same shape.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.cluster import Cluster
from bench.report import Figure, table
from bench.stream import percentile
from bench.throughput import _baseline_worker, baseline
from tests.harness import wait_for


def measure(runs: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="agentq-dispatch-") as tmp:
        cluster = Cluster(Path(tmp), workers=1, concurrency=2, beat=False, api=True)
        try:
            assert cluster.api is not None
            _, key = cluster.tenant_key("dispatch")
            client = httpx.Client(base_url=cluster.api.url, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"})
            after_return, after_send = [], []
            for number in range(runs + 5):  # the first 5 warm up connections and imports
                sent = time.time()
                response = client.post("/v1/runs", json={"agent": "bench.stamp"})
                returned = time.time()
                assert response.status_code == 202, response.text
                url = f"/v1/runs/{response.json()['id']}"
                run = wait_for(lambda url=url: (r := client.get(url).json())["status"]  # type: ignore[misc]
                               == "succeeded" and r, timeout=30, interval=0.005,
                               what="the stamp run")
                started = run["result"]["t"]
                if number >= 5:
                    after_return.append(max(0.0, started - returned) * 1000)
                    after_send.append((started - sent) * 1000)
                time.sleep(0.05)
            client.close()

            bare = baseline(cluster)
            _baseline_worker(cluster, concurrency=2)
            redis = bare.redis.Redis.from_url(bare.REDIS_URL)
            redis.delete("baseline:latency")
            raw = []
            for number in range(runs + 5):
                bare.stamp.apply_async(args=[time.time()])
                def stamped(n: int = number) -> bool:
                    return int(redis.llen("baseline:latency")) > n

                wait_for(stamped, timeout=30, interval=0.002, what="the stamp task")
                time.sleep(0.05)
            raw = [float(v) * 1000 for v in redis.lrange("baseline:latency", 5, -1)]
        finally:
            cluster.close()
    return {"after_return": after_return, "after_send": after_send, "raw": raw}


def figures(quick: bool) -> list[Figure]:
    measured = measure(50 if quick else 200)
    ours, sent, raw = measured["after_return"], measured["after_send"], measured["raw"]
    return [
        Figure("dispatch: POST returned -> agent p50", percentile(ours, 0.5), "ms",
               percentile(raw, 0.5), "<= 5"),
        Figure("dispatch: POST returned -> agent p99", percentile(ours, 0.99), "ms",
               percentile(raw, 0.99), "<= 25"),
        Figure("dispatch: POST sent -> agent p50", percentile(sent, 0.5), "ms",
               percentile(raw, 0.5)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 runs instead of 200")
    args = parser.parse_args(argv)
    print(table(figures(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
