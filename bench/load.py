"""Drive an HTTP endpoint with N concurrent connections: wrk if it is installed (Debian's
``wrk``), else an asyncio httpx client in a process of its own."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def combined(loads: list[Load]) -> Load:
    """Rounds of equal length as one: mean rate, mean percentiles, errors summed."""
    return Load(statistics.mean(load.requests_per_s for load in loads),
                statistics.mean(load.p50_ms for load in loads),
                statistics.mean(load.p99_ms for load in loads),
                sum(load.errors for load in loads), loads[0].tool)


def drive(url: str, *, body: dict[str, object], headers: dict[str, str], connections: int,
          seconds: float) -> Load:
    """POST ``body`` to ``url`` as fast as ``connections`` connections allow."""
    if shutil.which("wrk"):
        return _wrk(url, body, headers, connections, seconds)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_python, (url, body, headers, connections, seconds))


def _wrk(url: str, body: dict[str, object], headers: dict[str, str], connections: int,
         seconds: float) -> Load:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}"
              for name, value in headers.items()]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s",
             script.name, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        Path(script.name).unlink(missing_ok=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Load(rps, _percentile(out, "50"), _percentile(out, "99"),
                int(errors.group(1)) if errors else 0, "wrk")


def _percentile(out: str, which: str) -> float:
    match = re.search(rf"^\s+{which}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _python(url: str, body: dict[str, object], headers: dict[str, str], connections: int,
            seconds: float) -> Load:
    return asyncio.run(_python_async(url, body, headers, connections, seconds))


async def _python_async(url: str, body: dict[str, object], headers: dict[str, str],
                        connections: int, seconds: float) -> Load:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        async def loop() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                except httpx.TransportError:  # counted like wrk's socket errors
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - began) * 1000)
                errors += response.status_code >= 300

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(connections)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return Load(len(latencies) / elapsed, latencies[len(latencies) // 2],
                latencies[int(len(latencies) * 0.99)], errors, "httpx")
