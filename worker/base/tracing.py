"""OpenTelemetry traces: one trace for a run, from ``POST /v1/runs`` to its webhook.

Off unless configured: with ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) or an OTLP
endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, each
process exports its spans in batches; the exporter reads the rest of the standard
``OTEL_*`` variables itself (headers, timeout, ``OTEL_BSP_*``, ``OTEL_SERVICE_NAME``).
Unconfigured, the tracer is OpenTelemetry's no-op: a span costs a function call.

A run joins its trace through Postgres, not the broker: the submit span's W3C
``traceparent`` is stored with the run (``runs.traceparent``), so every attempt (a retry
an hour later, a run re-published by the sweeper, a wait's wake-up) and every webhook
delivery continues the trace of the request that made it, and a delivery's request
carries its own ``traceparent`` header to the receiver.

Spans: ``POST /v1/runs`` (Flask's instrumentation) > ``agentq.submit``; then, in the
worker, ``agentq.queue`` (submission to first claim) and ``agentq.attempt`` per attempt >
``agentq.step`` per durable step > ``chat {model}`` per LLM call, with the GenAI semantic
conventions' attributes (``gen_ai.*``) > the HTTP call (aiohttp's instrumentation); and
``agentq.deliver`` per delivery attempt (its receiver's host, never its URL). No span holds
a query string, a waitpoint link's token, a prompt or an answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker.base.settings import Settings

log = logging.getLogger(__name__)

tracer = trace.get_tracer("agentq")
_W3C = TraceContextTextMapPropagator()
_configured = False


def enabled(settings: Settings) -> bool:
    exporter = (settings.otel_traces_exporter or "").strip().lower()
    if exporter == "none" or settings.otel_sdk_disabled:
        return False
    return bool(exporter or settings.otel_exporter_otlp_endpoint
                or settings.otel_exporter_otlp_traces_endpoint)


def setup(settings: Settings, *, service: str) -> bool:
    """Export this process's spans if OpenTelemetry is configured; True if it is."""
    global _configured
    if _configured or not enabled(settings):
        return _configured
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if (settings.otel_traces_exporter or "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_* variables
    resource = Resource.create({SERVICE_NAME: settings.otel_service_name or service})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _configured = True
    log.info("tracing on", extra={"service": settings.otel_service_name or service})
    return True


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``; None outside a recorded span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def parent(traceparent: str | None) -> otel_context.Context | None:
    """The context a stored ``traceparent`` names (None: start a trace of its own)."""
    return _W3C.extract({"traceparent": traceparent}) if traceparent else None


@contextmanager
def span(name: str, *, within: str | None = None, kind: SpanKind = SpanKind.INTERNAL,
         attributes: dict[str, Any] | None = None) -> Iterator[Span]:
    """A current span ``name``, a child of the current one or of the ``within``
    traceparent; an exception leaving it marks it failed."""
    with tracer.start_as_current_span(name, context=parent(within), kind=kind,
                                      attributes=attributes) as current:
        yield current


def failed(current: Span, error: dict[str, Any] | None) -> None:
    """Mark ``current`` as failed with an agentq error (``{type, message}``)."""
    if error:
        current.set_status(Status(StatusCode.ERROR, f"{error.get('type')}: "
                                                    f"{error.get('message')}"[:500]))


def waited(name: str, *, seconds: float, within: str | None,
           attributes: dict[str, Any]) -> None:
    """A span that ended now, ``seconds`` long: a wait seen only when it is over."""
    if not _configured:
        return
    end = time.time_ns()
    tracer.start_span(name, context=parent(within), attributes=attributes,
                      start_time=end - int(max(0.0, seconds) * 1e9)).end(end_time=end)


# Attributes that may carry a URL's path or query: a waitpoint's link is a credential in
# its path, and a query string may hold anything a client put there.
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.path", "url.query")


def scrub(span: Span, status: str, headers: Any) -> None:
    """The server span's URL attributes, as its response starts: its route (``/waitpoints/
    <token>``), never its path or query."""
    attributes = getattr(span, "attributes", None) or {}
    route = str(attributes.get("http.route") or "unmatched")
    for name in _URL_ATTRIBUTES:
        if name in attributes:
            span.set_attribute(name, route if name != "url.query" else "")


def instrument_flask(app: Any) -> None:
    """HTTP server spans for the API, if tracing is on (the health and metrics routes
    left out: scrapes and probes would drown the traces; URLs scrubbed: ``scrub``)."""
    if not _configured:
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    FlaskInstrumentor.instrument_app(  # type: ignore[no-untyped-call]
        app, excluded_urls="health,metrics,static", response_hook=scrub)


def instrument_clients() -> None:
    """HTTP client spans for LLM calls (aiohttp: the configured endpoint's URL, never its
    key). Webhook deliveries are not instrumented: a receiver's URL may hold its secret
    (a Slack hook's path, a token in the query); ``agentq.deliver`` says what matters."""
    if not _configured:
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    AioHttpClientInstrumentor().instrument()
