"""Request ids and one JSON log line per request (path only: query strings are never logged)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

log = logging.getLogger("agentq.api.request")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _start() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    g.started = time.monotonic()


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    principal = g.get("principal")
    seconds = time.monotonic() - g.get("started", time.monotonic())
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics = current_app.extensions["agentq"].metrics
    metrics.inc("agentq_http_requests", route=route, method=request.method,
                status=str(response.status_code))
    metrics.observe("agentq_http_request_duration_seconds", seconds, route=route)
    log.info(
        "request",
        extra={
            "method": request.method,
            # A waitpoint's link is a credential: its route, not its path, is logged.
            "path": route if request.blueprint == "waitpoint_links" else request.path,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 1),
            "request_id": g.get("request_id"),
            "tenant": principal.tenant_id if principal else None,
            "run_id": g.get("run_id"),
        },
    )
    return response


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
