"""Sending deliveries: Standard Webhooks requests over a guarded HTTP client.

Each request is ``POST`` JSON ``{type, timestamp, data: <the run>}`` with ``webhook-id``
(the delivery's id, stable across retries), ``webhook-timestamp`` (fresh per attempt) and
``webhook-signature``. Timeouts are explicit, redirects are not followed, at most
``AGENTQ_WEBHOOK_RESPONSE_MAX_BYTES`` of the answer is read, and the connection goes only
to an address the SSRF guard has checked.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from importlib.metadata import version

import httpx
from opentelemetry.trace import SpanKind, Status, StatusCode

from worker.base import deadlines, retry, signing, tracing
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.base.ssrf import Guard, Refused, Unresolved
from worker.delivery import webhooks
from worker.runs import outbox, waits
from worker.runs.dispatch import SWEEP_BATCH

log = logging.getLogger("agentq.notifier")

USER_AGENT = f"agentq-webhooks/{version('agentq')}"
_HOLD_MARGIN_S = 30.0  # a sender holds a delivery this long beyond its timeout
_MAX_RETRY_AFTER_S = 86400.0


class Sender:
    """One HTTP client per process; every request goes to an address the guard checked."""

    @classmethod
    def of(cls, rt: Runtime) -> Sender:
        """This process's sender (one HTTP client per process)."""
        return rt.own("sender", lambda: cls(rt.settings))

    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self._settings = settings
        self.guard = Guard.of(settings)
        self._client = deadlines.client(
            timeout=httpx.Timeout(settings.webhook_timeout_s), follow_redirects=False,
            headers={"user-agent": USER_AGENT}, limits=httpx.Limits(max_connections=100),
            proxy=settings.webhook_proxy)

    def post(self, url: str, headers: dict[str, str], body: bytes) -> webhooks.Response:
        """One attempt, over within ``AGENTQ_WEBHOOK_TIMEOUT_S`` however slowly the
        receiver connects, answers or drips its answer."""
        started_at, started = datetime.now(UTC), time.monotonic()

        def failed(error: str) -> webhooks.Response:
            return webhooks.Response(None, _ms(started), started_at, error=error)

        timeout = self._settings.webhook_timeout_s
        with deadlines.within(timeout):  # the name's lookup too
            try:
                target = self.guard.resolve(url, timeout_s=timeout)
            except Refused as refused:
                return failed(f"refused: {refused}")
            except Unresolved as unresolved:
                return failed(f"timed out after {timeout:g} s: {unresolved}")
            original = httpx.URL(url)
            request = self._client.build_request(
                "POST", original.copy_with(host=str(target.address)), content=body,
                headers={**headers, "host": original.netloc.decode()},
                extensions={"sni_hostname": target.host})
            try:
                response = self._client.send(request, stream=True)
            except httpx.TimeoutException:
                return failed(f"timed out after {timeout:g} s")
            except httpx.HTTPError as error:
                return failed(f"{type(error).__name__}: {error}")
            try:
                text = self._read_some(response)
            finally:
                response.close()
        problem = None if response.is_success else f"HTTP {response.status_code}"
        return webhooks.Response(response.status_code, _ms(started), started_at, error=problem,
                                 body=text, retry_after_s=_retry_after(response))

    def _read_some(self, response: httpx.Response) -> str:
        limit, kept = self._settings.webhook_response_max_bytes, bytearray()
        try:
            for chunk in response.iter_bytes():
                kept += chunk[: limit - len(kept)]
                if len(kept) >= limit:
                    break
        except httpx.HTTPError:
            pass  # the status is what counts; a broken (or too slow) body is kept as far
            #       as it came
        return kept.decode(errors="replace")


def deliver(rt: Runtime, *, delivery_id: str) -> None:
    """Make the delivery's next attempt, if it is due and no one else is making it."""
    settings = rt.settings
    with rt.db.autocommit() as session:  # one atomic statement
        sending = webhooks.hold(session, delivery_id=delivery_id,
                                hold_s=settings.webhook_timeout_s + _HOLD_MARGIN_S,
                                per_tenant=settings.webhook_tenant_concurrency)
    if sending is None:
        return
    payload = waits.with_url(settings, sending.payload)  # a run.waiting's link, made now
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"content-type": "application/json"}
    if sending.format == outbox.STANDARD:
        headers.update({
            "webhook-id": sending.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature_header(sending.secrets, sending.delivery_id,
                                                          timestamp, body),
        })
    with tracing.span("agentq.deliver", within=sending.traceparent, kind=SpanKind.CLIENT,
                      attributes={"agentq.delivery_id": delivery_id,
                                  "server.address": httpx.URL(sending.url).host,
                                  "agentq.run_id": sending.run_id or "",
                                  "agentq.attempt": sending.attempt}) as span:
        traceparent = tracing.traceparent()
        if traceparent:  # the receiver's spans join the run's trace
            headers["traceparent"] = traceparent
        response = Sender.of(rt).post(sending.url, headers, body)
        if response.status_code is not None:
            span.set_attribute("http.response.status_code", response.status_code)
        if not response.ok:
            span.set_status(Status(StatusCode.ERROR, response.error or "not delivered"))
    # A success is one atomic statement; a failure may disable the endpoint (a transaction).
    with rt.db.autocommit() if response.ok else rt.db.transaction() as session:
        recorded = webhooks.record(session, sending=sending, response=response,
                                   schedule=settings.webhook_retry_schedule,
                                   disable_after_s=settings.webhook_disable_after_s)
    if recorded.next_id is not None:  # marked dispatched: publish it (or the sweeper will)
        outbox.publish(rt, recorded.next_id)
    outcome = recorded.status.value if recorded.status is not None else "superseded"
    rt.metrics.inc("agentq_deliveries", outcome=outcome)
    rt.metrics.observe("agentq_delivery_latency_seconds", response.latency_ms / 1000)
    log.info("delivery attempt", extra={
        "delivery_id": delivery_id, "run_id": sending.run_id,
        "attempt": sending.attempt, "status_code": response.status_code,
        "outcome": outcome, "duration_ms": response.latency_ms, "error": response.error})


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _retry_after(response: httpx.Response) -> float | None:
    """The receiver's ``Retry-After``, at most a day."""
    wait = retry.retry_after_s(response)
    return None if wait is None else min(wait, _MAX_RETRY_AFTER_S)


def redispatch_due(rt: Runtime) -> int:
    """The sweeper's repair: publish deliveries that are due and have no send task on its
    way (each tenant no more than it has room for)."""
    settings = rt.settings
    with rt.db.transaction() as session:
        due = webhooks.due(session, grace_s=settings.dispatch_grace_s,
                           lost_after_s=settings.redispatch_after_s, limit=SWEEP_BATCH,
                           per_tenant=settings.webhook_tenant_concurrency)
    return outbox.dispatch(rt, due)
