"""In-flight capacity: N ``llm.chat`` runs submitted at once against an endpoint that answers
after 10 s, held by one worker process: the Procfile's ``worker`` with its defaults
(AGENTQ_WORKER_SLOTS 2,000, unless ``--slots`` says otherwise).

    python bench/inflight.py [--runs 500,2000] [--delay 10] [--slots N]

Baseline in the same run: raw asyncio connections making the same N calls to the same
endpoint (the floor: about the delay, at any N). Figures for each N: the time until every
run has succeeded (from the first submission), beside the floor; the runs' own time to
their LLM call (queue wait: from its submission to the endpoint seeing the call); the
worker's RSS (the process and its children, the most seen).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import httpx
import psutil
import psycopg

from agentq.embedded import free_port
from bench.cluster import Cluster
from bench.report import Figure, table
from bench.stream import percentile
from tests.harness import BIN, ROOT, Process, wait_for

TARGETS = {500: (1.5, 400), 2000: (3.0, 700)}  # N: (times the floor, worker RSS MB)


def procfile_worker(env: dict[str, str], index: int = 0) -> list[str]:
    """The Procfile's ``worker`` command, its ${VAR:-default}s filled from ``env``."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines()
                if line.startswith("worker:"))
    command = line.partition(":")[2].replace("$$", f"{os.getpid()}-{index}")
    command = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), command)
    args = shlex.split(command)
    return [str(BIN / args[0]), *args[1:]]


async def floor(url: str, n: int) -> float:
    """Seconds for n raw asyncio connections each to make one call and read its answer."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "floor"}]})
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
               f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
               f"{body}").encode()

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.monotonic() - started


async def submit(api: str, key: str, n: int, tag: str) -> dict[str, float]:
    """Submit n llm.chat runs as fast as the API takes them; {content: submitted at}."""
    submitted: dict[str, float] = {}
    connector = aiohttp.TCPConnector(limit=64)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(api, connector=connector, headers=headers) as session:
        async def one(i: int) -> None:
            content = f"{tag}-{i}"
            submitted[content] = time.time()
            body = {"agent": "llm.chat",
                    "input": {"messages": [{"role": "user", "content": content}]}}
            async with session.post("/v1/runs", json=body) as response:
                assert response.status == 202, await response.text()

        await asyncio.gather(*(one(i) for i in range(n)))
    return submitted


class Peak:
    """The most RSS a process and its children have used, sampled twice a second."""

    def __init__(self, pid: int) -> None:
        self.mb = 0.0
        self._process = psutil.Process(pid)
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                tree = [self._process, *self._process.children(recursive=True)]
                self.mb = max(self.mb, sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.Error:
                continue

    def stop(self) -> float:
        self._stop.set()
        return self.mb


class Connections:
    """The most connections Postgres has served at once (every process's), twice a second."""

    def __init__(self, database_url: str) -> None:
        self.most = 0
        self._url = database_url.replace("+psycopg", "")
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(0.5):
                row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE backend_type = 'client backend'").fetchone()
                self.most = max(self.most, int(row[0]) - 1 if row else 0)  # not this one

    def stop(self) -> int:
        self._stop.set()
        return self.most


def measure(counts: list[int], delay_s: float, slots: int | None,
            processes: int = 1) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="agentq-inflight-") as tmp:
        root = Path(tmp)
        port = free_port()
        llm_url = f"http://127.0.0.1:{port}/v1"
        llm = Process([str(BIN / "python"), str(ROOT / "bench" / "slowllm.py"), "--port",
                       str(port), "--delay", str(delay_s)], env=dict(os.environ),
                      log=root / "llm.log")
        llm.start()
        wait_for(lambda: _up(llm_url), timeout=30, what="the slow LLM endpoint")
        cluster = Cluster(root, workers=0, api=True, api_args=("--workers", "2"),
                          settings={"AGENTQ_LLM_BASE_URL": llm_url,
                                    "AGENTQ_LLM_API_KEY": "bench-not-a-secret",
                                    "AGENTQ_LLM_TIMEOUT_S": str(delay_s * 20),
                                    **({"AGENTQ_WORKER_SLOTS": str(slots)} if slots else {})})
        try:
            workers = [cluster.process(f"worker{i}", procfile_worker(cluster.env, i))
                       for i in range(processes)]
            wait_for(lambda: len(cluster.runtime.celery.control.ping(timeout=0.5))
                     >= processes, timeout=60, interval=0.2, what="the workers")
            assert cluster.api is not None
            tenant_id, key = cluster.tenant_key("inflight")
            asyncio.run(submit(cluster.api.url, key, 5, "warm"))  # imports, pools, caches
            _wait_done(cluster.env["DATABASE_URL"], tenant_id, 5, timeout=delay_s * 10)
            return [_one(cluster, workers, tenant_id, key, llm_url, n, delay_s)
                    for n in counts]
        finally:
            cluster.close()
            llm.stop()


def _one(cluster: Cluster, workers: list[Process], tenant_id: str, key: str, llm_url: str,
         n: int, delay_s: float) -> dict[str, float]:
    assert cluster.api is not None
    floor_s = asyncio.run(floor(llm_url, n))
    database_url = cluster.env["DATABASE_URL"]
    before = _count(database_url, tenant_id)
    peaks = [Peak(worker.pid) for worker in workers]
    connections = Connections(database_url)
    started = time.time()
    submitted = asyncio.run(submit(cluster.api.url, key, n, f"n{n}"))
    submitted_s = time.time() - started
    done = _wait_done(database_url, tenant_id, before + n, timeout=max(120.0, delay_s * 12))
    took = time.time() - started
    rss = sum(peak.stop() for peak in peaks)
    most_connections = connections.stop()
    arrivals = httpx.get(f"{llm_url.removesuffix('/v1')}/arrivals", timeout=30).json()
    waits = [arrivals[content] - at for content, at in submitted.items() if content in arrivals]
    return {"n": n, "all_done_s": took if done - before >= n else float("nan"),
            "done": done - before, "floor_s": floor_s, "rss_mb": rss,
            "submitted_s": submitted_s, "connections": most_connections,
            "wait_p50_s": percentile(waits, 0.5) if waits else float("nan"),
            "wait_p99_s": percentile(waits, 0.99) if waits else float("nan")}


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url.removesuffix('/v1')}/arrivals", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _count(database_url: str, tenant_id: str) -> int:
    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM runs WHERE tenant_id = %s "
                           "AND status = 'succeeded'", (tenant_id,)).fetchone()
    return int(row[0]) if row else 0


def _wait_done(database_url: str, tenant_id: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = _count(database_url, tenant_id)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.25)
        count = _count(database_url, tenant_id)
    return count


def figures(quick: bool, counts: tuple[int, ...] = (500, 2000),
            delay_s: float = 10.0, slots: int | None = None,
            processes: int = 1) -> list[Figure]:
    rows = []
    for result in measure(list(counts), delay_s, slots, processes):
        n = int(result["n"])
        times, rss_mb = TARGETS.get(n, (None, None))
        rows += [
            Figure(f"in-flight {n:,}: all succeeded after (vs the floor)", result["all_done_s"],
                   "s", result["floor_s"], f"<= {times}x" if times else ""),
            Figure(f"in-flight {n:,}: runs done", result["done"], "runs"),
            Figure(f"in-flight {n:,}: all submitted after", result["submitted_s"], "s"),
            Figure(f"in-flight {n:,}: queue wait to the LLM call p50",
                   result["wait_p50_s"], "s", None),
            Figure(f"in-flight {n:,}: queue wait p99", result["wait_p99_s"], "s"),
            Figure(f"in-flight {n:,}: worker RSS", result["rss_mb"], "MB", None,
                   f"<= {rss_mb}" if rss_mb else ""),
            Figure(f"in-flight {n:,}: Postgres connections, most at once (API + workers)",
                   result["connections"], "conns"),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="500,2000", help="comma-separated counts")
    parser.add_argument("--delay", type=float, default=10.0, help="the endpoint's delay (s)")
    parser.add_argument("--slots", type=int, default=None,
                        help="the worker's AGENTQ_WORKER_SLOTS (default: its own default)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)
    counts = tuple(int(n) for n in args.runs.split(","))
    print(table(figures(False, counts, args.delay, args.slots, args.processes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
