"""Bad input is a clear 4xx, never a 500, and never leaves anything half stored: timestamps,
event ids, values Postgres's jsonb cannot hold (NaN, Infinity, U+0000), bodies nested too
deep, JWT claims of the wrong type; and an agent whose result jsonb cannot hold fails its
run at once instead of leaving it running."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import time
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from api import create_app
from tests.conftest import ApiClient, Tenant
from tests.harness import ApiServer
from worker.app import build_runtime
from worker.base.models import InboundEvent, Run
from worker.base.runtime import Runtime
from worker.base.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")

PROBLEM = "application/problem+json"


def assert_problem(response: Any, *codes: int) -> dict[str, Any]:
    assert response.status_code in codes, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    return body


def runs_of(runtime: Runtime, tenant_id: str) -> int:
    with runtime.db.autocommit() as session:
        return int(session.scalar(select(func.count()).select_from(Run)
                                  .where(Run.tenant_id == tenant_id)) or 0)


# Hook sources: timestamps and payloads --------------------------------------------------------

def source(api: ApiClient, provider: str, secret: str) -> str:
    made = api.post("/v1/hook-sources", json={"provider": provider, "secret": secret,
                                              "agent": "echo"})
    assert made.status_code == 201, made.get_json()
    return str(made.get_json()["url"])


SLACK_SECRET = "slack-signing-secret-0123456789"
STRIPE_SECRET = "whsec_stripe-endpoint-secret-0123"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def slack_headers(body: bytes, stamp: str) -> dict[str, str]:
    mac = hmac.new(SLACK_SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": "v0=" + mac.hexdigest(),
            "Content-Type": "application/json"}


def stripe_headers(body: bytes, stamp: str) -> dict[str, str]:
    mac = hmac.new(STRIPE_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    return {"Stripe-Signature": f"t={stamp},v1={mac.hexdigest()}",
            "Content-Type": "application/json"}


def standard_headers(body: bytes, stamp: str, msg_id: str = "msg_1") -> dict[str, str]:
    key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json"}


@pytest.mark.parametrize("stamp", ["--1", "²", "1e3", "\u0661\u0662\u0663", "9" * 40, "-",
                                   " "])
@pytest.mark.parametrize("provider", ["slack", "stripe", "standard"])
def test_a_malformed_timestamp_on_an_unauthenticated_hook_is_401(
        api: ApiClient, provider: str, stamp: str) -> None:
    url = source(api, provider, {"slack": SLACK_SECRET, "stripe": STRIPE_SECRET,
                                 "standard": STANDARD_SECRET}[provider])
    body = b'{"type": "event_callback", "event_id": "Ev1", "id": "evt_1"}'
    headers = {"slack": slack_headers, "stripe": stripe_headers,
               "standard": standard_headers}[provider](body, stamp)
    response = api.client.post(url, data=body, headers=headers)
    assert "timestamp" in assert_problem(response, 401)["detail"]


@pytest.mark.parametrize("body", [
    b'{"type": "order.paid", "amount": NaN}',
    b'{"type": "order.paid", "amount": Infinity}',
    b'{"type": "order.paid", "note": "nul \\u0000 here"}',
    b'{"type": "order.paid", "amount": 1e400}',
], ids=["NaN", "Infinity", "U+0000", "1e400"])
def test_an_authentic_delivery_jsonb_cannot_store_is_4xx_every_time(
        api: ApiClient, runtime: Runtime, body: bytes) -> None:
    url = source(api, "standard", STANDARD_SECRET)
    for _ in range(2):  # the platform redelivers: the same clear answer, nothing stored
        response = api.client.post(url, data=body,
                                   headers=standard_headers(body, str(int(time.time()))))
        assert "cannot be stored" in assert_problem(response, 400)["detail"]
    assert runs_of(runtime, api.tenant.id) == 0
    with runtime.db.autocommit() as session:
        assert session.scalar(select(func.count()).select_from(InboundEvent).where(
            InboundEvent.tenant_id == api.tenant.id)) == 0


def test_a_delivery_whose_ids_are_not_strings_is_400(api: ApiClient) -> None:
    url = source(api, "slack", SLACK_SECRET)
    for event in ({"type": "event_callback", "event_id": 12345, "event": {"type": "m"}},
                  {"type": "event_callback", "event_id": "x" * 500, "event": {"type": "m"}},
                  {"type": "event_callback", "event_id": "Ev9", "event": {"type": ["m"]}},
                  {"type": "event_callback", "event_id": "Ev9", "event": "not an object"},
                  {"type": None, "event_id": "Ev10"}, {"type": "", "event_id": "Ev11"}):
        body = json.dumps(event).encode()
        response = api.client.post(url, data=body,
                                   headers=slack_headers(body, str(int(time.time()))))
        assert response.status_code in (200, 400), response.get_data(as_text=True)


# Event ids and resume points -----------------------------------------------------------------

@pytest.mark.parametrize("last_event_id", ["²", "\u0661", "9" * 5000, "-1", "1.5", str(2**31)])
@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
def test_a_malformed_last_event_id_is_422(api: ApiClient, last_event_id: str,
                                           accept: str) -> None:
    run = api.submit("echo")
    response = api.get(f"/v1/runs/{run['id']}/events",
                       headers={"Last-Event-ID": last_event_id, "Accept": accept})
    assert assert_problem(response, 422)["errors"][0]["field"] == "Last-Event-ID"


def test_an_after_beyond_any_seq_is_422(api: ApiClient) -> None:
    run = api.submit("echo")
    for after in ("9" * 5000, str(2**63)):
        assert_problem(api.get(f"/v1/runs/{run['id']}/events?after={after}"), 422)


# Values jsonb cannot store, bodies too deep ------------------------------------------------------

@pytest.mark.parametrize("raw", [
    '{"agent": "echo", "input": {"x": NaN}}',
    '{"agent": "echo", "input": {"x": [1, Infinity]}}',
    '{"agent": "echo", "input": {"x": -Infinity}}',
    '{"agent": "echo", "input": {"x": 1e400}}',
    '{"agent": "echo", "input": {"x": "nul \\u0000 here"}}',
    '{"agent": "echo", "input": {"key \\u0000": 1}}',
    '{"agent": "echo", "metadata": {"x": NaN}}',
    '{"agent": "echo", "metadata": {"x": "\\u0000"}}',
], ids=["NaN", "Infinity", "-Infinity", "1e400", "U+0000", "key U+0000", "metadata NaN",
        "metadata U+0000"])
def test_input_or_metadata_jsonb_cannot_store_is_refused_at_the_door(
        api: ApiClient, runtime: Runtime, raw: str) -> None:
    for headers in ({}, {"Idempotency-Key": secrets.token_hex(8)}):
        response = api.post("/v1/runs", data=raw,
                            headers={"Content-Type": "application/json", **headers})
        problem = assert_problem(response, 400, 422)
        if response.status_code == 422:
            assert "cannot be stored" in problem["detail"] or problem["errors"], problem
    assert runs_of(runtime, api.tenant.id) == 0
    # What jsonb can store still goes through, the six characters \u0000 included
    fine = api.post("/v1/runs", json={"agent": "echo", "input": {"x": "\\u0000", "y": 1e300}})
    assert fine.status_code == 202


def test_a_body_nested_too_deep_is_4xx_with_or_without_an_idempotency_key(
        api: ApiClient) -> None:
    deep = '{"agent": "echo", "input": ' + "[" * 100_000 + "]" * 100_000 + "}"
    for headers in ({}, {"Idempotency-Key": "deep-1"}):
        response = api.post("/v1/runs", data=deep,
                            headers={"Content-Type": "application/json", **headers})
        assert_problem(response, 400, 413, 422)


def test_a_websocket_run_with_unstorable_input_gets_an_error_frame(api: ApiClient,
                                                                  runtime: Runtime) -> None:
    from api.ws import RunMessage
    from worker.base.errors import InvalidRequest
    from worker.runs.submission import RunRequest, submit

    message = RunMessage.model_validate_json('{"type": "run", "agent": "echo", '
                                             '"input": {"x": NaN}}')
    with pytest.raises(InvalidRequest, match="cannot be stored"):
        submit(runtime, tenant_id=api.tenant.id,
               request=RunRequest(agent=message.agent, input=message.input))


# JWT claims ----------------------------------------------------------------------------------

@pytest.fixture
def jwt_client(settings: Settings) -> FlaskClient:
    configured = settings.model_copy(update={
        "jwt_secret": "a-shared-secret-for-hs256-tokens-0123456789",
        "jwt_issuer": "https://app.example", "jwt_audience": "agentq"})
    return create_app(runtime=build_runtime(configured)).test_client()


@pytest.mark.parametrize("claims", [{"scope": 5}, {"scope": {"a": 1}}, {"scope": [1, 2]},
                                    {"scope": None}, {"tenant": 7}, {"tenant": ["x"]}])
def test_a_jwt_whose_claims_have_the_wrong_type_is_401(jwt_client: FlaskClient,
                                                        tenant: Tenant,
                                                        claims: dict[str, Any]) -> None:
    body = {"iss": "https://app.example", "aud": "agentq", "exp": int(time.time()) + 60,
            "sub": "user-1", "tenant": tenant.name, **claims}
    token = jwt.encode(body, "a-shared-secret-for-hs256-tokens-0123456789", algorithm="HS256")
    response = jwt_client.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401)


# An agent's result jsonb cannot store ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["nan", "nul"])
def test_a_result_jsonb_cannot_store_fails_the_run_with_a_clear_error(
        api: ApiClient, kind: str) -> None:
    run = api.submit("test.unstorable", {"kind": kind})
    done = api.wait(run["id"], timeout=15)  # not left running for the sweeper
    assert done["status"] == "failed"
    assert "cannot be stored" in done["error"]["message"]
    assert done["attempt"] == 1  # not retried: another attempt would not help


@pytest.mark.parametrize("where", ["emit", "step"])
def test_an_event_or_step_jsonb_cannot_store_is_refused_where_the_agent_made_it(
        api: ApiClient, where: str) -> None:
    done = api.wait(api.submit("test.unstorable", {"kind": "nan", "where": where})["id"])
    assert done["status"] == "succeeded"
    assert "cannot be stored" in done["result"][f"{where}_refused"]


def test_a_session_state_jsonb_cannot_store_fails_the_run(api: ApiClient) -> None:
    run = api.submit("test.unstorable", {"kind": "nul", "where": "session"},
                     session_id="unstorable-session")
    done = api.wait(run["id"], timeout=15)
    assert done["status"] == "failed" and "ctx.session" in done["error"]["message"]


# U+0000 anywhere Postgres text would meet it -------------------------------------------------

@pytest.mark.parametrize("path", [
    "/v1/runs/run_%00x", "/v1/runs?agent=%00", "/v1/runs?status=queued&session_id=a%00",
    "/v1/runs?cursor=" + base64.urlsafe_b64encode(b"run_\x00").decode().rstrip("="),
    "/v1/deliveries?run_id=%00", "/v1/webhook-endpoints/ep_%00", "/v1/sessions/s%00",
    "/runs/run_%00x",
])
def test_a_url_holding_u0000_is_4xx(api: ApiClient, path: str) -> None:
    assert_problem(api.get(path), 400, 422) if path.startswith("/v1") else \
        assert_problem(api.get(path), 400)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/api-keys", {"name": "ci \u0000"}),
    ("/v1/hook-sources", {"provider": "github", "secret": "s" * 20 + "\u0000",
                          "agent": "echo"}),
    ("/v1/hook-sources", {"provider": "github", "secret": "s" * 20, "agent": "echo",
                          "events": ["push\u0000"]}),
    ("/v1/runs", {"agent": "echo\u0000"}),
])
def test_a_body_holding_u0000_is_422(api: ApiClient, path: str, body: dict[str, Any]) -> None:
    assert_problem(api.post(path, json=body), 422)


@pytest.mark.parametrize("raw", [
    '{"agent": "echo", "input": {"x": "\\ud800"}}',
    '{"agent": "echo", "input": {"\\udc00": 1}}',
    '{"agent": "echo", "metadata": {"x": "a\\udfffb"}}',
], ids=["lone high surrogate", "lone low surrogate in a key", "in metadata"])
def test_a_lone_surrogate_is_refused_and_a_pair_is_kept(api: ApiClient, raw: str) -> None:
    assert "surrogate" in assert_problem(api.post(
        "/v1/runs", data=raw, headers={"Content-Type": "application/json"}), 422)["detail"]
    pair = api.post("/v1/runs", data='{"agent": "echo", "input": {"x": "\\ud83d\\ude00"}}',
                    headers={"Content-Type": "application/json"})
    assert pair.status_code == 202 and pair.get_json()["input"] == {"x": "\U0001f600"}


def test_an_endpoint_whose_host_dns_cannot_carry_is_422(api: ApiClient) -> None:
    response = api.post("/v1/webhook-endpoints",
                        json={"url": f"https://{'a' * 64}.example.com/hook"})
    assert_problem(response, 422)


# Over a real server: what only HTTP itself can send -----------------------------------------

def raw_http(server: ApiServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("path", ["/hooks/hs_nope", "/v1/runs"])
def test_a_broken_chunked_body_is_400(api_server: ApiServer, tenant: Tenant, path: str) -> None:
    request = (f"POST {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {tenant.key}\r\n"
               "Content-Type: application/json\r\nIdempotency-Key: chunk-1\r\n"
               "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").encode()
    status = raw_http(api_server, request).split(b"\r\n", 1)[0]
    assert status.split()[1] in {b"400", b"404"}, status


def test_a_websocket_frame_nested_too_deep_gets_an_error_frame(api_server: ApiServer,
                                                              tenant: Tenant) -> None:
    from simple_websocket import Client

    client = Client.connect(api_server.url.replace("http://", "ws://") + "/v1/ws",
                            headers={"Authorization": f"Bearer {tenant.key}"})
    try:
        for frame in ("[" * 100_000 + "]" * 100_000,
                      '{"type": "run", "agent": "echo", "input": {"x": "\\u0000"}}',
                      '{"type": "subscribe", "run_id": "run_\\u0000"}',
                      '{"type": "subscribe", "run_id": "run_x", "after": 99999999999}'):
            client.send(frame)
            answer = json.loads(client.receive(timeout=10) or "{}")
            assert answer["type"] == "error", answer
        # And the socket still works
        client.send('{"type": "run", "agent": "echo", "input": {"ok": 1}, "ref": "r"}')
        assert json.loads(client.receive(timeout=10) or "{}")["type"] == "accepted"
    finally:
        client.close()
