"""Streams: N concurrent SSE streams on one API process while runs emit events.

    python bench/stream.py [--streams 1000] [--runs 10] [--rate 2]

Starts its own cluster (Postgres, Redis, workers, one gunicorn+gevent API process), opens
``--streams`` SSE streams spread over ``--runs`` runs of ``bench.ticker`` (each emits
``--rate`` events a second, stamped with the emit's wall-clock time), and prints:

- connections held: streams that stayed open to their run's terminal event;
- emit -> client latency p50 / p99 (each event, on each stream);
- the API process's RSS with the streams open;
- POST /v1/runs p50 with the streams open, beside the same with no streams (the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil

from bench.cluster import Cluster
from bench.report import Figure


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def follow(client: httpx.AsyncClient, run_id: str, latencies: list[float],
                 opened: asyncio.Event, counter: list[int]) -> bool:
    """Hold one SSE stream to the end; record each tick's emit-to-receive latency. True if
    it saw its run succeed; a stream refused or cut off counts as not held."""
    settled = False

    def settle() -> None:  # opened, or failed to: either way the wait for the rest goes on
        nonlocal settled
        if not settled:
            settled = True
            counter[0] += 1
            if counter[0] == counter[1]:
                opened.set()

    try:
        async with client.stream("GET", f"/v1/runs/{run_id}/events",
                                 headers={"Accept": "text/event-stream"}) as response:
            settle()
            if response.status_code != 200:
                counter[2] += 1
                return False
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "progress" and "t" in data:
                        latencies.append((time.time() - data["t"]) * 1000)
                    elif event == "status" and data.get("status") in {"succeeded", "failed"}:
                        return bool(data["status"] == "succeeded")
    except httpx.HTTPError:
        counter[2] += 1
    finally:
        settle()
    return False


async def post_latency(client: httpx.AsyncClient, n: int) -> list[float]:
    """Sequential POST /v1/runs (a no-op agent): milliseconds per request."""
    timings = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post("/v1/runs", json={"agent": "bench.noop"})
        assert response.status_code == 202, response.text
        timings.append((time.perf_counter() - started) * 1000)
    return timings


async def measure(url: str, key: str, args: argparse.Namespace) -> dict[str, float]:
    limits = httpx.Limits(max_connections=args.streams + 50, max_keepalive_connections=50)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits,
                                 timeout=httpx.Timeout(60, connect=30)) as client:
        baseline = await post_latency(client, args.posts)
        warmup = max(10.0, args.streams / 100)  # time to open every stream before ticks
        run_ids = []
        for _ in range(args.runs):
            response = await client.post("/v1/runs", json={"agent": "bench.ticker", "input": {
                "warmup_s": warmup, "count": int(args.rate * args.seconds),
                "interval_s": 1 / args.rate}})
            run_ids.append(response.json()["id"])
        latencies: list[float] = []
        opened, counter = asyncio.Event(), [0, args.streams, 0]  # settled, wanted, failed
        tasks = []
        for i in range(args.streams):
            tasks.append(asyncio.create_task(
                follow(client, run_ids[i % args.runs], latencies, opened, counter)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # open them in waves, not one SYN storm
        await asyncio.wait_for(opened.wait(), timeout=warmup + 90)  # a busy machine
        await asyncio.sleep(max(0.0, warmup - args.streams / 1000) + 1)  # ticks are flowing
        under_load = await post_latency(client, args.posts)
        # Every stream ends with its run; one that does not is a failure, not a hang.
        held = sum(await asyncio.wait_for(asyncio.gather(*tasks),
                                          timeout=warmup + args.seconds + 120))
    return {
        "held": held, "failed": counter[2], "latencies": len(latencies),
        "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
        "post_p50_idle": statistics.median(baseline),
        "post_p50_loaded": statistics.median(under_load),
    }


def api_rss_mb(cluster: Cluster) -> float:
    """Resident memory of the API's gunicorn worker process(es)."""
    assert cluster.api is not None
    master = psutil.Process(cluster.api.pid)
    return float(sum(child.memory_info().rss for child in master.children())) / 2**20


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10, help="runs the streams follow")
    parser.add_argument("--rate", type=float, default=2.0, help="events a second per run")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long runs emit")
    parser.add_argument("--posts", type=int, default=100, help="POSTs timed per phase")
    return parser


def run(args: argparse.Namespace) -> dict[str, float]:
    """Measure; the figures, with the API's RSS idle and at its peak (MB)."""
    with tempfile.TemporaryDirectory(prefix="agentq-stream-") as tmp:
        cluster = Cluster(Path(tmp), workers=2, concurrency=max(2, args.runs // 2 + 1),
                          beat=False, api=True,
                          api_args=("--worker-connections", str(args.streams + 500)))
        try:
            assert cluster.api is not None
            _, key = cluster.tenant_key("stream")
            rss_idle = api_rss_mb(cluster)
            rss: list[float] = []

            async def streams() -> dict[str, float]:
                async def sample() -> None:
                    while True:
                        rss.append(api_rss_mb(cluster))
                        await asyncio.sleep(0.5)

                sampler = asyncio.create_task(sample())
                try:
                    return await measure(cluster.api.url, key, args)  # type: ignore[union-attr]
                finally:
                    sampler.cancel()

            figures = asyncio.run(streams())
        finally:
            cluster.close()
    return {**figures, "rss_idle": rss_idle, "rss_peak": max(rss or [0.0])}


def figures(quick: bool) -> list[Figure]:
    args = parser().parse_args(["--seconds", "8", "--posts", "30"] if quick else [])
    got = run(args)
    return [
        Figure(f"streams: held to the end, of {args.streams}", got["held"], "streams",
               args.streams, "== 1x"),
        Figure("streams: refused or cut off", got["failed"], "streams", None, "== 0"),
        Figure("streams: emit -> client p50", got["p50"], "ms"),
        Figure("streams: emit -> client p99", got["p99"], "ms", None, "<= 100"),
        Figure("streams: POST /v1/runs p50 under them", got["post_p50_loaded"], "ms",
               got["post_p50_idle"]),
        Figure(f"memory: API RSS with {args.streams} streams", got["rss_peak"], "MB",
               got["rss_idle"], "<= 200"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    figures = run(args)
    rss_idle, rss_peak = figures["rss_idle"], figures["rss_peak"]
    print(f"streams: {args.streams} SSE streams on one API process (gunicorn, gevent), "
          f"{args.runs} runs x {args.rate:g} events/s for {args.seconds:g} s")
    print(f"{'connections held':34}{figures['held']:>10.0f}  of {args.streams}")
    print(f"{'refused or cut off':34}{figures['failed']:>10.0f}")
    print(f"{'events received':34}{figures['latencies']:>10.0f}")
    print(f"{'emit -> client p50 (ms)':34}{figures['p50']:>10.1f}")
    print(f"{'emit -> client p99 (ms)':34}{figures['p99']:>10.1f}  target <= 100")
    print(f"{'API RSS, idle / peak (MB)':34}{rss_idle:>10.1f} / {rss_peak:.1f}"
          "  target <= 200")
    print(f"{'POST /v1/runs p50, no streams (ms)':34}{figures['post_p50_idle']:>10.1f}"
          "  (baseline)")
    print(f"{'POST /v1/runs p50, streams (ms)':34}{figures['post_p50_loaded']:>10.1f}")
    ok = figures["held"] == args.streams and figures["p99"] <= 100
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
