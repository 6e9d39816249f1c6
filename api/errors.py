"""Every error the API returns is RFC 9457 ``application/problem+json``; mapped here only."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, json
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from worker.base.errors import Conflict, InvalidRequest, LimitExceeded, NotFound, UnknownAgent

log = logging.getLogger("agentq.api")

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """An error response the API chose to give: status, title, detail, and extra members."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extra = extra


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, slug="unauthorized",
                   headers={"WWW-Authenticate": 'Bearer realm="agentq"'})


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": f"urn:agentq:problem:{problem.slug}" if problem.slug else "about:blank",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        **problem.extra,
    }
    request_id = g.get("request_id")
    if request_id:
        body["request_id"] = request_id
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON)
    response.headers.update(problem.headers)
    return response


def _invalid(error: InvalidRequest) -> Problem:
    extra: dict[str, Any] = {"errors": error.errors}
    if isinstance(error, UnknownAgent):
        extra["agents"] = error.available
    return Problem(422, "Unprocessable request", error.detail, slug="validation", **extra)


def _http(error: HTTPException) -> Problem:
    detail = error.description or error.name
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        detail = f"the request body is over the limit of {limit} bytes (AGENTQ_MAX_BODY_BYTES)"
    headers = dict(error.get_headers()) if error.code == 405 else {}
    headers.pop("Content-Type", None)
    return Problem(error.code or 500, error.name, detail, headers=headers)


def _database(error: Exception) -> Problem:
    log.error("database unavailable", extra={"error": f"{type(error).__name__}: {error}"})
    return Problem(503, "Service unavailable", "the database is unavailable; retry shortly",
                   slug="unavailable", headers={"Retry-After": "5"})


def _unexpected(error: Exception) -> Problem:
    log.exception("unhandled error")
    return Problem(500, "Internal server error", "an unexpected error occurred; it is logged "
                   "under this request_id", slug="internal")


def init_app(app: Flask) -> None:
    handlers: dict[type[Exception], Any] = {
        Problem: lambda e: e,
        NotFound: lambda e: Problem(404, "Not found", str(e), slug="not-found"),
        InvalidRequest: _invalid,
        Conflict: lambda e: Problem(409, "Conflict", str(e), slug="conflict", **e.extra),
        LimitExceeded: lambda e: Problem(429, "Too many requests", str(e), slug="limit",
                                         headers={"Retry-After": str(e.retry_after_s)}),
        HTTPException: _http,
        OperationalError: _database,
        InterfaceError: _database,
        PoolTimeout: _database,
        Exception: _unexpected,
    }
    for kind, to_problem in handlers.items():
        app.register_error_handler(
            kind, lambda error, to_problem=to_problem: problem_response(to_problem(error))
        )
