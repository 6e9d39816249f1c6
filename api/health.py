"""``GET /health``: real checks of the database, the broker and live workers, each bounded."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.deps import runtime
from worker.base.runtime import Runtime
from worker.runs import observe

bp = Blueprint("health", __name__)

_TIMEOUT_S = 1.0


def _database(rt: Runtime) -> None:
    with rt.db.engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 1000"))
        connection.execute(text("SELECT 1"))


def _broker(rt: Runtime) -> None:
    with rt.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=_TIMEOUT_S)
        connection.default_channel  # noqa: B018 - opening a channel proves the broker answers


def _workers(rt: Runtime) -> None:
    replies = rt.celery.control.ping(timeout=_TIMEOUT_S, limit=1)
    if not replies:
        raise RuntimeError(f"no worker answered a ping within {_TIMEOUT_S:g} s")


def _check(probe: Callable[[Runtime], None], rt: Runtime) -> dict[str, Any]:
    started = time.monotonic()
    try:
        probe(rt)
    except Exception as error:  # any failure makes the check fail; the reason is reported
        return {"ok": False, "latency_ms": _since(started), "error": _describe(error)}
    return {"ok": True, "latency_ms": _since(started)}


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


@bp.get("/health")
def health() -> tuple[Response, int]:
    """Readiness: the database, the broker and a worker all answer."""
    rt = runtime()
    checks = {
        "database": _check(_database, rt),
        "broker": _check(_broker, rt),
        "workers": _check(_workers, rt),
    }
    ok = all(check["ok"] for check in checks.values())
    body = {"status": "ok" if ok else "unavailable", "version": version("agentq"),
            "checks": checks, **_backlog(rt, broker_ok=checks["broker"]["ok"],
                                         database_ok=checks["database"]["ok"])}
    return jsonify(body), 200 if ok else 503


@bp.get("/health/live")
def live() -> Response:
    """Liveness: this process serves requests (no dependency is checked)."""
    return jsonify({"status": "ok"})


def _backlog(rt: Runtime, *, broker_ok: bool, database_ok: bool) -> dict[str, Any]:
    """Queue depths and the oldest queued run's age, when they can be read."""
    backlog: dict[str, Any] = {}
    if broker_ok:
        with contextlib.suppress(Exception):  # the checks above report the failure
            backlog["queues"] = observe.queue_depths(rt)
    if database_ok:
        with contextlib.suppress(Exception):
            _, oldest = observe.waiting(rt)
            backlog["oldest_queued_age_s"] = None if oldest is None else round(oldest, 1)
    return backlog
