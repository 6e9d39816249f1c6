"""Submitting, reading and listing runs over the API, executed by a real worker."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ApiClient
from tests.harness import Worker, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def test_submit_runs_to_success_and_shows_each_status(api: ApiClient) -> None:
    # When a research run is submitted
    response = api.post("/v1/runs", json={"agent": "demo.research",
                                           "input": {"question": "Why is the sky blue?",
                                                     "phase_s": 0.2}})
    # Then it is accepted at once, queued, with its location
    assert response.status_code == 202
    run = response.get_json()
    assert run["status"] == "queued"
    assert response.headers["Location"] == f"/v1/runs/{run['id']}"
    # And polling shows it running, then succeeded with an answer and citations
    running = api.wait(run["id"], statuses={"running", "succeeded"})
    assert running["started_at"] is not None
    done = api.wait(run["id"])
    assert done["status"] == "succeeded"
    assert "scatter" in done["result"]["answer"]
    assert done["result"]["citations"][0]["title"] == "Rayleigh scattering"
    assert done["attempt"] == 1 and done["finished_at"] is not None


def test_unfinished_run_says_when_to_poll_again(api: ApiClient) -> None:
    run = api.submit("sleep", {"seconds": 2})
    response = api.get(f"/v1/runs/{run['id']}")
    assert response.headers["Retry-After"] == "2"
    api.wait(run["id"])
    assert "Retry-After" not in api.get(f"/v1/runs/{run['id']}").headers


def test_wait_returns_the_finished_run_in_one_call(api: ApiClient) -> None:
    response = api.post("/v1/runs?wait=10", json={"agent": "echo", "input": {"hello": "world"}})
    assert response.status_code == 200
    run = response.get_json()
    assert run["status"] == "succeeded"
    assert run["result"] == {"hello": "world"}


def test_wait_answers_202_when_the_run_outlasts_it(api: ApiClient) -> None:
    started = time.monotonic()
    response = api.post("/v1/runs?wait=1", json={"agent": "sleep", "input": {"seconds": 5}})
    elapsed = time.monotonic() - started
    assert response.status_code == 202
    assert response.get_json()["status"] in {"queued", "running"}
    assert 1.0 <= elapsed < 4.0


@pytest.mark.parametrize("wait", ["31", "-1", "soon"])
def test_wait_out_of_range_is_422(api: ApiClient, wait: str) -> None:
    response = api.post(f"/v1/runs?wait={wait}", json={"agent": "echo"})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == "wait"


def test_failed_agent_records_the_error(api: ApiClient) -> None:
    run = api.submit("test.fail", {"message": "no such ticket"})
    done = api.wait(run["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"type": "ValueError", "message": "no such ticket"}
    attempts = api.get(f"/v1/runs/{run['id']}/attempts").get_json()["items"]
    assert len(attempts) == 1
    assert attempts[0]["outcome"] == "failed"
    assert "ValueError: no such ticket" in attempts[0]["error"]["traceback"]


def test_result_that_is_not_json_fails_the_run_with_a_clear_error(api: ApiClient) -> None:
    done = api.wait(api.submit("test.unserialisable")["id"])
    assert done["status"] == "failed"
    assert "not JSON-serialisable" in done["error"]["message"]


def test_user_agent_from_agentq_agents_runs(api: ApiClient) -> None:
    # Given an agent registered by a module named in AGENTQ_AGENTS (tests.agents)
    run = api.submit("support.triage", {"text": "Where is my refund?"})
    done = api.wait(run["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {"label": "billing", "run_id": run["id"], "attempt": 1}


def test_events_record_status_changes_and_progress_in_order(api: ApiClient) -> None:
    run = api.submit("test.emit", {"count": 3})
    api.wait(run["id"])
    items = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
    assert [item["seq"] for item in items] == [1, 2, 3, 4, 5, 6]
    assert [(item["type"], item["data"].get("status")) for item in items] == [
        ("status", "queued"), ("status", "running"), ("progress", None), ("progress", None),
        ("progress", None), ("status", "succeeded"),
    ]
    assert items[-1]["data"]["result"] == {"emitted": 3}
    later = api.get(f"/v1/runs/{run['id']}/events?after=4").get_json()["items"]
    assert [item["seq"] for item in later] == [5, 6]


def test_list_is_newest_first_with_a_cursor(api: ApiClient) -> None:
    ids = [api.submit("echo", {"n": i})["id"] for i in range(5)]
    first = api.get("/v1/runs?limit=2").get_json()
    assert [run["id"] for run in first["items"]] == ids[::-1][:2]
    second = api.get(f"/v1/runs?limit=2&cursor={first['next_cursor']}").get_json()
    third = api.get(f"/v1/runs?limit=2&cursor={second['next_cursor']}").get_json()
    assert [run["id"] for run in second["items"] + third["items"]] == ids[::-1][2:]
    assert third["next_cursor"] is None


def test_list_filters_by_agent_and_status(api: ApiClient) -> None:
    echo = api.submit("echo")["id"]
    failing = api.submit("test.fail")["id"]
    api.wait(echo), api.wait(failing)
    by_agent = api.get("/v1/runs?agent=test.fail").get_json()["items"]
    assert [run["id"] for run in by_agent] == [failing]
    by_status = api.get("/v1/runs?status=succeeded").get_json()["items"]
    assert [run["id"] for run in by_status] == [echo]
    assert api.get("/v1/runs?status=exploded").status_code == 422
    assert api.get("/v1/runs?cursor=%%%").status_code == 422


def test_session_and_metadata_are_kept(api: ApiClient) -> None:
    run = api.submit("echo", session_id="chat-42", metadata={"user": "u1", "priority": 2})
    assert run["session_id"] == "chat-42"
    assert run["metadata"] == {"user": "u1", "priority": 2}
    listed = api.get("/v1/runs?session_id=chat-42").get_json()["items"]
    assert [item["id"] for item in listed] == [run["id"]]


def test_agent_policy_and_overrides_apply(api: ApiClient) -> None:
    default = api.submit("echo")
    assert default["timeout_s"] == 30 and default["max_attempts"] == 3
    custom = api.submit("echo", timeout_s=5, max_attempts=7)
    assert custom["timeout_s"] == 5 and custom["max_attempts"] == 7


def test_worker_logs_a_json_line_per_run_with_its_run_id(api: ApiClient, worker: Worker) -> None:
    run = api.submit("echo", {"log": "me"})
    api.wait(run["id"])

    def logged() -> bool:
        return any(f'"run_id": "{run["id"]}"' in line and '"outcome": "succeeded"' in line
                   and '"duration_ms"' in line for line in worker.output().splitlines())

    wait_for(logged, timeout=5, what="the worker's log line for the run")


def test_a_high_priority_run_is_not_stuck_behind_a_low_backlog(api: ApiClient) -> None:
    low = [api.submit("sleep", {"seconds": 0.3}, priority="low")["id"] for _ in range(20)]
    high = api.submit("echo", {"urgent": True}, priority="high")
    assert high["priority"] == "high"
    done = api.wait(high["id"], timeout=30)
    last_low = api.wait(low[-1], timeout=60)
    assert done["finished_at"] < last_low["started_at"]


def test_two_replays_at_once_queue_the_run_once(api: ApiClient) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    for _ in range(8):  # a race: try it a few times over
        # Given a cancelled run (which, replayed, waits on a queue no worker reads)
        failed = api.submit("test.parked")
        assert api.post(f"/v1/runs/{failed['id']}/cancel").get_json()["status"] == "cancelled"
        start = Barrier(2)

        def replay(_: int, run_id: str = failed["id"], start: Barrier = start) -> int:
            start.wait(timeout=5)
            code: int = api.post(f"/v1/runs/{run_id}/replay").status_code
            return code

        with ThreadPoolExecutor(2) as pool:
            codes = sorted(pool.map(replay, range(2)))
        assert codes == [202, 409], codes
        events = api.get(f"/v1/runs/{failed['id']}/events").get_json()["items"]
        assert sum(e["data"].get("replay", False) for e in events) == 1
