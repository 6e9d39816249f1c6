"""Sessions and double-texting: state per conversation, one run at a time, reject, interrupt."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.agents import ORDER_QUEUE
from tests.conftest import ApiClient, Services
from tests.harness import Worker
from worker.base.runtime import Runtime
from worker.runs import sessions

pytestmark = pytest.mark.usefixtures("worker")
_names = itertools.count(1)


def test_two_tenants_sessions_never_see_each_others_state(api: ApiClient,
                                                          other_api: ApiClient) -> None:
    # Given two tenants using the same session id, concurrently
    def converse(client: ApiClient, who: str) -> list[dict[str, Any]]:
        return [client.post("/v1/runs?wait=15", json={
            "agent": "test.chat", "session_id": "chat-1",
            "input": {"message": f"{who}-{i}"}}).get_json() for i in range(3)]

    with ThreadPoolExecutor(2) as pool:
        ours, theirs = pool.map(converse, (api, other_api), ("ours", "theirs"))
    # Then each sees only its own history
    assert ours[-1]["result"]["history"] == ["ours-0", "ours-1", "ours-2"]
    assert theirs[-1]["result"]["history"] == ["theirs-0", "theirs-1", "theirs-2"]
    state = api.get("/v1/sessions/chat-1").get_json()
    assert state["state"] == {"history": ["ours-0", "ours-1", "ours-2"]}
    assert state["version"] == 3
    assert state["runs"] == [run["id"] for run in ours]


def test_forgetting_a_session(api: ApiClient, other_api: ApiClient) -> None:
    api.post("/v1/runs?wait=15", json={"agent": "test.chat", "session_id": "forget-me",
                                       "input": {"message": "hello"}})
    assert other_api.get("/v1/sessions/forget-me").status_code == 404
    assert other_api.client.delete("/v1/sessions/forget-me",
                                   headers=other_api.headers).status_code == 404
    assert api.client.delete("/v1/sessions/forget-me", headers=api.headers).status_code == 204
    assert api.get("/v1/sessions/forget-me").status_code == 404
    fresh = api.post("/v1/runs?wait=15", json={"agent": "test.chat", "session_id": "forget-me",
                                               "input": {"message": "again"}}).get_json()
    assert fresh["result"]["history"] == ["again"]


def test_a_stale_save_is_refused(runtime: Runtime, api: ApiClient) -> None:
    api.post("/v1/runs?wait=15", json={"agent": "test.chat", "session_id": "race",
                                       "input": {"message": "one"}})
    with runtime.db.transaction() as session:
        _, version = sessions.load(session, tenant_id=api.tenant.id, session_id="race")
    with runtime.db.transaction() as session:
        sessions.save(session, tenant_id=api.tenant.id, session_id="race",
                      state={"history": ["winner"]}, version=version)
    with pytest.raises(sessions.SessionConflict), runtime.db.transaction() as session:
        sessions.save(session, tenant_id=api.tenant.id, session_id="race",
                      state={"history": ["loser"]}, version=version)


@pytest.fixture
def order_workers(env: dict[str, str], services: Services,
                  runtime: Runtime) -> Iterator[Callable[[int], list[Worker]]]:
    started: list[Worker] = []

    def start(count: int) -> list[Worker]:
        for _ in range(count):
            name = f"order{next(_names)}"
            process = Worker(env=env, log=services.root / f"{name}.log", name=name,
                             concurrency=2, queues=ORDER_QUEUE)
            process.start()
            started.append(process)
        for process in started:
            process.wait_ready(runtime.celery)
        return started

    yield start
    for process in started:
        process.stop(timeout=5)


def test_enqueue_runs_a_sessions_runs_in_order_while_others_run_in_parallel(
    api: ApiClient, order_workers: Callable[[int], list[Worker]]
) -> None:
    order_workers(3)
    # Given 5 runs in session A and 5 in session B, submitted back to back
    a = [api.submit("test.ordered", {"seconds": 0.3}, session_id="A")["id"] for _ in range(5)]
    b = [api.submit("test.ordered", {"seconds": 0.3}, session_id="B")["id"] for _ in range(5)]
    done = {run_id: api.wait(run_id, timeout=60)["result"] for run_id in a + b}
    for session in (a, b):
        spans = [(done[run_id]["began"], done[run_id]["ended"]) for run_id in session]
        # Then a session's runs never overlap, and run in submission order
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans
    # And the two sessions ran side by side
    a_span = (done[a[0]]["began"], done[a[-1]]["ended"])
    b_span = (done[b[0]]["began"], done[b[-1]]["ended"])
    assert b_span[0] < a_span[1] and a_span[0] < b_span[1]


def test_reject_refuses_while_a_run_is_going(api: ApiClient) -> None:
    going = api.submit("sleep", {"seconds": 5}, session_id="busy")
    response = api.post("/v1/runs", json={"agent": "echo", "session_id": "busy",
                                          "multitask": "reject"})
    assert response.status_code == 409
    body = response.get_json()
    assert body["run_id"] == going["id"] and going["id"] in body["detail"]
    api.post(f"/v1/runs/{going['id']}/cancel")


def test_interrupt_cancels_the_run_going_and_runs_after_it_stops(api: ApiClient) -> None:
    old = api.submit("sleep", {"seconds": 30}, session_id="talky")
    api.wait(old["id"], statuses={"running"})
    new = api.submit("echo", {"second": "message"}, session_id="talky", multitask="interrupt")
    assert api.wait(old["id"], timeout=15)["status"] == "cancelled"
    done = api.wait(new["id"], timeout=15)
    assert done["status"] == "succeeded"
    assert done["started_at"] >= api.run(old["id"])["finished_at"]


def test_enqueue_waits_behind_a_run_that_is_going(api: ApiClient) -> None:
    first = api.submit("sleep", {"seconds": 1.5}, session_id="queue-up")
    second = api.submit("echo", {"n": 2}, session_id="queue-up")
    assert api.run(second["id"])["status"] == "queued"
    done_first, done_second = api.wait(first["id"]), api.wait(second["id"], timeout=20)
    assert done_second["started_at"] >= done_first["finished_at"]
