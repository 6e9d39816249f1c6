"""Cancelling runs: before they start, while they run, and when they will not stop."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import ApiClient
from tests.harness import holds

pytestmark = pytest.mark.usefixtures("worker")


def cancel(api: ApiClient, run_id: str) -> Any:
    return api.post(f"/v1/runs/{run_id}/cancel")


def tries(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/runs/{run_id}/attempts").get_json()["items"]
    return items


def test_a_queued_run_is_cancelled_at_once_and_never_starts(api: ApiClient) -> None:
    run = api.submit("test.parked")  # nobody consumes its queue
    response = cancel(api, run["id"])
    assert response.status_code == 202
    assert response.get_json()["status"] == "cancelled"
    done = api.run(run["id"])
    assert done["status"] == "cancelled" and done["finished_at"] is not None
    assert tries(api, run["id"]) == []


def test_a_retrying_run_never_starts_again(api: ApiClient) -> None:
    run = api.submit("test.retry_later", {"delay_s": 1.5})
    api.wait(run["id"], statuses={"retrying"})
    assert cancel(api, run["id"]).get_json()["status"] == "cancelled"
    # Past the retry's time (1.5 s), when a second attempt would have started
    holds(lambda: api.run(run["id"])["status"] == "cancelled"
          and len(tries(api, run["id"])) == 1, seconds=2.5, interval=0.25,
          what="one attempt, cancelled")


def test_a_running_agent_sees_the_request_and_stops(api: ApiClient) -> None:
    run = api.submit("sleep", {"seconds": 30})
    api.wait(run["id"], statuses={"running"})
    asked = time.monotonic()
    response = cancel(api, run["id"])
    assert response.status_code == 202 and response.get_json()["status"] == "running"
    done = api.wait(run["id"], timeout=10)
    assert done["status"] == "cancelled"
    assert time.monotonic() - asked < 2  # ctx.cancelled turned true within a second
    assert done["result"]["slept"] < 30  # what it returned when it stopped is kept
    assert [t["outcome"] for t in tries(api, run["id"])] == ["cancelled"]


def test_an_agent_ignoring_the_flag_is_interrupted_after_the_grace(api: ApiClient) -> None:
    run = api.submit("test.deaf")
    api.wait(run["id"], statuses={"running"})
    cancel(api, run["id"])
    done = api.wait(run["id"], timeout=15)  # grace is 1 s in the tests
    assert done["status"] == "cancelled"
    assert "did not stop within the grace" in done["error"]["message"]


def test_an_agent_that_swallows_the_interrupt_is_given_up_on(api: ApiClient) -> None:
    run = api.submit("test.stubborn_cancel")
    api.wait(run["id"], statuses={"running"})
    cancel(api, run["id"])
    done = api.wait(run["id"], timeout=20)
    assert done["status"] == "cancelled"
    assert "given up on" in done["error"]["message"]
    # Its slot is free again: the worker goes on serving
    assert api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()["status"] == \
        "succeeded"


def test_cancel_twice_is_harmless(api: ApiClient) -> None:
    run = api.submit("test.parked")
    assert cancel(api, run["id"]).status_code == 202
    assert cancel(api, run["id"]).status_code == 202
    events = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]


def test_cancel_after_the_run_finished_is_409(api: ApiClient) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    response = cancel(api, run["id"])
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"


def test_cancel_of_another_tenants_run_is_404(api: ApiClient, other_api: ApiClient) -> None:
    run = other_api.submit("test.parked")
    assert cancel(api, run["id"]).status_code == 404
    assert other_api.run(run["id"])["status"] == "queued"


def test_a_run_asked_to_stop_is_not_retried_after_its_attempt_fails(api: ApiClient) -> None:
    done = api.wait(api.submit("test.cancelled_then_failing")["id"], timeout=20)
    assert done["status"] == "cancelled" and done["attempt"] == 1
    assert "not retried" in done["error"]["message"]
