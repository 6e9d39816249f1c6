"""The dashboard: runs, dead letters, schedules and webhooks in a browser, served by the API
at ``/``.

Server-rendered pages with a little plain JavaScript: no build step, nothing fetched from
anywhere else. Signing in with an API key sets a session cookie (signed with
``AGENTQ_SECRET_KEY``; HttpOnly, SameSite=Strict, Secure over HTTPS) that names the key and
never holds it; every request checks that the key is still live, and every form or button
that changes something carries the session's CSRF token. Everything is scoped to the key's
tenant and limited by its scopes, exactly as the JSON API is. Without ``AGENTQ_SECRET_KEY``
the API refuses to start, unless ``AGENTQ_DASHBOARD=false`` leaves the dashboard out.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, Request, request
from flask.sessions import SecureCookieSessionInterface

from api.dashboard import api_keys, hooks, runs, schedules  # noqa: F401 - their routes hang on bp
from api.dashboard.access import bp
from worker.base.errors import ConfigurationError
from worker.base.runtime import Runtime

SESSION_HOURS = 12


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the page was served over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        secure = bool(app.config["SESSION_COOKIE_SECURE"])
        return secure or (isinstance(request, Request) and request.is_secure)


def init_app(app: Flask, runtime: Runtime) -> None:
    """Serve the dashboard from ``app``, or refuse to start without a secret to sign with."""
    settings = runtime.settings
    if not settings.dashboard:
        return
    if settings.secret_key is None:
        raise ConfigurationError(
            "AGENTQ_SECRET_KEY is required but not set: 32+ random characters that sign the "
            "dashboard's session cookies (`python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'`), or AGENTQ_DASHBOARD=false to serve only "
            "the JSON API")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_NAME="agentq_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
    )
    app.session_interface = SessionCookies()
    app.register_blueprint(bp)
