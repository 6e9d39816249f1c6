"""The WebSocket /v1/ws over a real server: submit, follow, resume, cancel, refuse."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from simple_websocket import Client, ConnectionError

from tests.conftest import ApiClient, Tenant
from tests.harness import ApiServer, wait_for
from worker.base.bus import TENANT_PREFIX
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


class Socket:
    """A test's WebSocket client that speaks JSON."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def send(self, message: dict[str, Any] | str) -> None:
        self.client.send(message if isinstance(message, str) else json.dumps(message))

    def receive(self, timeout: float = 15) -> dict[str, Any]:
        raw = self.client.receive(timeout=timeout)
        assert raw is not None, "no frame within the timeout"
        frame: dict[str, Any] = json.loads(raw)
        return frame

    def until_terminal(self, run_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = self.receive(timeout=deadline - time.monotonic())
            frames.append(frame)
            if (frame["type"] == "event" and frame["run_id"] == run_id
                    and frame["event"] == "status"
                    and frame["data"]["status"] in {"succeeded", "failed", "cancelled",
                                                    "dead_lettered"}):
                return frames
        raise AssertionError(f"no terminal event for {run_id}: {frames}")


def ws_url(server: ApiServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/ws"


@pytest.fixture
def ws(api_server: ApiServer, tenant: Tenant) -> Iterator[Socket]:
    client = Client.connect(ws_url(api_server),
                            headers={"Authorization": f"Bearer {tenant.key}"})
    yield Socket(client)
    client.close()


def test_submit_over_the_socket_and_receive_its_events(ws: Socket) -> None:
    ws.send({"type": "run", "agent": "test.steps", "input": {"count": 2, "pause_s": 0.05},
             "ref": "r1"})
    accepted = ws.receive()
    assert accepted["type"] == "accepted" and accepted["ref"] == "r1"
    run_id = accepted["run_id"]
    frames = ws.until_terminal(run_id)
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert [f["event"] for f in frames] == ["status", "status", "progress", "progress",
                                            "status"]
    assert frames[-1]["data"]["result"] == {"steps": 2}


def test_a_malformed_frame_gets_an_error_and_the_socket_keeps_working(ws: Socket) -> None:
    ws.send("{not json")
    assert ws.receive()["code"] == "bad_message"
    ws.send({"type": "launch", "ref": 7})
    error = ws.receive()
    assert error["type"] == "error" and error["code"] == "bad_message" and error["ref"] == 7
    ws.send({"type": "run", "agent": "nope", "ref": "x"})
    unknown = ws.receive()
    assert unknown["code"] == "invalid" and "demo.research" in unknown["message"]
    ws.send({"type": "run", "agent": "echo", "input": {"ok": True}, "ref": "ok"})
    accepted = ws.receive()
    assert accepted["type"] == "accepted" and accepted["ref"] == "ok"
    assert ws.until_terminal(accepted["run_id"])[-1]["data"]["result"] == {"ok": True}


def test_subscribe_with_after_continues_where_a_dropped_client_stopped(
    api_server: ApiServer, tenant: Tenant, api: ApiClient
) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "test.emit",
                                             "input": {"count": 3}}).get_json()
    client = Client.connect(ws_url(api_server), headers={"Authorization": f"Bearer {tenant.key}"})
    socket = Socket(client)
    socket.send({"type": "subscribe", "run_id": run["id"], "after": 3})
    frames = socket.until_terminal(run["id"])
    client.close()
    assert [f["seq"] for f in frames] == [4, 5, 6]


def test_one_socket_follows_many_runs(ws: Socket) -> None:
    for ref in ("a", "b", "c"):
        ws.send({"type": "run", "agent": "echo", "input": {"ref": ref}, "ref": ref})
    finished: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while len(finished) < 3 and time.monotonic() < deadline:
        frame = ws.receive()
        if frame["type"] == "event" and frame["data"].get("status") == "succeeded":
            finished[frame["data"]["result"]["ref"]] = frame["run_id"]
    assert set(finished) == {"a", "b", "c"}


def test_auth_by_subprotocol_for_browsers(api_server: ApiServer, tenant: Tenant) -> None:
    client = Client.connect(ws_url(api_server), subprotocols=[f"bearer.{tenant.key}"])
    assert client.subprotocol == f"bearer.{tenant.key}"
    socket = Socket(client)
    socket.send({"type": "run", "agent": "echo", "ref": 1})
    assert socket.receive()["type"] == "accepted"
    client.close()


@pytest.mark.parametrize("credentials", [
    {},
    {"headers": {"Authorization": "Bearer aq_wrong"}},
    {"subprotocols": ["bearer.aq_wrong"]},
])
def test_the_handshake_is_refused_without_a_valid_key(api_server: ApiServer,
                                                      credentials: dict[str, Any]) -> None:
    with pytest.raises(ConnectionError) as refused:
        Client.connect(ws_url(api_server), **credentials)
    assert refused.value.status_code == 401


def test_a_key_in_the_query_string_is_refused(api_server: ApiServer, tenant: Tenant) -> None:
    with pytest.raises(ConnectionError):
        Client.connect(ws_url(api_server) + f"?token={tenant.key}")


def test_another_tenants_run_gets_an_error_frame(ws: Socket, other_api: ApiClient) -> None:
    theirs = other_api.submit("echo")
    ws.send({"type": "subscribe", "run_id": theirs["id"], "ref": "s"})
    error = ws.receive()
    assert error["type"] == "error" and error["code"] == "not_found" and error["ref"] == "s"
    ws.send({"type": "cancel", "run_id": theirs["id"]})
    assert ws.receive()["code"] == "not_found"


def test_cancel_over_the_socket(ws: Socket) -> None:
    ws.send({"type": "run", "agent": "sleep", "input": {"seconds": 20}, "ref": "long"})
    run_id = ws.receive()["run_id"]
    while ws.receive()["data"].get("status") != "running":
        pass
    ws.send({"type": "cancel", "run_id": run_id})
    frames = ws.until_terminal(run_id, timeout=10)
    assert frames[-1]["data"]["status"] == "cancelled"


def test_subscribe_to_every_run_of_the_tenant(ws: Socket, api: ApiClient,
                                              other_api: ApiClient, runtime: Runtime) -> None:
    ws.send({"type": "subscribe", "run_id": "*", "ref": "all"})
    channel = TENANT_PREFIX + api.tenant.id  # no frame confirms it; Redis does
    wait_for(lambda: runtime.bus.redis.pubsub_numsub(channel)[0][1] >= 1,
             what="the tenant subscription")
    other_api.post("/v1/runs?wait=10", json={"agent": "echo"})  # not ours: never seen
    run = api.post("/v1/runs?wait=10", json={"agent": "echo", "input": {"all": 1}}).get_json()
    frame = ws.receive()
    assert frame["type"] == "event" and frame["run_id"] == run["id"]
    assert frame["data"]["status"] == "succeeded" and frame["data"]["result"] == {"all": 1}


def test_a_read_only_key_may_follow_but_not_submit(api_server: ApiServer, api: ApiClient,
                                                   runtime: Any) -> None:
    from worker.access import keys

    with runtime.db.transaction() as session:
        reader, _ = keys.issue_key(session, tenant_id=api.tenant.id, name="r",
                                   scopes=("runs:read",))
    client = Client.connect(ws_url(api_server), headers={"Authorization": f"Bearer {reader}"})
    socket = Socket(client)
    socket.send({"type": "run", "agent": "echo", "ref": "no"})
    refused = socket.receive()
    assert refused["code"] == "forbidden" and refused["ref"] == "no"
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    socket.send({"type": "subscribe", "run_id": run["id"]})
    assert socket.until_terminal(run["id"])[-1]["data"]["status"] == "succeeded"
    client.close()
