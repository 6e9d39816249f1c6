"""The ``Idempotency-Key`` header on POSTs that create something."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Response, g, jsonify, make_response, request, url_for

from api.bodies import read_body
from api.deps import principal, runtime
from worker.base.errors import InvalidRequest
from worker.base.models import RunStatus
from worker.runs import idempotency, store
from worker.runs.views import run_view

F = TypeVar("F", bound=Callable[..., Any])
HEADER = "Idempotency-Key"


def idempotent(view: F) -> F:
    """Answer a repeat of the same request with the first one's answer; create nothing."""
    return withholding()(view)


def withholding(*secrets: str) -> Callable[[F], F]:
    """``idempotent`` for a route whose answer shows a secret once (a new API key, a
    signing secret): the answer is kept without those fields, and a repeat gets them as
    null, so no secret is ever stored in clear."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = request.headers.get(HEADER)
            if key is None:
                return view(*args, **kwargs)
            if not 1 <= len(key) <= 255 or not key.isprintable():
                raise InvalidRequest(f"{HEADER} is not usable", [
                    {"field": HEADER, "message": "1 to 255 printable characters"}])
            rt = runtime()
            taken = idempotency.begin(rt, tenant_id=principal().tenant_id, key=key,
                                      fingerprint=_fingerprint())
            if isinstance(taken, idempotency.Stored):
                return _replay(taken)
            try:
                response = make_response(view(*args, **kwargs))
            except BaseException:
                idempotency.abandon(rt, taken)
                raise
            if 200 <= response.status_code < 300:
                idempotency.complete(rt, taken, status_code=response.status_code,
                                     response=_without(response.get_json(silent=True), secrets),
                                     run_id=g.get("run_id") if g.get("answer_is_run", True)
                                     else None)
            else:
                idempotency.abandon(rt, taken)
            return response

        return cast(F, wrapper)

    return decorate


def _without(body: Any, secrets: tuple[str, ...]) -> Any:
    if not secrets or not isinstance(body, dict):
        return body
    return {name: None if name in secrets else value for name, value in body.items()}


def _fingerprint() -> str:
    """The request, as far as repeating it goes: method, path and (canonical) body."""
    body = read_body(cache=True)
    # Not JSON (or nested too deep to parse, which the view refuses): the bytes as they are.
    with contextlib.suppress(ValueError, RecursionError):
        body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(request.method.encode() + b" " + request.path.encode() + b"\n"
                          + body).hexdigest()


def _replay(stored: idempotency.Stored) -> Response:
    if stored.run_id is not None:  # a run: as it stands now (200 when finished, else 202)
        with runtime().db.transaction() as session:
            run = store.get(session, tenant_id=principal().tenant_id, run_id=stored.run_id)
        g.run_id = run.id
        response = jsonify(run_view(run))
        response.status_code = 200 if RunStatus(run.status).is_terminal else 202
        response.headers["Location"] = url_for("runs.get_run", run_id=run.id)
    else:
        response = jsonify(stored.response)
        response.status_code = stored.status_code
    response.headers["Idempotent-Replayed"] = "true"
    return response
