"""Agents for benchmarks (loaded with AGENTQ_AGENTS=bench.agents)."""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg

from worker.agents import agent
from worker.context import RunContext

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
