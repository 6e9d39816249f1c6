"""Which HTTP client the engine's LLM calls use: N concurrent chat completions against an
endpoint answering after 10 s, made by one process with each candidate client.

    python bench/clients.py [--runs 500,2000] [--delay 10] [--clients raw,aiohttp,httpx]

``raw`` is the floor: asyncio streams writing the request and reading the answer's head.
``aiohttp`` is one ClientSession without a connection limit (what ``worker.llm`` uses);
``httpx`` one AsyncClient without limits. Each prints the seconds until every call has
answered; the floor is about the delay at any N, and a client's excess over it is what it
costs a worker holding that many runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import httpx

from agentq.embedded import free_port
from bench.inflight import floor
from tests.harness import BIN, ROOT, Process, wait_for

BODY = {"model": "bench", "messages": [{"role": "user", "content": "client"}]}


async def with_aiohttp(url: str, n: int) -> float:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            async with session.post(f"{url}/chat/completions", json=BODY) as response:
                await response.read()

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.monotonic() - started


async def with_httpx(url: str, n: int) -> float:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def one() -> None:
            (await client.post(f"{url}/chat/completions", json=BODY)).read()

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.monotonic() - started


CLIENTS: dict[str, Callable[[str, int], Awaitable[float]]] = {
    "raw": floor, "aiohttp": with_aiohttp, "httpx": with_httpx}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="500,2000", help="comma-separated counts")
    parser.add_argument("--delay", type=float, default=10.0, help="the endpoint's delay (s)")
    parser.add_argument("--clients", default="raw,aiohttp,httpx")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.runs.split(",")]
    names = args.clients.split(",")
    with tempfile.TemporaryDirectory(prefix="agentq-clients-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1"
        llm = Process([str(BIN / "python"), str(ROOT / "bench" / "slowllm.py"), "--port",
                       str(port), "--delay", str(args.delay)], env=dict(os.environ),
                      log=Path(tmp) / "llm.log")
        llm.start()
        try:
            wait_for(lambda: _up(url), timeout=30, what="the slow LLM endpoint")
            print(f"{'client':10}" + "".join(f"{n:>12,}" for n in counts))
            for name in names:
                took = [asyncio.run(CLIENTS[name](url, n)) for n in counts]
                print(f"{name:10}" + "".join(f"{s:>11.1f}s" for s in took), flush=True)
        finally:
            llm.stop()
    return 0


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url.removesuffix('/v1')}/arrivals", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
