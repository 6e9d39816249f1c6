"""A credential's streams and sockets live only as long as it does: revoking a key (or a JWT's
expiry) ends them within seconds, in every API process; every WebSocket frame counts against
the rate limit; the key cache cannot re-remember a key revoked while it was being checked;
JWT callers have a rate-limit bucket per tenant and subject."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from flask.testing import FlaskClient
from simple_websocket import Client, ConnectionClosed
from sqlalchemy import text

from api import create_app
from tests.conftest import ApiClient, Services, Tenant, make_tenant
from tests.harness import ApiServer, sse_events, wait_for
from worker.access import cache, keys
from worker.access.cache import KeyCache
from worker.app import build_runtime
from worker.base.runtime import Runtime
from worker.base.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")

JWT_SECRET = "a-shared-secret-for-hs256-tokens-0123456789"
ISSUER, AUDIENCE = "https://app.example", "agentq"
STREAM_MAX_S = 6
RATE = 20


@pytest.fixture(scope="module")
def strict(env: dict[str, str], services: Services) -> Iterator[ApiServer]:
    """An API process of its own: JWTs accepted, a low rate limit, short-lived streams."""
    server = ApiServer(env={**env, "AGENTQ_JWT_SECRET": JWT_SECRET, "AGENTQ_JWT_ISSUER": ISSUER,
                            "AGENTQ_JWT_AUDIENCE": AUDIENCE,
                            "AGENTQ_RATE_LIMIT_PER_MINUTE": str(RATE),
                            "AGENTQ_STREAM_MAX_S": str(STREAM_MAX_S)},
                       log=services.root / "strict-api.log")
    server.start()
    server.wait_ready()
    yield server
    server.stop()


def ws_client(server: ApiServer, bearer: str) -> Client:
    url = server.url.replace("http://", "ws://") + "/v1/ws"
    return Client.connect(url, headers={"Authorization": f"Bearer {bearer}"})


def closed_within(client: Client, seconds: float) -> tuple[int, str, float]:
    """Wait for the server to close the socket; (code, reason, seconds it took)."""
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        try:
            client.receive(timeout=max(0.05, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.reason, closed.message, time.monotonic() - started
    raise AssertionError(f"the socket was still open after {seconds} s")


def parked_run(server: ApiServer, key: str) -> str:
    """A run that stays queued (no worker reads its queue): its stream never ends by itself."""
    response = httpx.post(f"{server.url}/v1/runs", json={"agent": "test.parked"},
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def revoke_elsewhere(runtime: Runtime, tenant: Tenant, *, announce: bool = True) -> None:
    """Revoke the tenant's key from this (another) process, as the CLI does."""
    with runtime.db.transaction() as session:
        key_id = session.scalar(text("SELECT id FROM api_keys WHERE key_hash = :h"),
                                {"h": keys.hash_key(tenant.key)})
        keys.revoke(session, tenant_id=tenant.id, key_id=key_id)
    if announce:
        cache.announce_revocation(runtime.bus.redis, key_id)


def jwt_for(tenant: Tenant, *, lifetime_s: float = 300, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + lifetime_s),
            "sub": "user-1", "tenant": tenant.name, **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


# Revocation and expiry end sockets and streams ------------------------------------------------

@pytest.mark.parametrize("announce", [True, False], ids=["announced", "announcement lost"])
def test_revoking_a_key_closes_its_open_websocket(strict: ApiServer, runtime: Runtime,
                                                  announce: bool) -> None:
    tenant = make_tenant(runtime)
    client = ws_client(strict, tenant.key)
    client.send('{"type": "subscribe", "run_id": "' + parked_run(strict, tenant.key) + '"}')
    # When the key is revoked from another process (over Redis, or with the message lost)
    revoke_elsewhere(runtime, tenant, announce=announce)
    # Then the server closes the socket, saying why: at once, or at the next check
    code, reason, took = closed_within(client, 8)
    assert code == 1008 and "revoked" in reason
    assert took < (1 if announce else 6.5)


def test_a_jwt_socket_is_closed_when_the_token_expires(strict: ApiServer,
                                                      runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    client = ws_client(strict, jwt_for(tenant, lifetime_s=2))
    client.send('{"type": "subscribe", "run_id": "*"}')
    code, reason, took = closed_within(client, 6)
    assert code == 1008 and "expired" in reason and took < 3.5


def test_a_socket_lives_no_longer_than_a_stream(strict: ApiServer, runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    client = ws_client(strict, tenant.key)
    code, reason, took = closed_within(client, STREAM_MAX_S + 4)
    assert code == 1001 and "AGENTQ_STREAM_MAX_S" in reason
    assert STREAM_MAX_S - 1 < took < STREAM_MAX_S + 3


def follow_sse(url: str, **request: Any) -> tuple[threading.Event, list[dict[str, str]]]:
    """Read an SSE stream in a thread; the event is set when the server ends it."""
    ended, messages = threading.Event(), []

    def read() -> None:
        with httpx.stream("GET", url, timeout=30, **request) as response:
            assert response.status_code == 200, response.read()
            messages.extend(sse_events(response.iter_lines()))
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    return ended, messages


def test_revoking_a_key_ends_its_sse_streams(strict: ApiServer, runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    run_id = parked_run(strict, tenant.key)
    ended, messages = follow_sse(f"{strict.url}/v1/runs/{run_id}/events",
                                 headers={"Authorization": f"Bearer {tenant.key}",
                                          "Accept": "text/event-stream"})
    wait_for(lambda: any("retry" in m for m in messages) or len(messages) > 1,
             what="the stream to open")
    time.sleep(0.3)  # the stream is following now
    revoke_elsewhere(runtime, tenant)
    assert ended.wait(3), "the stream went on after its key was revoked"
    assert any("revoked" in m.get("comment", "") for m in messages)


def test_a_jwt_stream_ends_when_the_token_expires(strict: ApiServer, runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    run_id = parked_run(strict, tenant.key)
    started = time.monotonic()
    bearer = jwt_for(tenant, lifetime_s=2)
    ended, messages = follow_sse(f"{strict.url}/v1/runs/{run_id}/events",
                                 headers={"Authorization": f"Bearer {bearer}",
                                          "Accept": "text/event-stream"})
    assert ended.wait(6), "the stream outlived its token"
    assert time.monotonic() - started < 4
    assert any("expired" in m.get("comment", "") for m in messages)


def test_revoking_a_key_ends_a_dashboard_stream_signed_in_with_it(
        strict: ApiServer, runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    run_id = parked_run(strict, tenant.key)
    with httpx.Client(base_url=strict.url, timeout=10) as browser:
        page = browser.get("/sign-in").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        signed_in = browser.post("/sign-in", data={"csrf": csrf, "key": tenant.key})
        assert signed_in.status_code == 302
        cookies = dict(browser.cookies)
    ended, _ = follow_sse(f"{strict.url}/runs/{run_id}/events", cookies=cookies,
                          headers={"Accept": "text/event-stream"})
    time.sleep(0.5)
    revoke_elsewhere(runtime, tenant)
    assert ended.wait(3), "the dashboard's stream went on after its key was revoked"


# Rate limits -----------------------------------------------------------------------------------

def within_one_minute_window() -> None:
    """Budgets are per clock minute: start well inside one, so a test does not straddle two."""
    if time.time() % 60 > 55:
        time.sleep(60.2 - time.time() % 60)


def test_every_websocket_frame_counts_against_the_rate_limit(strict: ApiServer,
                                                            runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    within_one_minute_window()
    client = ws_client(strict, tenant.key)  # the handshake is one request
    codes = []
    for number in range(RATE + 3):
        client.send(json.dumps({"type": "subscribe", "run_id": "run_nope", "ref": number}))
        frame = client.receive(timeout=5)
        assert frame is not None
        codes.append(json.loads(frame)["code"])
    assert codes[:RATE - 1] == ["not_found"] * (RATE - 1)
    assert codes[RATE - 1:] == ["limit"] * 4
    # The same budget as the key's HTTP requests: those are refused too
    refused = httpx.get(f"{strict.url}/v1/runs", headers={"Authorization": f"Bearer {tenant.key}"})
    assert refused.status_code == 429
    client.close()


@pytest.fixture
def jwt_client(settings: Settings) -> FlaskClient:
    configured = settings.model_copy(update={
        "jwt_secret": JWT_SECRET, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE,
        "rate_limit_per_minute": 3})
    return create_app(runtime=build_runtime(configured)).test_client()


def test_jwt_callers_have_a_bucket_per_tenant_and_subject(jwt_client: FlaskClient,
                                                         runtime: Runtime) -> None:
    one, two = make_tenant(runtime), make_tenant(runtime)

    def calls(bearer: str, times: int) -> list[int]:
        return [jwt_client.get("/v1/runs", headers={"Authorization": f"Bearer {bearer}"})
                .status_code for _ in range(times)]

    within_one_minute_window()
    assert calls(jwt_for(one), 4) == [200, 200, 200, 429]
    # The same subject in another tenant, another subject, no subject: budgets of their own
    assert calls(jwt_for(two), 3) == [200, 200, 200]
    assert calls(jwt_for(one, sub="user-2"), 3) == [200, 200, 200]
    no_subject = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60,
                             "tenant": two.name}, JWT_SECRET, algorithm="HS256")
    assert calls(no_subject, 1) == [200]


# The key cache against a revocation mid-lookup -------------------------------------------------

def test_a_key_revoked_while_it_was_looked_up_is_not_remembered(
        settings: Settings, runtime: Runtime, api: ApiClient) -> None:
    cache = KeyCache(settings.redis_url, ttl_s=60)
    key_hash = keys.hash_key(api.tenant.key)
    with runtime.db.autocommit() as session:
        caller = keys.authenticate(session, token=api.tenant.key)
    assert caller is not None

    # Control: a lookup no revocation crossed is remembered (once the cache listens)
    def remembered() -> bool:
        cache.put(key_hash, caller, generation=cache.generation)
        return cache.get(key_hash) is not None

    wait_for(remembered, timeout=5, what="the cache to remember a live key")
    cache.forget()
    # Given a request that read the key while it was live...
    seen = cache.generation
    # ...when the key is revoked (and this process hears of it) before the request remembers
    revoke_elsewhere(runtime, api.tenant)
    wait_for(lambda: cache.generation != seen, timeout=5, what="the revocation to be heard")
    cache.put(key_hash, caller, generation=seen)
    # Then the cache does not hold the revoked key
    assert cache.get(key_hash) is None
    assert api.get("/v1/runs").status_code == 401


def stalled_socket(server: ApiServer, runtime: Runtime, tenant: Tenant) -> socket.socket:
    """A WebSocket client that starts runs with large results and never reads an answer:
    the server's sends to it (each run's last event carries its result) block once the
    buffers fill."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.connect(("127.0.0.1", server.port))
    ws = WSConnection(ConnectionType.CLIENT)
    conn.sendall(ws.send(Request(host="127.0.0.1", target="/v1/ws",
                                 extra_headers=[(b"authorization",
                                                 f"Bearer {tenant.key}".encode())])))
    ws.receive_data(conn.recv(65536))
    assert any(isinstance(event, AcceptConnection) for event in ws.events())
    big = json.dumps({"type": "run", "agent": "echo", "input": {"blob": "x" * 255_000}})
    for _ in range(RATE - 1):  # the handshake was one request
        conn.sendall(ws.send(TextMessage(data=big)))

    def ended() -> bool:  # the runs it started (as far as the server read) have ended, and
        with runtime.db.autocommit() as session:  # their results pile up unread
            made, done = session.execute(text(
                "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM runs "
                "WHERE tenant_id = :tenant"), {"tenant": tenant.id}).one()
        return bool(made) and made == done

    wait_for(ended, timeout=30, what="the stalled client's runs to end")
    return conn


def test_a_client_that_stops_reading_never_holds_up_revocations(strict: ApiServer,
                                                               runtime: Runtime) -> None:
    stuck, other = make_tenant(runtime), make_tenant(runtime)
    conn = stalled_socket(strict, runtime, stuck)
    watcher = ws_client(strict, other.key)
    try:
        # When the stalled client's key is revoked (its socket cannot take a close frame)...
        revoke_elsewhere(runtime, stuck)
        # ...the process goes on hearing revocations: another key's socket closes at once
        time.sleep(0.5)
        revoke_elsewhere(runtime, other)
        code, reason, took = closed_within(watcher, 5)
        assert code == 1008 and "revoked" in reason and took < 0.5  # heard, not rechecked
    finally:
        conn.close()
