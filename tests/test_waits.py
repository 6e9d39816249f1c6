"""Waits: a run stops at ctx.wait_for or ctx.sleep holding no worker slot, and goes on in a
new attempt once its waitpoint is completed (by API key, by signed link) or due."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from sqlalchemy import func, select

from tests.conftest import ApiClient, StartWorker
from tests.harness import BIN, ROOT, Receiver, holds, wait_for
from worker.base.models import Run
from worker.base.runtime import Runtime
from worker.runs import store, waits
from worker.runs.submission import RunRequest, submit

pytestmark = pytest.mark.usefixtures("worker")

APPROVAL = {"type": "object", "properties": {"approved": {"type": "boolean"},
                                             "comment": {"type": ["string", "null"]}},
            "required": ["approved"], "additionalProperties": False}


def waiting(api: ApiClient, run_id: str) -> dict[str, Any]:
    return api.wait(run_id, statuses={"waiting"})


def waitpoints(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/v1/runs/{run_id}/waitpoints")
    assert response.status_code == 200, response.get_json()
    items: list[dict[str, Any]] = response.get_json()["items"]
    return items


def complete(api: ApiClient, run_id: str, name: str, data: Any, **kwargs: Any) -> Any:
    return api.post(f"/v1/runs/{run_id}/waitpoints/{name}", json={"data": data}, **kwargs)


def statuses(api: ApiClient, run_id: str) -> list[str]:
    items = api.get(f"/v1/runs/{run_id}/events").get_json()["items"]
    return [e["data"]["status"] for e in items if e["type"] == "status"]


def test_a_run_waits_and_goes_on_with_the_data_sent_by_api(api: ApiClient) -> None:
    run = api.submit("test.wait", {"schema": APPROVAL, "prompt": "Refund 40 EUR?"})
    waited = waiting(api, run["id"])
    assert waited["attempt"] == 1
    [point] = waitpoints(api, run["id"])
    assert point["name"] == "answer" and point["status"] == "waiting"
    assert point["prompt"] == "Refund 40 EUR?" and point["schema"] == APPROVAL
    assert point["id"].startswith("wp_") and point["url"].startswith("http")
    assert api.get("/v1/runs?status=waiting").get_json()["items"][0]["id"] == run["id"]
    attempts = api.get(f"/v1/runs/{run['id']}/attempts").get_json()["items"]
    assert [a["outcome"] for a in attempts] == ["suspended"]

    answer = complete(api, run["id"], "answer", {"approved": True, "comment": "ok"})
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["status"] == "completed" and answer.get_json()["url"] is None
    done = api.wait(run["id"])
    assert done["status"] == "succeeded", done
    # the step before the wait ran once; the data came back at the call
    assert done["result"] == {"data": {"approved": True, "comment": "ok"},
                              "before": {"attempt": 1}, "attempt": 2}
    assert statuses(api, run["id"]) == ["queued", "running", "waiting", "queued", "running",
                                        "succeeded"]
    [point] = waitpoints(api, run["id"])
    assert point["status"] == "completed" and point["completed_by"].startswith("api:")
    # attempts spent waiting do not count toward max_attempts (test.wait has 1)
    assert done["max_attempts"] == 1


def test_data_that_does_not_match_the_schema_is_refused_and_changes_nothing(
        api: ApiClient) -> None:
    run = api.submit("test.wait", {"schema": APPROVAL})
    waiting(api, run["id"])
    wrong = complete(api, run["id"], "answer", {"approved": "yes", "extra": 1})
    assert wrong.status_code == 422
    problem = wrong.get_json()
    assert {e["field"] for e in problem["errors"]} == {"data", "data.approved"}
    assert "schema" in problem["detail"]
    assert waitpoints(api, run["id"])[0]["status"] == "waiting"
    assert api.run(run["id"])["status"] == "waiting"
    missing = api.post(f"/v1/runs/{run['id']}/waitpoints/answer", json={"dta": {}})
    assert missing.status_code == 422
    assert complete(api, run["id"], "nope", {}).status_code == 404
    assert complete(api, run["id"], "answer", {"approved": False}).status_code == 202
    assert api.wait(run["id"])["result"]["data"] == {"approved": False}


def test_a_second_completion_is_a_conflict_and_the_first_stands(api: ApiClient) -> None:
    run = api.submit("test.wait")
    waiting(api, run["id"])
    assert complete(api, run["id"], "answer", {"n": 1}).status_code == 202
    again = complete(api, run["id"], "answer", {"n": 2})
    assert again.status_code == 409 and again.get_json()["waitpoint"] == "completed"
    assert api.wait(run["id"])["result"]["data"] == {"n": 1}


def test_an_idempotency_key_replays_the_completion(api: ApiClient) -> None:
    run = api.submit("test.wait")
    waiting(api, run["id"])
    headers = {"Idempotency-Key": "answer-once"}
    first = complete(api, run["id"], "answer", {"n": 1}, headers=headers)
    second = complete(api, run["id"], "answer", {"n": 1}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.get_json() == second.get_json()
    assert api.wait(run["id"])["status"] == "succeeded"


def test_another_tenants_run_is_not_found(api: ApiClient, other_api: ApiClient) -> None:
    run = api.submit("test.wait")
    waiting(api, run["id"])
    assert other_api.get(f"/v1/runs/{run['id']}/waitpoints").status_code == 404
    assert complete(other_api, run["id"], "answer", {"n": 1}).status_code == 404
    assert api.run(run["id"])["status"] == "waiting"
    assert other_api.post(f"/v1/runs/{run['id']}/cancel").status_code == 404
    api.post(f"/v1/runs/{run['id']}/cancel")


def test_a_wait_times_out_at_its_deadline(api: ApiClient) -> None:
    caught = api.submit("test.wait", {"timeout_s": 1})
    raised = api.submit("test.wait", {"timeout_s": 1, "catch": False})
    done = api.wait(caught["id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert "was not completed within 1 s" in done["result"]["timed_out"]
    failed = api.wait(raised["id"], timeout=30)
    assert failed["status"] == "failed" and failed["error"]["type"] == "WaitTimeout"
    [point] = waitpoints(api, caught["id"])
    assert point["status"] == "timed_out" and point["url"] is None
    late = complete(api, caught["id"], "answer", {"n": 1})
    assert late.status_code == 409


def test_cancel_ends_a_waiting_run(api: ApiClient) -> None:
    run = api.submit("test.wait")
    waiting(api, run["id"])
    cancelled = api.post(f"/v1/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.get_json()["status"] == "cancelled"
    assert waitpoints(api, run["id"])[0]["status"] == "cancelled"
    assert complete(api, run["id"], "answer", {"n": 1}).status_code == 409
    assert statuses(api, run["id"])[-1] == "cancelled"


def test_an_async_agent_waits_twice(api: ApiClient) -> None:
    run = api.submit("test.async.wait")
    waiting(api, run["id"])
    assert complete(api, run["id"], "first", 1).status_code == 202
    wait_for(lambda: len(waitpoints(api, run["id"])) == 2 and api.run(run["id"])["status"]
             == "waiting", what="the second wait")
    assert complete(api, run["id"], "second", [2]).status_code == 202
    done = api.wait(run["id"])
    assert done["result"] == {"first": 1, "second": [2], "attempt": 3}


def test_a_durable_sleep_holds_no_slot_and_wakes_on_time(api: ApiClient) -> None:
    run = api.submit("test.sleep.durable", {"seconds": 1.5})
    waiting(api, run["id"])
    [point] = waitpoints(api, run["id"])
    assert point["kind"] == "sleep" and point["url"] is None
    assert complete(api, run["id"], "nap", {}).status_code == 409
    done = api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded" and done["result"]["attempt"] == 2
    assert 1.4 <= done["result"]["slept_s"] < 8


def test_a_worker_killed_while_the_run_waits_changes_nothing(
        api: ApiClient, crash_worker: StartWorker) -> None:
    first = crash_worker()
    run = api.submit("test.wait.crash")
    waiting(api, run["id"])
    first.signal(signal.SIGKILL)
    # past the lease timeout and a few sweeps: a waiting run has no lease to go stale
    holds(lambda: api.run(run["id"])["status"] == "waiting", seconds=6,
          what="the run waiting")
    crash_worker()
    assert complete(api, run["id"], "answer", {"ok": True}).status_code == 202
    done = api.wait(run["id"])
    assert done["status"] == "succeeded" and done["result"] == {"data": {"ok": True},
                                                                "attempt": 2}
    outcomes = [a["outcome"] for a in api.get(f"/v1/runs/{run['id']}/attempts")
                .get_json()["items"]]
    assert outcomes == ["suspended", "succeeded"]


def test_a_thousand_waiting_runs_hold_no_slot(api: ApiClient, runtime: Runtime,
                                              crash_worker: StartWorker) -> None:
    crash_worker(concurrency=10)  # ten slots for 1,000 waiting runs and ten more
    request = RunRequest(agent="test.wait.crash", input={})
    ids = [submit(runtime, tenant_id=api.tenant.id, request=request).id for _ in range(1000)]

    def count(status: str) -> int:
        with runtime.db.autocommit() as session:
            return int(session.scalar(select(func.count()).select_from(Run).where(
                Run.id.in_(ids), Run.status == status)) or 0)

    wait_for(lambda: count("waiting") == 1000, timeout=120, interval=0.5,
             what="1,000 runs waiting")
    # Meanwhile another agent's runs go through the same ten slots.
    others = [api.submit("test.crash.sleep", {"seconds": 0.1})["id"] for _ in range(10)]
    for run_id in others:
        assert api.wait(run_id, timeout=60)["status"] == "succeeded"
    for run_id in ids[:20]:
        assert complete(api, run_id, "answer", {"n": run_id}).status_code == 202
    for run_id in ids[:20]:
        assert api.wait(run_id, timeout=60)["result"]["data"] == {"n": run_id}
    assert count("waiting") == 980
    with runtime.db.transaction() as session:  # the rest are not this session's to keep
        for run_id in ids[20:]:
            store.cancel(session, tenant_id=api.tenant.id, run_id=run_id)


# The signed link ---------------------------------------------------------------------------

def link_path(api: ApiClient, run_id: str) -> str:
    url: str = waitpoints(api, run_id)[0]["url"]
    return "/waitpoints/" + url.rsplit("/", 1)[1]


def test_the_signed_link_completes_once_without_a_key(api: ApiClient) -> None:
    run = api.submit("test.wait", {"schema": APPROVAL, "prompt": "Ship it?"})
    waiting(api, run["id"])
    path = link_path(api, run["id"])
    page = api.client.get(path)  # no key: the link is the credential
    assert page.status_code == 200 and b"Ship it?" in page.data
    assert "nonce-" in page.headers["Content-Security-Policy"]
    assert api.run(run["id"])["status"] == "waiting"  # a GET changes nothing
    wrong = api.client.post(path, json={"data": {"approved": 1}})
    assert wrong.status_code == 422
    done = api.client.post(path, json={"data": {"approved": True}})
    assert done.status_code == 202, done.get_json()
    assert api.wait(run["id"])["result"]["data"] == {"approved": True}
    assert waitpoints(api, run["id"])[0]["completed_by"] == "url"
    reused = api.client.post(path, json={"data": {"approved": False}})
    assert reused.status_code == 409
    assert api.client.get(path).status_code == 410


def test_a_forged_or_altered_link_is_not_found(api: ApiClient, runtime: Runtime) -> None:
    run = api.submit("test.wait")
    waiting(api, run["id"])
    path = link_path(api, run["id"])
    header, claims, signature = path.rsplit("/", 1)[1].split(".")
    altered = f"/waitpoints/{header}.{claims}.{signature[:-2]}AA"
    [point] = waitpoints(api, run["id"])
    forged = "/waitpoints/" + jwt.encode({"wp": point["id"], "aud": "agentq:waitpoint",
                                          "exp": int(time.time()) + 60}, "a-guessed-key" * 4,
                                         algorithm="HS256")
    for bad in (altered, forged, "/waitpoints/not-a-token", "/waitpoints/" + "x" * 5000):
        assert api.client.post(bad, json={"data": {}}).status_code == 404, bad
        assert api.client.get(bad).status_code == 404, bad
    assert api.run(run["id"])["status"] == "waiting"
    api.post(f"/v1/runs/{run['id']}/cancel")


def test_an_expired_link_is_gone(api: ApiClient, runtime: Runtime) -> None:
    run = api.submit("test.wait")
    waiting(api, run["id"])
    [point] = waitpoints(api, run["id"])
    secret = runtime.settings.secret_key
    assert secret is not None
    expired = waits.token(secret, waitpoint_id=point["id"],
                          deadline=datetime.now(UTC) - timedelta(seconds=5))
    answer = api.client.post(f"/waitpoints/{expired}", json={"data": {}})
    assert answer.status_code == 410 and "expired" in answer.get_json()["detail"]
    assert api.run(run["id"])["status"] == "waiting"
    api.post(f"/v1/runs/{run['id']}/cancel")


def test_agentq_runs_resume_completes_a_waitpoint(api: ApiClient, env: dict[str, str]) -> None:
    run = api.submit("test.wait", {"schema": APPROVAL})
    waiting(api, run["id"])
    cli = [str(BIN / "agentq"), "runs", "resume", run["id"], "answer"]
    bad = subprocess.run([*cli, "--data", '{"approved": "yes"}'], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "data.approved" in bad.stderr
    notjson = subprocess.run([*cli, "--data", "{"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert notjson.returncode != 0 and "--data is not JSON" in notjson.stderr
    done = subprocess.run([*cli, "--data", '{"approved": true}'], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert api.wait(run["id"])["result"]["data"] == {"approved": True}


def test_a_waiting_run_is_announced_by_webhook_and_stream(api: ApiClient,
                                                          receiver: Receiver) -> None:
    secret = api.post("/v1/webhook-secret").get_json()
    assert secret
    run = api.submit("test.wait", {"prompt": "Go?"}, webhook_url=receiver.url)
    [waited] = wait_for(lambda: receiver.at("/") or None, what="the run.waiting delivery")
    body = json.loads(waited.body)
    assert body["type"] == "run.waiting" and body["data"]["id"] == run["id"]
    point = body["data"]["waitpoint"]
    assert point["name"] == "answer" and point["prompt"] == "Go?"
    assert point["url"].startswith("http") and "/waitpoints/" in point["url"]
    status_events = [e for e in api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
                     if e["type"] == "status" and e["data"]["status"] == "waiting"]
    assert status_events[0]["data"]["waitpoint"]["name"] == "answer"
    assert status_events[0]["data"]["waitpoint"]["url"] is None  # never stored
    complete(api, run["id"], "answer", {"ok": 1})
    api.wait(run["id"])
    ended = wait_for(lambda: len(receiver.at("/")) == 2 and receiver.at("/"),
                     what="the run.succeeded delivery")
    assert json.loads(ended[1].body)["type"] == "run.succeeded"


def test_a_sessions_interrupt_cancels_a_waiting_run(api: ApiClient) -> None:
    first = api.submit("test.wait", session_id="chat-wait")
    waiting(api, first["id"])
    second = api.submit("echo", {"n": 2}, session_id="chat-wait", multitask="interrupt")
    assert api.wait(first["id"])["status"] == "cancelled"
    assert api.wait(second["id"])["status"] == "succeeded"
    assert waitpoints(api, first["id"])[0]["status"] == "cancelled"
