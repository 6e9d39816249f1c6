"""OpenTelemetry on real processes: a run's spans, from the API's request through the
worker's attempt, step and LLM call to the webhook delivery, make one trace, exported by
each process over OTLP/HTTP to a collector in this test."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from sqlalchemy import select

from tests.conftest import Services, StartWorker, make_tenant
from tests.harness import ApiServer, Receiver, wait_for
from worker.base.models import Run
from worker.base.queues import NOTIFY_QUEUE
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


def spans_in(collector: Receiver) -> list[Exported]:
    """What the processes exported to the collector, decoded."""
    spans = []
    for request in collector.at("/v1/traces"):
        export = ExportTraceServiceRequest.FromString(request.body)
        for resource in export.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes
                           if a.key == "service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value"))
                                  for a in span.attributes}
                    spans.append(Exported(service, span.name, span.trace_id.hex(),
                                          span.span_id.hex(), span.parent_span_id.hex(),
                                          span.kind, attributes))
    return spans


@pytest.fixture
def collector() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def traced_env(env: dict[str, str], collector: Receiver) -> dict[str, str]:
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "5"}


@pytest.fixture
def notifying(runtime: Runtime, crash_worker: StartWorker,
              traced_env: dict[str, str]) -> Iterator[None]:
    """A traced worker that runs the crash queue's agents and sends the webhooks: the
    session's worker stops taking deliveries meanwhile."""
    session_worker = f"w-session@{socket.gethostname()}"
    crash_worker(concurrency=2, queues=f"test.crash,{NOTIFY_QUEUE}", **{
        k: v for k, v in traced_env.items() if k.startswith("OTEL_")})
    runtime.celery.control.cancel_consumer(NOTIFY_QUEUE, destination=[session_worker],
                                           reply=True, timeout=5)
    try:
        yield
    finally:
        runtime.celery.control.add_consumer(NOTIFY_QUEUE, destination=[session_worker],
                                            reply=True, timeout=5)


def test_a_run_is_one_trace_from_its_request_to_its_webhook(
        traced_env: dict[str, str], services: Services, runtime: Runtime,
        collector: Receiver, receiver: Receiver, notifying: None) -> None:
    server = ApiServer(env=traced_env, log=services.root / "api-traced.log")
    server.start()
    try:
        server.wait_ready()
        tenant = make_tenant(runtime)
        auth = {"Authorization": f"Bearer {tenant.key}"}
        hook = httpx.post(f"{server.url}/v1/webhook-endpoints", headers=auth, timeout=10,
                          json={"url": receiver.url + "/traced", "events": ["run.succeeded"]})
        assert hook.status_code == 201, hook.text
        model = f"traced-{uuid.uuid4().hex[:6]}"
        created = httpx.post(f"{server.url}/v1/runs", headers=auth, timeout=10, json={
            "agent": "test.llm.rated", "input": {"model": model, "ask": "trace me"}})
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]
        [delivered] = wait_for(lambda: receiver.at("/traced"), timeout=30, what="the webhook")
        # Neither a query string nor a waitpoint link's token reaches the trace backend.
        httpx.get(f"{server.url}/v1/runs?api_key=sk_leak_in_query", headers=auth, timeout=10)
        httpx.post(f"{server.url}/waitpoints/wp_leak.in_the_path", json={}, timeout=10)
    finally:
        server.stop()

    with runtime.db.autocommit() as session:
        traceparent = session.scalar(select(Run.traceparent).where(Run.id == run_id))
    assert traceparent is not None
    trace_id = traceparent.split("-")[1]
    wanted = {"POST /v1/runs", "agentq.submit", "agentq.queue", "agentq.attempt",
              "agentq.step llm:1", f"chat {model}", "agentq.deliver"}

    def exported() -> dict[str, Exported] | None:
        spans = {s.name: s for s in spans_in(collector) if s.trace_id == trace_id}
        return spans if wanted <= set(spans) else None

    spans = wait_for(exported, timeout=20, what=f"the spans {sorted(wanted)}")
    request, submit = spans["POST /v1/runs"], spans["agentq.submit"]
    attempt, step = spans["agentq.attempt"], spans["agentq.step llm:1"]
    chat = spans[f"chat {model}"]
    deliver = spans["agentq.deliver"]
    assert submit.parent_id == request.span_id and request.service == "agentq-api"
    assert attempt.parent_id == submit.span_id and attempt.service == "agentq-worker"
    assert spans["agentq.queue"].parent_id == submit.span_id
    assert step.parent_id == attempt.span_id and chat.parent_id == step.span_id
    assert deliver.parent_id == submit.span_id
    assert attempt.attributes["agentq.run_id"] == run_id
    assert attempt.attributes["agentq.status"] == "succeeded"
    assert chat.attributes["gen_ai.request.model"] == model
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert (chat.attributes["gen_ai.usage.input_tokens"],
            chat.attributes["gen_ai.usage.output_tokens"]) == (10, 5)
    everything = [s for s in spans_in(collector) if s.trace_id == trace_id]
    assert any(s.parent_id == chat.span_id for s in everything)  # the HTTP call (aiohttp)
    # The receiver's own spans would join the trace: its request said where it belongs.
    assert delivered.headers["traceparent"].split("-")[1] == trace_id
    assert "content" not in str(chat.attributes)  # no prompt or answer in the spans
    assert deliver.attributes["server.address"] == "127.0.0.1"

    def scrubbed() -> list[Exported] | None:
        spans = spans_in(collector)
        seen = [s for s in spans if s.name in ("GET /v1/runs", "POST /waitpoints/<token>")]
        return spans if len(seen) == 2 else None

    everything = wait_for(scrubbed, timeout=20, what="the two requests' spans")
    leaked = [s for s in everything if "leak" in repr(s.attributes)]
    assert not leaked, leaked
    assert "/traced" not in repr([s.attributes for s in everything])  # the webhook's URL


def test_without_opentelemetry_configured_a_run_has_no_trace(api: Any,
                                                           runtime: Runtime) -> None:
    run = api.submit("echo", {"x": 1})
    assert api.wait(run["id"])["status"] == "succeeded"
    with runtime.db.autocommit() as session:
        assert session.scalar(select(Run.traceparent).where(Run.id == run["id"])) is None
