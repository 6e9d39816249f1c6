"""Server-Sent Events over a real HTTP server: order, resume, keep-alive, the end."""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import ApiClient, Services, Tenant
from tests.harness import ApiServer, sse_events, wait_for

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
def http(api_server: ApiServer, tenant: Tenant) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {tenant.key}"}
    with httpx.Client(base_url=api_server.url, headers=headers, timeout=30) as client:
        yield client


def stream(http: httpx.Client, run_id: str, *, limit: int | None = None,
           headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], Any]:
    """Read the run's SSE stream: its events (up to ``limit``) and the response."""
    got: list[dict[str, Any]] = []
    with http.stream("GET", f"/v1/runs/{run_id}/events",
                     headers={"Accept": "text/event-stream", **(headers or {})}) as response:
        assert response.status_code == 200, response.read()
        for message in sse_events(response.iter_lines()):
            if "event" in message:
                got.append({"id": int(message["id"]), "event": message["event"],
                            "data": json.loads(message["data"])})
                if limit is not None and len(got) >= limit:
                    break
    return got, response


def test_events_arrive_in_order_and_the_stream_ends_after_the_terminal_one(
    http: httpx.Client, api: ApiClient
) -> None:
    run = api.submit("test.steps", {"count": 4, "pause_s": 0.1})
    got, response = stream(http, run["id"])
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers
    assert [e["id"] for e in got] == list(range(1, len(got) + 1))
    assert [e["event"] for e in got] == ["status", "status"] + ["progress"] * 4 + ["status"]
    assert got[-1]["data"]["status"] == "succeeded"
    assert got[-1]["data"]["result"] == {"steps": 4}
    assert got[2]["data"]["message"] == "attempt 1 step 1"


def test_the_stream_starts_with_a_retry_hint(http: httpx.Client, api: ApiClient) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    with http.stream("GET", f"/v1/runs/{run['id']}/events",
                     headers={"Accept": "text/event-stream"}) as response:
        first = next(sse_events(response.iter_lines()))
    assert first == {"retry": "2000"}


def test_a_finished_runs_stream_replays_and_ends_at_once(
    http: httpx.Client, api: ApiClient
) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "echo", "input": {"x": 1}}).get_json()
    assert run["status"] == "succeeded"
    started = time.monotonic()
    got, _ = stream(http, run["id"])
    assert time.monotonic() - started < 2
    assert [e["data"].get("status") for e in got] == ["queued", "running", "succeeded"]
    # Resuming after the end: nothing more, and the stream still ends
    rest, _ = stream(http, run["id"], headers={"Last-Event-ID": str(got[-1]["id"])})
    assert rest == []


def test_resume_after_a_drop_misses_nothing_and_repeats_nothing(
    http: httpx.Client, api: ApiClient
) -> None:
    # A run that is still going, and retries halfway (a new attempt's events keep the seq)
    run = api.submit("test.steps", {"count": 6, "pause_s": 0.15, "fail_first": True})
    first, _ = stream(http, run["id"], limit=4)  # the client drops after event 4
    assert [e["id"] for e in first] == [1, 2, 3, 4]
    wait_for(lambda: len(http.get(f"/v1/runs/{run['id']}/events").json()["items"]) > 5,
             what="events while the client is away")
    rest, _ = stream(http, run["id"], headers={"Last-Event-ID": "4"})
    seqs = [e["id"] for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    statuses = [e["data"]["status"] for e in first + rest if e["event"] == "status"]
    assert statuses == ["queued", "running", "retrying", "running", "succeeded"]


def test_after_query_resumes_too(http: httpx.Client, api: ApiClient) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    with http.stream("GET", f"/v1/runs/{run['id']}/events?after=2",
                     headers={"Accept": "text/event-stream"}) as response:
        ids = [m["id"] for m in sse_events(response.iter_lines()) if "id" in m]
    assert ids == ["3"]


def test_a_quiet_stream_sends_keep_alive_comments(http: httpx.Client, api: ApiClient) -> None:
    run = api.submit("sleep", {"seconds": 3})
    comments = 0
    with http.stream("GET", f"/v1/runs/{run['id']}/events",
                     headers={"Accept": "text/event-stream"}) as response:
        for message in sse_events(response.iter_lines()):
            comments += "comment" in message
            if message.get("event") == "status" and '"succeeded"' in message["data"]:
                break
    assert comments >= 1  # AGENTQ_STREAM_KEEPALIVE_S is 1 s in the tests


def test_json_listing_is_the_default(http: httpx.Client, api: ApiClient) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    response = http.get(f"/v1/runs/{run['id']}/events")
    assert response.headers["content-type"] == "application/json"
    assert [item["seq"] for item in response.json()["items"]] == [1, 2, 3]


def test_another_tenants_stream_is_404(http: httpx.Client, other_api: ApiClient) -> None:
    run = other_api.submit("echo")
    response = http.get(f"/v1/runs/{run['id']}/events", headers={"Accept": "text/event-stream"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_a_bad_last_event_id_is_422(http: httpx.Client, api: ApiClient) -> None:
    run = api.submit("echo")
    response = http.get(f"/v1/runs/{run['id']}/events",
                        headers={"Accept": "text/event-stream", "Last-Event-ID": "abc"})
    assert response.status_code == 422


def test_an_api_process_past_1024_descriptors_still_reaches_postgres(
        env: dict[str, str], services: Services, api: ApiClient, tmp_path: Any) -> None:
    """A thousand streams put an API process's new database connections past descriptor
    1,024, where ``select()`` cannot go: every request must still be answered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"needs 4,096 open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    server = ApiServer(env=env, log=tmp_path / "api.log",
                       extra_args=("--worker-connections", "2000"))
    server.start()
    idle: list[socket.socket] = []
    try:
        server.wait_ready()
        for _ in range(1100):  # held open by the server, as streams would be
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        run = api.submit("echo")
        headers = {"Authorization": f"Bearer {api.tenant.key}"}
        # Concurrent requests: the pool opens new connections, each past 1,024.
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client, \
                ThreadPoolExecutor(30) as pool:
            statuses = list(pool.map(
                lambda _: client.get(f"/v1/runs/{run['id']}").status_code, range(60)))
        assert statuses == [200] * 60, server.output()[-3000:]
    finally:
        for sock in idle:
            sock.close()
        server.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
