"""Who is signed in: the session cookie, its CSRF token, scopes, and the pages' headers
(see ``api.dashboard`` for the design)."""

from __future__ import annotations

import hmac
import secrets
import unicodedata
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from pydantic import BaseModel, ValidationError
from werkzeug.wrappers.response import Response as BaseResponse

from api import pagination
from api.bodies import read_body
from api.deps import principal, runtime
from worker.access import keys
from worker.access.cache import KeyCache
from worker.base import jsonb
from worker.base.errors import AgentqError, InvalidRequest, NotFound

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)
PUBLIC = frozenset({"dashboard.sign_in", "dashboard.static"})


# Signing in, the session, CSRF ------------------------------------------------------------

@bp.before_request
def signed_in() -> BaseResponse | None:
    g.dashboard = True
    if request.endpoint in PUBLIC:
        return None
    key_id = session.get("key_id")
    caller = _live_key(str(key_id)) if key_id else None
    if caller is None:  # never signed in, signed out, or the key was revoked since
        session.clear()
        if request.method == "GET" and request.endpoint != "dashboard.run_events":
            return redirect(url_for("dashboard.sign_in", next=request.full_path.rstrip("?")))
        abort(401)
    g.principal = caller
    if request.method == "POST":
        _check_csrf()
    return None


def _live_key(key_id: str) -> keys.Principal | None:
    """The session's key, if still live: remembered per process as the JSON API's keys are,
    so a revocation (which clears every process's memory) ends the session at once."""
    cache, slot = KeyCache.of(runtime()), f"id:{key_id}"
    caller = cache.get(slot)
    if caller is None:
        generation = cache.generation  # before the lookup: see KeyCache
        with runtime().db.autocommit() as db:
            caller = keys.live_key(db, key_id=key_id)
        if caller is not None:
            cache.put(slot, caller, generation=generation)
    return caller


def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def _check_csrf() -> None:
    read_body(cache=True)  # a 400 if it cannot be read (the form is parsed from it)
    sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    if not hmac.compare_digest(sent.encode(), csrf_token().encode()):
        abort(403, "the form's CSRF token is missing or stale; reload the page and try again")


@bp.app_context_processor
def template_helpers() -> dict[str, Any]:
    if not g.get("dashboard"):
        return {}
    caller = g.get("principal")
    return {"csrf_token": csrf_token, "scopes": caller.scopes if caller else frozenset(),
            "READ": keys.READ, "WRITE": keys.WRITE, "ADMIN": keys.ADMIN}


def needs(scope: str) -> Callable[[F], F]:
    """The signed-in key must have ``scope`` (as the JSON API asks)."""
    def decorate(view: F) -> F:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if scope not in principal().scopes:
                abort(403, f"this key lacks the {scope!r} scope")
            return view(*args, **kwargs)
        return checked  # type: ignore[return-value]
    return decorate


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    error = None
    if request.method == "POST":
        _check_csrf()
        token = request.form.get("key", "").strip()
        with runtime().db.autocommit() as db:
            caller = keys.authenticate(db, token=token) if token else None
        if caller is None:
            error = "That key is not valid (unknown, revoked, or mistyped)."
        else:
            session.clear()  # a fresh session (and CSRF token) for the signed-in key
            session.permanent = True
            session["key_id"] = caller.key_id
            csrf_token()
            return redirect(local(request.args.get("next", ""))
                            or url_for("dashboard.runs_page"))
    return render_template("dashboard/sign_in.html", error=error), 401 if error else 200


def local(target: str) -> str:
    """``target`` if it is a path on this site, else '' (no open redirects).

    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so
    ``/\t/evil.example`` is ``//evil.example`` to them: any space, control character or
    backslash disqualifies the target, as does a scheme or a host.
    """
    if not target.startswith("/") or target.startswith("//"):
        return ""
    if any(ch == "\\" or ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in target):
        return ""
    parts = urlsplit(target)
    return "" if parts.scheme or parts.netloc else target


@bp.after_request
def headers(response: Response) -> Response:
    """Nothing runs or loads from elsewhere; no framing; no caching of tenant data."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/sign-out")
def sign_out() -> BaseResponse:
    session.clear()
    return redirect(url_for("dashboard.sign_in"))


@bp.errorhandler(NotFound)
def not_found(error: NotFound) -> tuple[str, int]:
    return render_template("dashboard/error.html", title="Not found", message=str(error)), 404


@bp.errorhandler(403)
@bp.errorhandler(401)
@bp.errorhandler(404)
def refused(error: Any) -> tuple[str, int]:
    return render_template("dashboard/error.html", title=error.name,
                           message=error.description), error.code


def form(model: type[M], **fields: Any) -> M:
    """A form's fields validated by the JSON API's own model, or InvalidRequest."""
    try:
        jsonb.check(fields, what="the form")
        return model.model_validate(fields)
    except jsonb.Unstorable as error:
        raise InvalidRequest(str(error), [{"field": error.path, "message": str(error)}]) \
            from None
    except ValidationError as error:
        raise InvalidRequest.from_validation(error) from None


def cursor(prefix: str) -> str | None:
    """The page's ``?cursor=`` as an id to go on from; one edited by hand shows the first
    page, and a flash saying why."""
    try:
        return pagination.decode(request.args.get("cursor") or None, prefix=prefix)
    except InvalidRequest as error:
        flash(describe(error), "error")
        return None


def describe(error: AgentqError) -> str:
    """An error as one line for a flash message, with the fields it names."""
    details = "; ".join(f"{e['field']}: {e['message']}"
                        for e in getattr(error, "errors", None) or [])
    return f"{error} ({details})" if details and details != str(error) else str(error)
