"""Flow control on real workers: delayed and expiring runs."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.agents import CRASH_QUEUE, INFLIGHT_QUEUE
from tests.conftest import FAST, TERMINAL_STATUSES, ApiClient, StartWorker
from tests.harness import Receiver, wait_for
from worker.base.models import Run, RunStatus
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

    def explained() -> dict[str, Any] | None:
        run = api.run(hot[-1]["id"])  # a read between an end and the next claim may find
        if run["status"] != "queued":  # the key with a place free: it reads again
            return run
        return run if "concurrency key 'input.customer=acme'" in (run["waiting_for"] or "") \
            else None

    waiting = wait_for(explained, timeout=10, interval=0.05,
                       what="the last acme run to say what it waits for")
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


def longest_idle(runs: list[tuple[float, float, float]], most: int) -> float:
    """The longest stretch (s) in which runs of one key, each (submitted, began, ended),
    were waiting to start while fewer than ``most`` of them ran."""
    edges = sorted([(created, 1, 0) for created, _, _ in runs]
                   + [(began, -1, 1) for _, began, _ in runs]
                   + [(ended, 0, -1) for _, _, ended in runs])
    waiting = running = 0
    longest = since = 0.0
    idle = False
    for at, more_waiting, more_running in edges:
        waiting, running = waiting + more_waiting, running + more_running
        if idle:
            longest = max(longest, at - since)
        elif waiting > 0 and running < most:
            since = at
        idle = waiting > 0 and running < most
    return longest


def test_each_run_of_a_busy_key_starts_once_a_place_frees_never_left_to_the_sweeper(
        api: ApiClient, crash_worker: StartWorker, runtime: Runtime) -> None:
    # Given two workers claiming at once, each holding enough runs to claim them in batches
    queues = f"{INFLIGHT_QUEUE},{CRASH_QUEUE}"
    crash_worker(concurrency=300, queues=queues)
    crash_worker(concurrency=300, queues=queues)
    # When many short runs of few keys arrive at once: four keys of one at a time (a
    # request's key; the agent has no Limit), two of test.limited's two at a time
    submitted: list[tuple[str, int, str]] = []  # (key, its max, run id)
    for n in range(240):
        if n % 6 < 4:
            key = f"one-{n % 6}"
            run = api.submit("test.async.sleep", {"seconds": 0.02}, concurrency_key=key)
            submitted.append((key, 1, run["id"]))
        else:
            key = f"two-{n % 6}"
            run = api.submit("test.limited", {"customer": key, "pause_s": 0.02})
            submitted.append((key, 2, run["id"]))
    ids = [run_id for _, _, run_id in submitted]

    def ended() -> bool:
        with runtime.db.autocommit() as session:
            found = session.scalars(select(Run.status).where(Run.id.in_(ids))).all()
        return all(RunStatus(status).is_terminal for status in found)

    # Then every run ends, each key's at most its max at once, and none waited for the
    # sweeper (it re-sends a lost message AGENTQ_REDISPATCH_AFTER_S after it was sent): a
    # run's message is never dropped while its claim is undecided, nor its turn missed
    wait_for(ended, timeout=120, interval=0.2, what="every run of the busy keys to end")
    by_key: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for key, most, run_id in submitted:
        done = api.run(run_id)
        assert done["status"] == "succeeded", done
        times = done["result"]
        created = datetime.fromisoformat(done["created_at"].replace("Z", "+00:00"))
        by_key.setdefault((key, most), []).append(
            (created.timestamp(), times.get("began", times.get("start")),
             times.get("ended", times.get("end"))))
    repair_s = float(FAST["AGENTQ_REDISPATCH_AFTER_S"])
    for (key, most), runs in by_key.items():
        assert most_at_once([(began, ended) for _, began, ended in runs]) <= most, key
        assert longest_idle(runs, most) < repair_s, (key, longest_idle(runs, most))
