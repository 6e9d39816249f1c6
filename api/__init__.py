"""agentq's HTTP face: ``create_app()`` for ``flask --app api run`` and gunicorn."""

from __future__ import annotations

from flask import Flask

from api import (
    api_keys,
    batches,
    bodies,
    dashboard,
    deliveries,
    errors,
    events,
    forks,
    health,
    hook_sources,
    hooks,
    metrics,
    openapi,
    requestlog,
    runs,
    schedules,
    sessions,
    usage,
    waitpoints,
    webhooks,
    ws,
)
from worker.app import build_runtime
from worker.base import tracing
from worker.base.logs import configure_logging
from worker.base.runtime import Runtime
from worker.base.settings import Settings, load_settings


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """Build the API from ``settings`` (default: the environment), failing fast if invalid."""
    if runtime is None:
        runtime = build_runtime(settings or load_settings())
    app = Flask(__name__, static_folder=None)  # the dashboard serves its own
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_body_bytes
    app.config["SOCK_SERVER_OPTIONS"] = {
        "subprotocols": ws.BearerSubprotocols(),
        "ping_interval": 25,
        "max_message_size": runtime.settings.max_body_bytes,
    }
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["agentq"] = runtime
    configure_logging(runtime.settings.log_level, service="api")
    if tracing.setup(runtime.settings, service="agentq-api"):
        tracing.instrument_flask(app)
    requestlog.init_app(app)
    app.before_request(bodies.refuse_nul)
    errors.init_app(app)
    for blueprint in (health.bp, runs.bp, events.bp, ws.bp, webhooks.bp, deliveries.bp,
                      hook_sources.bp, hooks.bp, sessions.bp, usage.bp, api_keys.bp, metrics.bp,
                      openapi.bp, waitpoints.bp, waitpoints.links, schedules.bp, forks.bp,
                      batches.bp):
        app.register_blueprint(blueprint)
    ws.sock.init_app(app)
    dashboard.init_app(app, runtime)
    return app
