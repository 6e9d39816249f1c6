"""Tokens: a streamed LLM call's chunk written by the endpoint -> an SSE client receives it.

    python bench/tokens.py [--runs 10] [--clients 10] [--chunks 200] [--pairs 2]

Starts its own cluster (Postgres, Redis, one worker process, one gunicorn+gevent API
process) and a fake OpenAI-compatible endpoint as a process of its own (this module with
``--serve-llm``): it holds each ``stream: true`` request until it is told to go, then
writes ``--chunks`` chunks 20-50 ms apart, each chunk's text the wall-clock time it was
written (``"t=1733213412.123456 "``). Each round submits ``--runs`` runs of ``llm.chat``
with ``stream: true``, waits until the endpoint holds every one of their requests, connects
``--clients`` listeners per run, waits until every listener is subscribed, then lets the
endpoint go; a listener takes ``time.time()`` as it parses each frame (same machine, same
clock) and counts only frames that carry one chunk (a catch-up frame carries several).

- agentq: SSE ``GET /v1/runs/{id}/events?tokens=1`` streams on the one API process.
- baseline: the same number of plain redis-py pub/sub subscribers on each run's token
  channel (``agentq:tokens:<run_id>``), where the worker publishes the chunks: the same
  endpoint -> worker -> Redis path without the API, the transport's floor. Rounds of the
  two kinds alternate on the same cluster, after a short warm-up round of each. In every
  round one more subscriber (the tap) listens to all the runs' token channels: written ->
  Redis, the worker's side of agentq's figure (the rest is the API's).

The listeners run in this process (asyncio), apart from the API's, the worker's and the
endpoint's (the machine's cores are shared by all of them: note its core count). The SSE
streams are read off the socket by hand: through httpx (h11), 100 streams took this
process's event loop ~20 ms late at p99 and the figure was mostly the client's own. The
loop's lag (a 5 ms sleep woken late) is reported, to show the listeners are not the
bottleneck, with each process's CPU over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil
import redis.asyncio as aioredis

from agentq.embedded import free_port
from bench.cluster import Cluster
from bench.report import Figure, table
from bench.stream import percentile
from tests.harness import BIN, ROOT, Process, wait_for
from worker.base.bus import RUN_PREFIX, TOKENS_PREFIX

TERMINAL = {"succeeded", "failed", "cancelled", "dead_lettered"}
WARMUP_CHUNKS = 20  # a first round of each kind, not counted: imports, pools, caches


# -- the endpoint (a process of its own) -------------------------------------------------


class Endpoint:
    """Streams each chat completion's chunks, held until ``GET /go``; ``GET /held`` says how
    many requests are waiting for it. The last message's content is JSON: ``{chunks,
    min_ms, max_ms}``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.held = 0

    def wait_for_go(self) -> None:
        with self.lock:
            gate = self.gate
            self.held += 1
        gate.wait(timeout=300)

    def go(self) -> int:
        with self.lock:
            gate, released = self.gate, self.held
            self.gate, self.held = threading.Event(), 0
        gate.set()
        return released


def serve_llm(port: int) -> None:
    endpoint = Endpoint()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/go":
                body = {"released": endpoint.go()}
            else:
                with endpoint.lock:
                    body = {"held": endpoint.held}
            encoded = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            plan = json.loads(body["messages"][-1]["content"])
            endpoint.wait_for_go()
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

            def send(data: Any) -> None:
                encoded = ("data: " + (data if isinstance(data, str) else json.dumps(data))
                           + "\n\n").encode()
                self.wfile.write(f"{len(encoded):x}\r\n".encode() + encoded + b"\r\n")
                self.wfile.flush()

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                return {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            try:
                send(chunk({"role": "assistant", "content": ""}))
                for _ in range(int(plan["chunks"])):
                    time.sleep(random.uniform(plan["min_ms"], plan["max_ms"]) / 1000)
                    send(chunk({"content": f"t={time.time():.6f} "}))  # stamped as written
                send(chunk({}, "stop"))
                send({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                      "model": body.get("model"), "choices": [],
                      "usage": {"prompt_tokens": 10, "completion_tokens": int(plan["chunks"]),
                                "total_tokens": 10 + int(plan["chunks"])}})
                send("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except OSError:  # the caller went away
                return

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    server.serve_forever()


# -- the listeners (this process) --------------------------------------------------------


@dataclass
class Tally:
    """What one kind of listener received in a round."""

    latencies: list[float] = field(default_factory=list)  # ms, one-chunk frames only
    chunks: int = 0  # chunks received, in any frame
    catch_ups: int = 0  # frames that carried several chunks
    ended: int = 0  # listeners that saw their run's end

    def add(self, text: str, received: float) -> None:
        stamps = text.split()
        self.chunks += len(stamps)
        if len(stamps) == 1:
            self.latencies.append((received - float(stamps[0][2:])) * 1000)
        elif stamps:
            self.catch_ups += 1

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.chunks += other.chunks
        self.catch_ups += other.catch_ups
        self.ended += other.ended


class Ready:
    """Set once ``wanted`` listeners are subscribed (or failed to be)."""

    def __init__(self, wanted: int) -> None:
        self.wanted, self.count, self.event = wanted, 0, asyncio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.wanted:
            self.event.set()


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """An HTTP/1.1 response's body as it arrives (chunked, or until the connection ends)."""
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield (await reader.readexactly(size + 2))[:-2]


async def sse_listener(api_url: str, key: str, run_id: str, tally: Tally,
                       ready: Ready) -> None:
    """One SSE stream with tokens, to the run's terminal event, read off the socket by hand
    (httpx's h11 costs the listeners several times the CPU: the client's own delay would
    count as agentq's). Subscribed once the first durable event arrives: the API confirms
    the subscriptions before it reads the log."""
    host, port = api_url.removeprefix("http://").split(":")
    subscribed = False
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /v1/runs/{run_id}/events?tokens=1 HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n"
                     .encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        buffer = b""
        async for data in _body(reader, "transfer-encoding: chunked" in head):
            buffer += data
            *messages, buffer = buffer.split(b"\n\n")
            for message in messages:
                event, _, data_line = message.partition(b"\ndata: ")
                if event == b"event: token":
                    tally.add(json.loads(data_line)["text"], time.time())
                    continue
                if not data_line:  # retry: hint, keep-alive comment
                    continue
                if not subscribed:
                    subscribed = True
                    ready.one()
                if event.endswith(b"event: status") and \
                        json.loads(data_line).get("status") in TERMINAL:
                    tally.ended += 1
                    return
    finally:
        if not subscribed:
            ready.one()
        writer.close()


async def redis_listener(redis_url: str, channels: list[str], tally: Tally, ready: Ready,
                         stop: asyncio.Event | None = None) -> None:
    """A plain pub/sub subscriber: token frames from the token channels, until its run's
    terminal event (its run channel given) or ``stop``."""
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    subscribed = False
    try:
        await pubsub.subscribe(*channels)
        confirmed = 0
        while True:
            if stop is not None and stop.is_set():
                return
            message = await pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message["type"] == "subscribe":
                confirmed += 1
                if confirmed == len(channels):
                    subscribed = True
                    ready.one()
                continue
            if message["type"] != "message":
                continue
            body = json.loads(message["data"])
            if message["channel"].startswith(TOKENS_PREFIX.encode()):
                if body["kind"] == "token":
                    tally.add(body["text"], time.time())
            elif body["type"] == "status" and body["data"].get("status") in TERMINAL:
                tally.ended += 1
                return
    finally:
        if not subscribed:
            ready.one()
        await pubsub.aclose()
        await client.aclose()


async def loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    """How late this process's event loop wakes a 5 ms sleep (ms): the listeners' own
    delay in taking a frame's receive time."""
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append((time.perf_counter() - began - 0.005) * 1000)


@dataclass
class Round:
    tally: Tally
    tap: Tally
    lags: list[float]
    cpu: dict[str, float]  # % of one core over the streaming, by process
    seconds: float


class Cpu:
    """CPU time of the cluster's processes, and this one's, between ``start`` and ``stop``."""

    def __init__(self, processes: dict[str, list[psutil.Process]]) -> None:
        self.processes = processes
        self.began: dict[str, float] = {}
        self.at = 0.0

    def _times(self) -> dict[str, float]:
        times = {}
        for name, group in self.processes.items():
            total = 0.0
            for process in group:
                try:
                    used = process.cpu_times()
                    total += used.user + used.system
                except psutil.Error:
                    pass
            times[name] = total
        return times

    def start(self) -> None:
        self.began, self.at = self._times(), time.monotonic()

    def stop(self) -> dict[str, float]:
        now, elapsed = self._times(), time.monotonic() - self.at
        return {name: (now[name] - self.began[name]) / elapsed * 100 for name in now}


async def listen(kind: str, *, api_url: str, key: str, redis_url: str, llm_url: str,
                 run_ids: list[str], clients: int, cpu: Cpu) -> Round:
    """One round's listeners: subscribe them all, let the endpoint go, read to the end."""
    tally, tap = Tally(), Tally()
    ready = Ready(len(run_ids) * clients + 1)
    stop, lags = asyncio.Event(), []
    limits = httpx.Limits(max_connections=len(run_ids) * clients + 10,
                          max_keepalive_connections=len(run_ids) * clients + 10)
    async with httpx.AsyncClient(base_url=api_url, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"},
                                 timeout=httpx.Timeout(120, connect=30)) as client:
        tasks = []
        for run_id in run_ids:
            for _ in range(clients):
                if kind == "sse":
                    tasks.append(asyncio.create_task(sse_listener(api_url, key, run_id, tally,
                                                                  ready)))
                else:
                    tasks.append(asyncio.create_task(redis_listener(
                        redis_url, [TOKENS_PREFIX + run_id, RUN_PREFIX + run_id], tally,
                        ready)))
        extra = [asyncio.create_task(redis_listener(
            redis_url, [TOKENS_PREFIX + run_id for run_id in run_ids], tap, ready, stop))]
        await asyncio.wait_for(ready.event.wait(), timeout=60)
        failed = [task for task in tasks if task.done() and task.exception()]
        if failed:
            raise RuntimeError(f"{len(failed)} listeners failed") from failed[0].exception()
        extra.append(asyncio.create_task(loop_lag(lags, stop)))
        cpu.start()
        began = time.monotonic()
        released = (await client.get(f"{llm_url}/go")).json()["released"]
        assert released == len(run_ids), f"the endpoint released {released} requests"
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
        seconds = time.monotonic() - began
        used = cpu.stop()
        stop.set()
        await asyncio.gather(*extra)
    return Round(tally, tap, lags, used, seconds)


# -- the benchmark ---------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="streaming runs at once")
    parser.add_argument("--clients", type=int, default=10, help="listeners per run")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per call")
    parser.add_argument("--min-ms", type=float, default=20.0, help="least gap between chunks")
    parser.add_argument("--max-ms", type=float, default=50.0, help="most gap between chunks")
    parser.add_argument("--pairs", type=int, default=2, help="rounds of each kind")
    parser.add_argument("--serve-llm", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser


def _submit(http: httpx.Client, llm_url: str, args: argparse.Namespace, tag: str,
            chunks: int) -> list[str]:
    """``--runs`` streamed llm.chat runs, their requests held by the endpoint."""
    run_ids = []
    for number in range(args.runs):
        plan = {"tag": tag, "run": number, "chunks": chunks, "min_ms": args.min_ms,
                "max_ms": args.max_ms}
        response = http.post("/v1/runs", json={"agent": "llm.chat", "input": {
            "messages": [{"role": "user", "content": json.dumps(plan)}], "stream": True}})
        assert response.status_code == 202, response.text
        run_ids.append(response.json()["id"])
    wait_for(lambda: httpx.get(f"{llm_url}/held", timeout=5).json()["held"] >= args.runs,
             timeout=60, interval=0.02, what=f"the endpoint to hold {args.runs} requests")
    return run_ids


def _succeeded(http: httpx.Client, run_ids: list[str]) -> int:
    return sum(http.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded"
               for run_id in run_ids)


def _processes(cluster: Cluster, llm: Process) -> dict[str, list[psutil.Process]]:
    assert cluster.api is not None
    mine = psutil.Process()
    return {"api": psutil.Process(cluster.api.pid).children(),
            "worker": [psutil.Process(cluster.workers[0].pid)],
            "redis": [p for p in mine.children() if "redis" in p.name()],
            "postgres": [p for p in mine.children(recursive=True) if "postgres" in p.name()],
            "endpoint": [psutil.Process(llm.pid)],
            "listeners": [mine]}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="agentq-tokens-") as tmp:
        root = Path(tmp)
        port = free_port()
        llm_url = f"http://127.0.0.1:{port}"
        llm = Process([str(BIN / "python"), str(ROOT / "bench" / "tokens.py"), "--serve-llm",
                       str(port)], env=dict(os.environ), log=root / "llm.log")
        llm.start()
        cluster: Cluster | None = None
        try:
            wait_for(lambda: _up(llm_url), timeout=30, what="the fake LLM endpoint")
            cluster = Cluster(root, workers=1, concurrency=max(4, args.runs * 2), beat=False,
                              api=True, settings={"AGENTQ_LLM_BASE_URL": f"{llm_url}/v1",
                                                  "AGENTQ_LLM_API_KEY": "bench-not-a-secret"})
            assert cluster.api is not None
            _, key = cluster.tenant_key("tokens")
            cpu = Cpu(_processes(cluster, llm))
            totals = {"sse": Tally(), "redis": Tally()}
            taps = {"sse": Tally(), "redis": Tally()}
            lags: dict[str, list[float]] = {"sse": [], "redis": []}
            expected = args.runs * args.clients * args.chunks
            used: dict[str, dict[str, list[float]]] = {"sse": {}, "redis": {}}
            kinds = ["redis", "sse"] * args.pairs
            with httpx.Client(base_url=cluster.api.url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as http:
                for number, kind in enumerate(["redis", "sse", *kinds]):
                    warmup = number < 2
                    chunks = WARMUP_CHUNKS if warmup else args.chunks
                    run_ids = _submit(http, llm_url, args, f"{kind}{number}", chunks)
                    got = asyncio.run(listen(kind, api_url=cluster.api.url, key=key,
                                             redis_url=cluster.env["REDIS_URL"],
                                             llm_url=llm_url, run_ids=run_ids,
                                             clients=args.clients, cpu=cpu))
                    wait_for(lambda ids=run_ids: _succeeded(http, ids) == len(ids),
                             timeout=60, what="the round's runs to succeed")
                    print(f"  {kind} round {number}{' (warm-up)' if warmup else ''}: "
                          f"{got.tally.chunks:,} chunks, {got.seconds:.1f} s, "
                          f"p50 {percentile(got.tally.latencies, 0.5):.1f} ms, "
                          f"p99 {percentile(got.tally.latencies, 0.99):.1f} ms, tap p99 "
                          f"{percentile(got.tap.latencies, 0.99):.1f} ms, lag p99 "
                          f"{percentile(got.lags, 0.99):.1f} ms, cpu "
                          + ", ".join(f"{k} {v:.0f}%" for k, v in got.cpu.items()),
                          file=sys.stderr, flush=True)
                    if warmup:
                        continue
                    totals[kind].merge(got.tally)
                    lags[kind] += got.lags
                    taps[kind].merge(got.tap)
                    for name, share in got.cpu.items():
                        used[kind].setdefault(name, []).append(share)
        finally:
            if cluster is not None:
                cluster.close()
            llm.stop()
    cpu_mean = {kind: {name: sum(v) / len(v) for name, v in shares.items()}
                for kind, shares in used.items()}
    return {"sse": totals["sse"], "redis": totals["redis"], "taps": taps, "lags": lags,
            "expected": expected * args.pairs, "cpu": cpu_mean}


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/held", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _figures(args: argparse.Namespace) -> list[Figure]:
    got = measure(args)
    sse, floor, taps, lags = got["sse"], got["redis"], got["taps"], got["lags"]
    streams = args.runs * args.clients
    cpu = got["cpu"]
    return [
        Figure(f"tokens: chunks received by {streams} SSE streams", sse.chunks, "chunks",
               got["expected"], "== 1x"),
        Figure("tokens: written -> SSE client p50", percentile(sse.latencies, 0.5), "ms",
               percentile(floor.latencies, 0.5)),
        Figure("tokens: written -> SSE client p99", percentile(sse.latencies, 0.99), "ms",
               percentile(floor.latencies, 0.99), "<= 50"),
        Figure("tokens: written -> Redis tap p50, same rounds",
               percentile(taps["sse"].latencies, 0.5), "ms",
               percentile(taps["redis"].latencies, 0.5)),
        Figure("tokens: written -> Redis tap p99, same rounds",
               percentile(taps["sse"].latencies, 0.99), "ms",
               percentile(taps["redis"].latencies, 0.99)),
        Figure("tokens: listeners' own loop lag p99", percentile(lags["sse"], 0.99), "ms",
               percentile(lags["redis"], 0.99)),
        Figure("tokens: listeners' process CPU", cpu["sse"].get("listeners", 0.0),
               "% of a core", cpu["redis"].get("listeners", 0.0)),
        Figure("tokens: API process CPU", cpu["sse"].get("api", 0.0), "% of a core"),
        Figure("tokens: worker process CPU", cpu["sse"].get("worker", 0.0), "% of a core",
               cpu["redis"].get("worker", 0.0)),
    ]


def figures(quick: bool) -> list[Figure]:
    return _figures(parser().parse_args(["--chunks", "100", "--pairs", "1"] if quick else []))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.serve_llm:
        serve_llm(args.serve_llm)
        return 0
    began = time.monotonic()
    rows = _figures(args)
    print(f"tokens: {args.runs} streaming llm.chat runs x {args.chunks} chunks "
          f"{args.min_ms:g}-{args.max_ms:g} ms apart, {args.clients} listeners each, one API "
          f"process; baseline: as many redis-py subscribers on the token channels; "
          f"{time.monotonic() - began:.0f} s")
    print(table(rows))
    return 0 if all(figure.met is not False for figure in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
