"""``agentq.client`` against the real server (gunicorn, a worker, Postgres, Redis): runs,
paging, streams that survive a cut connection, tokens, waitpoints, typed errors, webhook
verification, and its models held to ``/openapi.json``. Only the retry tests answer from
an ``httpx.MockTransport``: a real 503 or 429 on demand would need a broken server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, get_type_hints

import httpx
import pytest
from pydantic import BaseModel

from agentq.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Event,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Token,
    TokenReset,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
    WebhookVerificationError,
    webhooks,
)
from agentq.client.models import (
    Batch,
    BatchCreated,
    BatchItem,
    FieldProblem,
    ForkedFrom,
    Page,
    Problem,
    Run,
    RunError,
    RunOptions,
    RunUsage,
    Waitpoint,
    WebhookEvent,
)
from tests.conftest import ApiClient, StartWorker, Tenant
from tests.harness import ApiServer, FakeLLM, Receiver, wait_for
from worker.base import signing

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def client(api_server: ApiServer, tenant: Tenant) -> Iterator[Client]:
    with Client(api_server.url, tenant.key, timeout=10) as client:
        yield client


# Runs -----------------------------------------------------------------------------------

def test_create_then_wait_gives_the_result(client: Client) -> None:
    run = client.runs.create("echo", {"hello": "world"}, metadata={"from": "client"})
    assert run.id.startswith("run_") and run.agent == "echo" and not run.terminal
    done = client.runs.wait(run.id, timeout=20)
    assert done.status == "succeeded" and done.result == {"hello": "world"}
    assert done.metadata == {"from": "client"} and done.finished_at is not None
    assert client.runs.get(run.id) == done


def test_create_with_wait_holds_until_the_run_ends(client: Client) -> None:
    run = client.runs.create("echo", {"n": 1}, wait=10)
    assert run.status == "succeeded" and run.result == {"n": 1}


def test_wait_gives_up_at_its_timeout_with_the_run_as_it_stood(client: Client) -> None:
    run = client.runs.create("test.parked")  # on a queue no worker reads
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        client.runs.wait(run.id, timeout=1)
    assert 1 <= time.monotonic() - started < 3
    assert raised.value.run.id == run.id and raised.value.run.status == "queued"


def test_the_async_client_does_the_same(api_server: ApiServer, tenant: Tenant) -> None:
    async def scenario() -> tuple[Run, Run, list[Any]]:
        async with AsyncClient(api_server.url, tenant.key, timeout=10) as client:
            quick = await client.runs.create("echo", {"a": 1}, wait=10)
            run = await client.runs.create("test.emit", {"count": 2})
            items = [item async for item in client.runs.stream(run.id)]
            return quick, await client.runs.wait(run.id, timeout=20), items

    quick, done, items = asyncio.run(scenario())
    assert quick.status == "succeeded" and quick.result == {"a": 1}
    assert done.result == {"emitted": 2}
    assert [item.seq for item in items] == list(range(1, len(items) + 1))
    assert items[-1].status == "succeeded"


def test_the_same_idempotency_key_gives_the_same_run(client: Client) -> None:
    key = f"order-{uuid.uuid4()}"
    first = client.runs.create("echo", {"order": 1}, idempotency_key=key)
    again = client.runs.create("echo", {"order": 1}, idempotency_key=key)
    assert again.id == first.id
    # Without a key each call is a new run (the client's own keys differ)
    assert client.runs.create("echo", {"order": 1}).id != first.id
    # The same key with another body is refused
    with pytest.raises(ValidationFailed) as raised:
        client.runs.create("echo", {"order": 2}, idempotency_key=key)
    assert raised.value.errors[0].field == "Idempotency-Key"


def test_list_walks_every_page_newest_first(client: Client) -> None:
    newest_first = sorted((client.runs.create("echo", {"i": i}).id for i in range(5)),
                          reverse=True)
    first = client.runs.page(limit=2)
    assert [run.id for run in first.items] == newest_first[:2] and first.next_cursor
    second = client.runs.page(limit=2, cursor=first.next_cursor)
    assert [run.id for run in second.items] == newest_first[2:4]
    assert [run.id for run in client.runs.list(page_size=2)] == newest_first
    assert [run.id for run in client.runs.list(page_size=2, limit=3)] == newest_first[:3]
    assert [run.id for run in client.runs.list(agent="echo", status="scheduled")] == []


def test_cancel_and_replay(client: Client) -> None:
    parked = client.runs.create("test.parked")
    assert client.runs.cancel(parked.id).status == "cancelled"
    assert client.runs.cancel(parked.id).status == "cancelled"  # harmless twice
    failed = client.runs.create("test.fail", {"message": "no"}, max_attempts=1)
    assert client.runs.wait(failed.id, timeout=20).error == RunError(type="ValueError",
                                                                    message="no")
    replayed = client.runs.replay(failed.id)
    assert replayed.id == failed.id and replayed.status == "queued"
    again = client.runs.wait(failed.id, timeout=20)
    assert again.status == "failed" and again.attempt == 2
    with pytest.raises(Conflict):  # it ended otherwise: it cannot be cancelled now
        client.runs.cancel(failed.id)


def test_waitpoints_are_listed_and_completed(client: Client) -> None:
    run = client.runs.create("demo.approval", {"question": "Refund order 1042?"})
    wait_for(lambda: client.runs.get(run.id).status == "waiting", what="the run to wait")
    [point] = client.runs.waitpoints(run.id)
    assert (point.name, point.status, point.prompt) == (
        "approval", "waiting", "Refund order 1042?")
    assert point.schema_ is not None and point.url is not None
    with pytest.raises(ValidationFailed) as raised:  # off the waitpoint's schema
        client.runs.complete_waitpoint(run.id, "approval", {"approved": "yes"})
    assert raised.value.errors[0].field == "data.approved"
    done = client.runs.complete_waitpoint(run.id, "approval", {"approved": True,
                                                               "comment": "ok"})
    assert done.status == "completed" and done.data == {"approved": True, "comment": "ok"}
    with pytest.raises(Conflict):
        client.runs.complete_waitpoint(run.id, "approval", {"approved": False})
    assert client.runs.wait(run.id, timeout=20).result == {"approved": True, "comment": "ok"}


# Streams --------------------------------------------------------------------------------

class Cutter:
    """A TCP proxy to the API that cuts every connection through it on demand, as a
    network that fails mid-response would."""

    def __init__(self, port: int) -> None:
        self._upstream = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            far = socket.create_connection(self._upstream)
            with self._lock:
                self.connections += 1
                self._open += [near, far]
            for source, target in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self._lock:
            cut, self._open = self._open, []
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def cutter(api_server: ApiServer) -> Iterator[Cutter]:
    proxy = Cutter(api_server.port)
    yield proxy
    proxy.close()


def test_a_stream_cut_mid_run_resumes_with_no_gap_and_no_repeat(
    cutter: Cutter, tenant: Tenant
) -> None:
    with Client(f"http://127.0.0.1:{cutter.port}", tenant.key, timeout=10) as client:
        run = client.runs.create("test.steps", {"count": 6, "pause_s": 0.3})
        got: list[Event] = []
        for item in client.runs.stream(run.id):
            assert isinstance(item, Event)
            got.append(item)
            if item.seq == 3:
                assert not client.runs.get(run.id).terminal  # cut mid-run
                cutter.cut()
    assert cutter.connections >= 3  # the stream, the get, the stream again
    assert [event.seq for event in got] == list(range(1, len(got) + 1))
    assert [event.status for event in got if event.type == "status"] == [
        "queued", "running", "succeeded"]
    assert [event.data["index"] for event in got if event.type == "progress"] == list(range(6))
    assert got[-1].terminal and got[-1].data["result"] == {"steps": 6}


def test_a_stream_of_a_finished_run_replays_it_and_ends(client: Client) -> None:
    run = client.runs.create("echo", {"x": 1}, wait=10)
    statuses = [item.status for item in client.runs.stream(run.id)
                if isinstance(item, Event)]
    assert statuses == ["queued", "running", "succeeded"]
    assert [event.seq for event in client.runs.events(run.id, after=1)] == [2, 3]


def test_tokens_come_with_the_events_when_asked(client: Client, fake_llm: FakeLLM) -> None:
    ask = f"{uuid.uuid4().hex[:8]} why is the sky blue"
    fake_llm.pause(ask, after=3)  # the call cannot end before the client has seen text
    run = client.runs.create("llm.chat", {"messages": [{"role": "user", "content": ask}],
                                          "stream": True})
    text: dict[str, str] = {}
    kinds: list[str] = []
    for item in client.runs.stream(run.id, tokens=True):
        kinds.append(type(item).__name__)
        if isinstance(item, Token):
            text[item.step] = item.text if item.i == 1 else text.get(item.step, "") + item.text
            if kinds.count("Token") == 1:
                fake_llm.resume(ask)
        elif isinstance(item, TokenReset):
            text[item.step] = ""
    assert text == {"chat": f"echo: {ask}"}
    assert kinds[-1] == "Event" and "Token" in kinds
    assert client.runs.get(run.id).result["content"] == f"echo: {ask}"


# Errors ---------------------------------------------------------------------------------

def test_errors_are_typed_from_problem_json(client: Client, api_server: ApiServer,
                                           other_api: ApiClient) -> None:
    theirs = other_api.submit("echo")
    with pytest.raises(NotFound) as missing:
        client.runs.get(theirs["id"])
    assert missing.value.status == 404 and missing.value.type == "urn:agentq:problem:not-found"
    assert missing.value.request_id
    with pytest.raises(NotFound):
        list(client.runs.stream(theirs["id"]))
    with pytest.raises(ValidationFailed) as invalid:
        client.runs.create("no.such.agent")
    assert invalid.value.status == 422 and invalid.value.errors[0].field == "agent"
    assert "echo" in invalid.value.body["agents"]
    with pytest.raises(ValidationFailed) as unknown:
        client.runs.create("echo", priority="urgent", **{"colour": "red"})
    assert {problem.field for problem in unknown.value.errors} == {"priority", "colour"}
    with Client(api_server.url, "aq_not_a_key") as stranger, pytest.raises(Unauthorized) as bad:
        stranger.runs.get(theirs["id"])
    assert bad.value.status == 401 and bad.value.title == "Unauthorized"


# Retries (a mock transport: the server's 429 and 503, on demand) ------------------------

RUN = {"id": "run_1", "agent": "echo", "status": "queued", "input": {}, "result": None,
       "error": None, "attempt": 0, "max_attempts": 3, "timeout_s": 30, "priority": "normal",
       "session_id": None, "metadata": {}, "created_at": "2026-01-01T00:00:00.000Z",
       "started_at": None, "finished_at": None, "next_attempt_at": None, "start_at": None,
       "expires_at": None, "schedule_id": None, "scheduled_for": None,
       "concurrency_key": None, "usage": {"llm_calls": 0, "input_tokens": 0,
                                          "output_tokens": 0},
       "parent_id": None, "root_id": None, "child_name": None, "batch_id": None}


def answers(*scripted: httpx.Response | Exception) -> tuple[list[httpx.Request],
                                                             httpx.MockTransport]:
    """A transport that answers each request with the next of ``scripted``, and the
    requests it saw."""
    seen: list[httpx.Request] = []
    queue = list(scripted)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, httpx.MockTransport(handle)


def busy(status: int, retry_after: str) -> httpx.Response:
    return httpx.Response(status, headers={"Retry-After": retry_after}, json={
        "type": "about:blank", "title": "Busy", "status": status, "detail": "busy"})


def test_429_and_503_are_retried_after_retry_after_keeping_the_idempotency_key() -> None:
    seen, transport = answers(busy(503, "1"), busy(429, "0"), httpx.Response(202, json=RUN))
    with Client("http://agentq.test", "aq_key", transport=transport) as client:
        started = time.monotonic()
        run = client.runs.create("echo")
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert run.id == "run_1" and len(seen) == 3
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(keys) == 1 and keys.pop().startswith("agentq-client-")


def test_retries_are_bounded_and_only_for_requests_safe_to_repeat() -> None:
    # Given a server that is always busy: 1 try + max_retries, then the typed error
    seen, transport = answers(*[busy(503, "0")] * 3)
    with Client("http://agentq.test", "aq_key", max_retries=2, transport=transport) as client, \
            pytest.raises(ServiceUnavailable) as raised:
        client.runs.get("run_1")
    assert len(seen) == 3 and raised.value.retry_after == 0
    # A replay is not safe to repeat: its 503, or a connection lost after sending it, is
    # the caller's to see; a connection refused (nothing sent) is tried again
    seen, transport = answers(busy(503, "0"), httpx.ReadError("reset"),
                              httpx.ConnectError("refused"), httpx.Response(202, json=RUN))
    with Client("http://agentq.test", "aq_key", transport=transport) as client:
        with pytest.raises(ServiceUnavailable):
            client.runs.replay("run_1")
        with pytest.raises(ConnectionFailed):
            client.runs.replay("run_1")
        assert client.runs.replay("run_1").id == "run_1"
    assert len(seen) == 4
    # A Retry-After too long to sleep through is the caller's to decide on
    seen, transport = answers(busy(429, "3600"))
    with Client("http://agentq.test", "aq_key", transport=transport) as client, \
            pytest.raises(RateLimited) as limited:
        client.runs.get("run_1")
    assert limited.value.retry_after == 3600 and len(seen) == 1


def test_the_async_client_retries_the_same_way() -> None:
    seen, transport = answers(httpx.ConnectError("refused"), busy(503, "0"),
                              httpx.Response(200, json=RUN))

    async def get() -> Run:
        async with AsyncClient("http://agentq.test", "aq_key", transport=transport) as client:
            return await client.runs.get("run_1")

    assert asyncio.run(get()).id == "run_1" and len(seen) == 3


# Webhooks -------------------------------------------------------------------------------

def test_verify_accepts_a_real_delivery_and_refuses_forgeries(
    client: Client, api: ApiClient, receiver: Receiver
) -> None:
    secret = api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/hook"}).get_json()[
        "secret"]
    run = client.runs.create("echo", {"n": 7}, wait=10)
    [delivery] = wait_for(lambda: receiver.at("/hook"), what="the delivery")
    event = webhooks.verify(delivery.body, delivery.headers, secret)
    assert event.type == "run.succeeded" and event.data.id == run.id
    assert event.data.result == {"n": 7}
    # Headers as a framework gives them (any case) are fine
    assert webhooks.verify(delivery.body, httpx.Headers(delivery.headers), secret) == event

    def refused(body: bytes, headers: dict[str, str], key: str = secret) -> str:
        with pytest.raises(WebhookVerificationError) as raised:
            webhooks.verify(body, headers, key)
        return str(raised.value)

    assert "altered" in refused(delivery.body.replace(b'"n":7', b'"n":8'), delivery.headers)
    assert "altered" in refused(delivery.body, delivery.headers, signing.new_secret())
    assert "missing" in refused(delivery.body, {**delivery.headers, "webhook-signature": ""})
    # An old delivery replayed, signed right (by agentq's own signer) but stale
    old = str(int(time.time()) - 301)
    stale = {**delivery.headers, "webhook-timestamp": old,
             "webhook-signature": signing.sign(secret, delivery.headers["webhook-id"], old,
                                               delivery.body)}
    assert "old" in refused(delivery.body, stale)
    # During a rotation the header holds a signature per live secret: either verifies
    now, other = str(int(time.time())), signing.new_secret()
    rotated = {**delivery.headers, "webhook-timestamp": now, "webhook-signature":
               signing.signature_header([other, secret], delivery.headers["webhook-id"], now,
                                        delivery.body)}
    assert webhooks.verify(delivery.body, rotated, secret) == event
    assert webhooks.verify(delivery.body, rotated, other) == event


# The models and /openapi.json -----------------------------------------------------------

MODELS: list[tuple[type[BaseModel], str]] = [
    (Run, "RunOut"), (RunError, "RunError"), (RunUsage, "RunUsage"), (Page, "RunPage"),
    (Event, "EventOut"), (Waitpoint, "WaitpointOut"), (Problem, "ProblemOut"),
    (FieldProblem, "FieldProblem"), (ForkedFrom, "ForkedFrom"), (Batch, "BatchOut"),
    (BatchCreated, "BatchCreated"),
]
# The live stream's events carry no time: the client's Event may lack one.
OPTIONAL_HERE = {("Event", "at")}


def enums(schema: dict[str, Any], definitions: dict[str, Any],
          seen: frozenset[str] = frozenset()) -> set[Any]:
    """Every enum value a property's schema allows (through $ref, anyOf, items)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return set() if name in seen else enums(definitions[name], definitions, seen | {name})
    found = set(schema.get("enum", []))
    for part in [*schema.get("anyOf", []), *([schema["items"]] if "items" in schema else [])]:
        found |= enums(part, definitions, seen)
    return found


def test_the_models_match_openapi(api_server: ApiServer) -> None:
    document = httpx.get(f"{api_server.url}/openapi.json", timeout=10).json()
    served = document["components"]["schemas"]
    for model, name in MODELS:
        schema, ours = served[name], model.model_json_schema()
        fields = {field.alias or field_name: field
                  for field_name, field in model.model_fields.items()}
        assert set(fields) == set(schema["properties"]), f"{model.__name__} vs {name}"
        required = {field_name for field_name, field in fields.items() if field.is_required()}
        assert required == set(schema.get("required", [])) - {
            field for owner, field in OPTIONAL_HERE if owner == model.__name__}, name
        for field_name, prop in schema["properties"].items():
            assert enums(ours["properties"][field_name], ours.get("$defs", {})) == enums(
                prop, served), f"{name}.{field_name}"
    # What runs.create sends, and the webhook event types
    assert {"agent", "input", *get_type_hints(RunOptions)} == set(
        served["RunCreate"]["properties"])
    # What runs.batch sends for an item (a BatchItem), and runs.fork
    assert {"agent", "input", "idempotency_key", *get_type_hints(RunOptions)} == set(
        served["BatchItem"]["properties"]) and set(served["BatchCreate"]["properties"]) == {
        "items"}
    assert set(served["ForkCreate"]["properties"]) == {"from_step", "input"}
    assert enums(WebhookEvent.model_json_schema()["properties"]["type"], {}) == enums(
        served["EndpointOut"]["properties"]["events"], served)


def test_events_listed_and_streamed_parse_alike(client: Client) -> None:
    run = client.runs.create("test.emit", {"count": 1}, wait=10)
    listed = client.runs.events(run.id)
    streamed = [item for item in client.runs.stream(run.id) if isinstance(item, Event)]
    assert [(e.seq, e.type, e.data) for e in listed] == [
        (e.seq, e.type, e.data) for e in streamed]
    assert all(e.at is not None for e in listed)
    assert json.loads(listed[-1].model_dump_json())["data"]["status"] == "succeeded"


def test_the_client_needs_none_of_the_servers_code() -> None:
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, agentq.client; print(sorted({m.split('.')[0] "
         "for m in sys.modules} & {'api', 'worker', 'flask', 'sqlalchemy', 'celery'}))"],
        capture_output=True, text=True, timeout=60, check=True)
    assert imported.stdout.strip() == "[]"


# Trees, forks and batches ---------------------------------------------------------------

FANOUT = {"questions": ["Why is the sky blue?", "What causes tides?"], "max_concurrency": 2,
          "phase_s": 0}


def test_children_walks_a_parents_runs_oldest_first_page_by_page(client: Client) -> None:
    # Given a demo.fanout parent that started a demo.research child per question
    parent = client.runs.create("demo.fanout", FANOUT)
    done = client.runs.wait(parent.id, timeout=60)
    assert done.status == "succeeded" and done.children == {"succeeded": 2}
    # When its children are walked a page of one at a time
    children = list(client.runs.children(parent.id, page_size=1))
    # Then each came once, in the order they were started, with the tree's ids
    assert [child.input["question"] for child in children] == FANOUT["questions"]
    assert [child.id for child in children] == sorted(child.id for child in children)
    assert {(child.agent, child.parent_id, child.root_id, child.status)
            for child in children} == {("demo.research", parent.id, parent.id, "succeeded")}
    assert len({child.child_name for child in children}) == 2
    assert [child.id for child in client.runs.children(parent.id, limit=1)] == [
        children[0].id]
    assert list(client.runs.children(children[0].id)) == []  # a leaf
    with pytest.raises(NotFound):
        list(client.runs.children("run_none"))


def llm_calls(fake_llm: FakeLLM, tag: str) -> dict[int, int]:
    """How many times the LLM was asked each of test.llm.four's prompts."""
    return {n: len(fake_llm.calls_for(f"{tag}:{n}")) for n in range(1, 5)}


def test_fork_runs_a_finished_run_again_from_a_step_once_per_key(
        client: Client, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    # Given a run that made its four LLM calls
    crash_worker()
    tag = f"tag-{uuid.uuid4().hex[:12]}"
    original = client.runs.wait(client.runs.create("test.llm.four", {"tag": tag}).id,
                                timeout=30)
    assert original.status == "succeeded", original
    # When it is forked from llm:3, and the request is sent again with its key
    key = f"fork-{uuid.uuid4()}"
    fork = client.runs.fork(original.id, "llm:3", idempotency_key=key)
    assert client.runs.fork(original.id, "llm:3", idempotency_key=key).id == fork.id
    # Then one fork ran from llm:3 on, with the original's input, making calls 3 and 4 again
    assert fork.id != original.id and fork.input == original.input
    assert fork.forked_from == ForkedFrom(run_id=original.id, step="llm:3")
    done = client.runs.wait(fork.id, timeout=30)
    assert done.status == "succeeded" and done.result == original.result
    assert llm_calls(fake_llm, tag) == {1: 1, 2: 1, 3: 2, 4: 2}
    assert client.runs.get(original.id).forked_from is None
    with pytest.raises(ValidationFailed) as unknown:  # a step the run never recorded
        client.runs.fork(original.id, "llm:9")
    assert unknown.value.errors[0].field == "from_step"


def finished(client: Client, batch_id: str) -> Batch:
    """Poll the batch until its last run has ended."""
    return wait_for(lambda: (batch := client.batches.get(batch_id)).completed and batch,
                    timeout=30, interval=0.2, what=f"batch {batch_id} to complete")


def test_a_batch_makes_its_runs_in_order_and_batches_get_counts_them(client: Client) -> None:
    # When three echo runs go in one request, as BatchItems and as a plain dict
    key = f"item-{uuid.uuid4()}"
    items: list[dict[str, Any] | BatchItem] = [
        BatchItem("echo", {"i": 0}, idempotency_key=key),
        {"agent": "echo", "input": {"i": 1}, "metadata": {"from": "dict"}},
        BatchItem("echo", {"i": 2}, priority="high"),
    ]
    request_key = f"batch-{uuid.uuid4()}"
    batch = client.runs.batch(items, idempotency_key=request_key)
    # Then they are made at once, a run per item in the items' order
    assert batch.id.startswith("bat_") and batch.size == 3 and batch.replayed == []
    assert [run.input for run in batch.runs] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert batch.runs[1].metadata == {"from": "dict"} and batch.runs[2].priority == "high"
    assert sum(batch.counts.values()) == 3 and not batch.completed
    # And batches.get counts them by status until the last has ended
    done = finished(client, batch.id)
    assert done.counts == {"succeeded": 3} and done.size == 3
    assert [client.runs.get(run.id).result for run in batch.runs] == [{"i": i} for i in range(3)]
    # The request sent again with its key is the same batch; nothing is made again
    again = client.runs.batch(items, idempotency_key=request_key)
    assert again.id == batch.id and [run.id for run in again.runs] == [
        run.id for run in batch.runs]
    # An item's key is runs.create's: the same run, in a new batch or on its own
    later = client.runs.batch([BatchItem("echo", {"i": 0}, idempotency_key=key),
                               BatchItem("echo", {"i": 3})])
    assert later.id != batch.id and later.replayed == [0] and later.size == 1
    assert later.runs[0].id == batch.runs[0].id
    assert client.runs.create("echo", {"i": 0}, idempotency_key=key).id == batch.runs[0].id
    # One invalid item refuses the batch, naming its index
    with pytest.raises(ValidationFailed) as invalid:
        client.runs.batch([BatchItem("echo"), {"agent": "no.such.agent"}])
    assert [problem.field for problem in invalid.value.errors] == ["items[1].agent"]
    with pytest.raises(NotFound):
        client.batches.get("bat_none")


def test_the_async_client_batches_forks_and_walks_children(
        api_server: ApiServer, tenant: Tenant, fake_llm: FakeLLM,
        crash_worker: StartWorker) -> None:
    crash_worker()
    topic = f"topic-{uuid.uuid4().hex[:12]}"

    async def scenario() -> tuple[BatchCreated, Batch, list[Run], Run, Run]:
        async with AsyncClient(api_server.url, tenant.key, timeout=10) as client:
            batch = await client.runs.batch([BatchItem("echo", {"i": i}) for i in range(3)])
            parent = await client.runs.create("demo.fanout", FANOUT)
            original = await client.runs.wait(
                (await client.runs.create("test.llm.revise", {"topic": topic})).id, timeout=30)
            fork = await client.runs.fork(original.id, "llm:3",
                                          input={"topic": topic, "style": "bold"})
            await client.runs.wait(parent.id, timeout=60)
            children = [child async for child in client.runs.children(parent.id,
                                                                       page_size=1)]
            for run in batch.runs:  # the batch completes in its last run's end
                await client.runs.wait(run.id, timeout=30)
            return (batch, await client.batches.get(batch.id), children, original,
                    await client.runs.wait(fork.id, timeout=30))

    batch, counted, children, original, fork = asyncio.run(scenario())
    assert [run.input for run in batch.runs] == [{"i": i} for i in range(3)]
    assert counted.id == batch.id and counted.counts == {"succeeded": 3}
    assert [child.input["question"] for child in children] == FANOUT["questions"]
    # The fork took the new input from llm:3 on, and reused the notes
    assert fork.forked_from == ForkedFrom(run_id=original.id, step="llm:3")
    assert fork.status == "succeeded" and fork.input == {"topic": topic, "style": "bold"}
    assert fork.result == [f"echo: {topic}:notes:1", f"echo: {topic}:notes:2",
                           f"echo: {topic}:bold:3", f"echo: {topic}:bold:4"]
    assert len(fake_llm.calls_for(f"{topic}:notes:1")) == 1


def test_forks_and_batches_are_retried_keeping_their_idempotency_key() -> None:
    created = {"id": "bat_1", "size": 1, "created_at": "2026-01-01T00:00:00.000Z",
               "completed_at": None, "counts": {"queued": 1}, "runs": [RUN], "replayed": []}
    seen, transport = answers(busy(503, "0"), httpx.Response(202, json=RUN),
                              httpx.ReadError("reset"), httpx.Response(202, json=created))
    with Client("http://agentq.test", "aq_key", transport=transport) as client:
        assert client.runs.fork("run_0", "llm:2").id == "run_1"
        assert client.runs.batch([BatchItem("echo")]).runs[0].id == "run_1"
    forks, batches = seen[:2], seen[2:]
    assert len({request.headers["Idempotency-Key"] for request in forks}) == 1
    assert len({request.headers["Idempotency-Key"] for request in batches}) == 1
    assert json.loads(forks[0].content) == {"from_step": "llm:2"}  # the input kept
    assert json.loads(batches[0].content) == {"items": [{"agent": "echo", "input": {}}]}
