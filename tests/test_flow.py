"""Flow control on real workers: delayed and expiring runs."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from tests.conftest import TERMINAL_STATUSES, ApiClient, StartWorker
from tests.harness import Receiver, wait_for
from worker.base.models import Run
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


def statuses(api: ApiClient, run_id: str) -> list[str]:
    items = api.get(f"/v1/runs/{run_id}/events").get_json()["items"]
    return [e["data"]["status"] for e in items if e["type"] == "status"]


def test_a_delayed_run_is_scheduled_until_its_time_then_runs(api: ApiClient) -> None:
    submitted = time.time()
    run = api.submit("echo", {"x": 1}, delay_s=1.5)
    assert run["status"] == "scheduled" and run["start_at"] is not None
    start_at = datetime.fromisoformat(run["start_at"].replace("Z", "+00:00"))
    assert 1.3 < start_at.timestamp() - submitted < 2.5
    assert api.get("/v1/runs?status=scheduled").get_json()["items"][0]["id"] == run["id"]
    done = api.wait(run["id"])
    assert done["status"] == "succeeded"
    started = datetime.fromisoformat(done["started_at"].replace("Z", "+00:00"))
    assert started >= start_at  # not a moment before its time
    assert statuses(api, run["id"]) == ["scheduled", "running", "succeeded"]
    first = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"][0]
    assert first["data"]["start_at"] == run["start_at"]


def test_a_run_due_later_than_a_message_may_wait_is_queued_by_the_sweeper(
        api: ApiClient, runtime: Runtime) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)
    run = api.submit("echo", {}, start_at=later.isoformat())
    assert run["status"] == "scheduled"
    with runtime.db.transaction() as session:  # two hours pass
        session.execute(update(Run).where(Run.id == run["id"])
                        .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert api.wait(run["id"])["status"] == "succeeded"
    assert statuses(api, run["id"]) == ["scheduled", "queued", "running", "succeeded"]


def test_a_start_at_in_the_past_starts_now(api: ApiClient) -> None:
    run = api.submit("echo", {}, start_at="2020-01-01T00:00:00Z")
    assert run["status"] == "queued"
    assert api.wait(run["id"])["status"] == "succeeded"


def test_a_run_not_started_within_its_ttl_expires_with_a_webhook(
        api: ApiClient, receiver: Receiver) -> None:
    assert api.post("/v1/webhook-secret").status_code == 201
    # the session's first run waits for a person: the second cannot start before it ends
    first = api.submit("test.wait", {}, session_id="ttl-session")
    api.wait(first["id"], statuses={"waiting"})
    second = api.submit("echo", {}, session_id="ttl-session", ttl_s=1,
                        webhook_url=receiver.url + "/expired")
    assert second["expires_at"] is not None
    ended = api.wait(second["id"])
    assert ended["status"] == "expired" and ended["started_at"] is None
    assert ended["error"]["type"] == "Expired" and "ttl_s" in ended["error"]["message"]
    [told] = wait_for(lambda: receiver.at("/expired"), what="the run.expired delivery")
    assert json.loads(told.body)["type"] == "run.expired"
    # expired is an end: the session's next run is not held behind it
    api.post(f"/v1/runs/{first['id']}/cancel")
    assert api.wait(api.submit("echo", {}, session_id="ttl-session")["id"])["status"] \
        == "succeeded"
    # an expired run can be replayed, and then it runs
    replayed = api.post(f"/v1/runs/{second['id']}/replay")
    assert replayed.status_code == 202, replayed.get_json()
    assert api.wait(second["id"])["status"] == "succeeded"


def test_a_delayed_run_with_a_ttl_counts_it_from_its_start(api: ApiClient) -> None:
    run = api.submit("echo", {}, delay_s=1, ttl_s=30)
    start = datetime.fromisoformat(run["start_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(run["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - start).total_seconds() - 30) < 0.01
    assert api.wait(run["id"])["status"] == "succeeded"


def test_a_scheduled_run_can_be_cancelled_and_never_starts(api: ApiClient) -> None:
    run = api.submit("echo", {}, delay_s=60)
    cancelled = api.post(f"/v1/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.get_json()["status"] == "cancelled"
    assert api.run(run["id"])["started_at"] is None


@pytest.mark.parametrize("fields, problem", [
    ({"delay_s": 5, "start_at": "2030-01-01T00:00:00Z"}, "not both"),
    ({"start_at": "2030-01-01T00:00:00"}, "timezone"),
    ({"delay_s": -1}, "greater than or equal"),
    ({"ttl_s": 0}, "greater than 0"),
    ({"delay_s": 10**9}, "less than or equal"),
])
def test_bad_timing_is_refused_saying_what_to_fix(api: ApiClient, fields: dict[str, object],
                                                  problem: str) -> None:
    response = api.post("/v1/runs", json={"agent": "echo", **fields})
    assert response.status_code == 422
    assert problem in json.dumps(response.get_json())


def test_terminal_statuses_include_expired() -> None:
    assert "expired" in TERMINAL_STATUSES


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                   key=lambda edge: (edge[0], edge[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_a_concurrency_key_runs_at_most_its_max_while_other_keys_flow(
        api: ApiClient, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=10)
    crash_worker(concurrency=10)  # two workers claiming at once: the limit is Postgres's
    hot = [api.submit("test.limited", {"customer": "acme", "pause_s": 0.3})
           for _ in range(20)]
    others = [api.submit("test.limited", {"customer": f"c{n}", "pause_s": 0.3})
              for n in range(10)]
    waiting = api.run(hot[-1]["id"])
    if waiting["status"] == "queued":
        assert "concurrency key 'input.customer=acme'" in (waiting["waiting_for"] or "")
    assert waiting["concurrency_key"] == "input.customer=acme"
    done = [api.wait(run["id"], timeout=60) for run in hot + others]
    assert all(run["status"] == "succeeded" for run in done)
    spans = [(run["result"]["start"], run["result"]["end"]) for run in done[:20]]
    assert most_at_once(spans) <= 2
    assert most_at_once(spans) == 2  # and it did use both
    # the other customers' runs did not wait for acme's: they all ended before acme's last
    assert max(run["result"]["end"] for run in done[20:]) < max(end for _, end in spans)


def test_keep_latest_and_cancel_in_progress(api: ApiClient, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=10)
    first = api.submit("test.latest", {"customer": "k", "n": 1, "pause_s": 1.0})
    api.wait(first["id"], statuses={"running"})
    middle = [api.submit("test.latest", {"customer": "k", "n": n}) for n in (2, 3)]
    last = api.submit("test.latest", {"customer": "k", "n": 4})
    assert api.wait(first["id"])["status"] == "succeeded"  # the one going went on
    assert [api.wait(run["id"])["status"] for run in middle] == ["cancelled", "cancelled"]
    assert api.wait(last["id"])["result"] == {"n": 4}

    going = api.submit("test.newest", {"customer": "k", "n": 1})
    api.wait(going["id"], statuses={"running"})
    newer = api.submit("test.newest", {"customer": "k", "n": 2})
    assert api.wait(going["id"])["status"] == "cancelled"
    assert api.wait(newer["id"])["status"] == "succeeded"


def test_a_requests_concurrency_key_is_refused_when_too_long(api: ApiClient) -> None:
    response = api.post("/v1/runs", json={"agent": "echo", "concurrency_key": "k" * 301})
    assert response.status_code == 422
