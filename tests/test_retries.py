"""Retries with backoff, timeouts, dead-lettering and replay, on a real worker."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ApiClient

pytestmark = pytest.mark.usefixtures("worker")

TERMINAL = {"succeeded", "failed", "cancelled", "dead_lettered"}


def statuses(api: ApiClient, run_id: str) -> list[str]:
    items = api.get(f"/v1/runs/{run_id}/events").get_json()["items"]
    return [item["data"]["status"] for item in items if item["type"] == "status"]


def attempts(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/runs/{run_id}/attempts").get_json()["items"]
    return items


def test_flaky_failing_twice_succeeds_on_the_third_attempt(api: ApiClient) -> None:
    run = api.submit("flaky", {"failures": 2})
    done = api.wait(run["id"])
    assert done["status"] == "succeeded"
    assert done["result"] == {"attempt": 3}
    assert done["attempt"] == 3 and done["error"] is None
    tries = attempts(api, run["id"])
    assert [a["outcome"] for a in tries] == ["failed", "failed", "succeeded"]
    assert tries[0]["error"]["type"] == "RetryableError"
    assert "flaky failure 1 of 2" in tries[0]["error"]["message"]
    assert "Traceback" in tries[0]["error"]["traceback"]
    assert statuses(api, run["id"]) == ["queued", "running", "retrying", "running", "retrying",
                                        "running", "succeeded"]


def test_a_retrying_run_shows_when_it_tries_next(api: ApiClient) -> None:
    run = api.submit("flaky", {"failures": 1})
    seen = api.wait(run["id"], statuses={"retrying", "succeeded"})
    if seen["status"] == "retrying":  # the wait is short; it may already be over
        assert seen["next_attempt_at"] is not None
        assert seen["error"]["type"] == "RetryableError"
    events = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
    retrying = [e for e in events if e["data"].get("status") == "retrying"]
    assert retrying and retrying[0]["data"]["next_attempt_at"]
    assert api.wait(run["id"])["status"] == "succeeded"


def test_exhausted_attempts_dead_letter_the_run_with_its_last_error(api: ApiClient) -> None:
    run = api.submit("flaky", {"failures": 5}, max_attempts=2)
    done = api.wait(run["id"])
    assert done["status"] == "dead_lettered"
    assert done["error"]["message"] == "flaky failure 2 of 5"
    assert [a["outcome"] for a in attempts(api, run["id"])] == ["failed", "failed"]
    listed = api.get("/v1/runs?status=dead_lettered").get_json()["items"]
    assert run["id"] in {item["id"] for item in listed}


def test_retryable_error_with_a_delay_is_retried_after_it(api: ApiClient) -> None:
    done = api.wait(api.submit("test.retry_later")["id"])
    assert done["status"] == "succeeded" and done["result"] == {"attempt": 2}


@pytest.mark.parametrize("status", [429, 503])
def test_http_429_and_5xx_from_httpx_are_retried(api: ApiClient, status: int) -> None:
    done = api.wait(api.submit("test.http", {"status": status})["id"])
    assert done["status"] == "succeeded" and done["result"] == {"attempt": 2}


def test_http_4xx_fails_at_once(api: ApiClient) -> None:
    done = api.wait(api.submit("test.http", {"status": 404})["id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "HTTPStatusError"
    assert len(attempts(api, done["id"])) == 1


def test_timeout_is_retried_then_dead_lettered_keeping_progress(api: ApiClient) -> None:
    run = api.submit("test.timeout")
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "dead_lettered"
    assert done["error"]["type"] == "Timeout"
    assert [a["outcome"] for a in attempts(api, run["id"])] == ["timed_out", "timed_out"]
    events = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
    progress = [e["data"]["message"] for e in events if e["type"] == "progress"]
    assert progress == ["attempt 1 started", "attempt 2 started"]


def test_an_agent_ignoring_its_time_limit_is_given_up_on_and_recorded(api: ApiClient) -> None:
    # The soft limit is swallowed; at the hard limit (timeout + grace) the engine stops
    # waiting for it and records the attempt as timed out (its later writes are refused).
    run = api.submit("test.stubborn")
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "dead_lettered"
    assert done["error"]["type"] == "TimeLimitExceeded"
    assert [a["outcome"] for a in attempts(api, run["id"])] == ["timed_out"]


def test_non_retryable_error_fails_at_once_and_replay_queues_it_again(api: ApiClient) -> None:
    run = api.submit("test.fail")
    done = api.wait(run["id"])
    assert done["status"] == "failed"
    assert len(attempts(api, run["id"])) == 1
    # When it is replayed
    response = api.post(f"/v1/runs/{run['id']}/replay")
    assert response.status_code == 202
    assert response.get_json()["status"] == "queued"
    # Then it runs again, and the earlier attempt is kept
    again = api.wait(run["id"], statuses={"failed"}, timeout=30)
    assert again["attempt"] == 2
    assert [a["attempt"] for a in attempts(api, run["id"])] == [1, 2]
    assert statuses(api, run["id"]).count("failed") == 2


def test_replay_gives_a_dead_letter_a_full_attempt_budget(api: ApiClient) -> None:
    run = api.submit("flaky", {"failures": 2}, max_attempts=2)
    assert api.wait(run["id"])["status"] == "dead_lettered"
    api.post(f"/v1/runs/{run['id']}/replay")
    done = api.wait(run["id"], statuses={"succeeded"}, timeout=30)
    assert done["result"] == {"attempt": 3}


def test_replay_of_a_run_that_did_not_fail_is_409(api: ApiClient) -> None:
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    response = api.post(f"/v1/runs/{run['id']}/replay")
    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"


def test_replay_of_another_tenants_run_is_404(api: ApiClient, other_api: ApiClient) -> None:
    run = api.wait(api.submit("test.fail")["id"])
    assert other_api.post(f"/v1/runs/{run['id']}/replay").status_code == 404
