"""Agents for benchmarks (loaded with AGENTQ_AGENTS=bench.agents)."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from worker.agents import agent
from worker.agents.context import RunContext

_connection: psycopg.Connection[Any] | None = None


def _effects() -> psycopg.Connection[Any]:
    """The benchmark's own connection, outside agentq: an effect no lease can undo."""
    global _connection
    if _connection is None or _connection.closed or _connection.broken:
        _connection = psycopg.connect(os.environ["BENCH_EFFECTS_URL"], autocommit=True)
    return _connection


@agent("bench.effect", timeout_s=60)
def effect(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """Record an effect row (run id, attempt), then work for ``ms`` milliseconds."""
    _effects().execute("INSERT INTO bench_effects (run_id, attempt) VALUES (%s, %s)",
                       (ctx.run_id, ctx.attempt))
    time.sleep(float(input.get("ms", 50)) / 1000)
    return {"attempt": ctx.attempt}


@agent("bench.ticker", timeout_s=600)
def ticker(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """After ``warmup_s``, emit ``count`` events ``interval_s`` apart, each stamped with
    the wall-clock time of the emit (``t``), so a client can measure emit-to-receive."""
    time.sleep(float(input.get("warmup_s", 0)))
    count, interval = int(input.get("count", 10)), float(input.get("interval_s", 0.5))
    for i in range(count):
        ctx.emit("tick", f"tick {i + 1} of {count}", t=time.time())
        time.sleep(interval)
    return {"ticks": count}


@agent("bench.noop")
def noop(ctx: RunContext, input: Any) -> None:
    """Do nothing: the platform's own cost, measured."""


@agent("bench.stamp")
def stamp(ctx: RunContext, input: Any) -> dict[str, float]:
    """Return the wall-clock time of the agent's first line."""
    return {"t": time.time()}
