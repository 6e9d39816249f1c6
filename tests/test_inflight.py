"""In-flight capacity: one worker process holds many runs at once (worker.execution.engine).

``async def`` agents run on the process's event loop, plain ones in its agent threads;
every guarantee of an attempt (timeouts, cancels, leases, durable steps, shutdown) holds
for both, on a few database connections and one heartbeat statement for all of them.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import psutil
import pytest
import redis
from sqlalchemy import event, select, text

from tests.agents import CRASH_QUEUE, INFLIGHT_QUEUE
from tests.conftest import ApiClient, StartWorker
from tests.harness import FakeLLM, holds, wait_for
from worker.base.models import Run, new_id
from worker.base.queues import CPU_QUEUE
from worker.base.runtime import Runtime
from worker.runs import attempts, dispatch

pytestmark = pytest.mark.usefixtures("worker")

_SLOTS = 100
_RUNS = 60
_POOL = 3  # the in-flight worker's AGENTQ_DB_POOL_SIZE


def tries(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/runs/{run_id}/attempts").get_json()["items"]
    return items


def progress(api: ApiClient, run_id: str) -> list[str]:
    items = api.get(f"/v1/runs/{run_id}/events").get_json()["items"]
    return [e["data"]["message"] for e in items if e["type"] == "progress"
            and not str(e["data"].get("phase", "")).startswith("step.")]


def connections(runtime: Runtime, application_name: str) -> int:
    with runtime.db.autocommit() as session:
        return int(session.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name}) or 0)


def test_an_async_agent_awaits_emit_steps_and_the_llm_and_a_retry_skips_finished_steps(
        api: ApiClient, fake_llm: FakeLLM) -> None:
    tag = new_id("tag")
    run = api.wait(api.submit("test.async.steps", {"x": 41, "prompt": tag})["id"])
    assert run["status"] == "succeeded" and run["attempt"] == 2, run
    # "a" (a coroutine function) ran on attempt 1 only; "b" (a plain one) failed, then ran
    assert run["result"] == {"a": {"x": 42, "attempt": 1}, "b": "b done",
                             "llm": f"echo: {tag}"}
    assert progress(api, run["id"]) == ["attempt 1", "attempt 2"]
    items = api.get(f"/v1/runs/{run['id']}/steps").get_json()["items"]
    assert [(s["name"], s["attempt"]) for s in items] == [("a", 1), ("b", 2), ("llm:1", 2)]
    assert len(fake_llm.calls_for(tag)) == 1
    assert run["usage"]["llm_calls"] == 1


def test_one_process_holds_many_runs_at_once_on_a_few_connections_and_one_heartbeat(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    app_name = new_id("inflight")
    crash_worker(_SLOTS, queues=INFLIGHT_QUEUE, PGAPPNAME=app_name,
                 AGENTQ_DB_POOL_SIZE=str(_POOL))
    ids = [api.submit("test.async.sleep", {"seconds": 6})["id"] for _ in range(_RUNS)]

    def all_running() -> bool:
        with runtime.db.autocommit() as session:
            return session.scalar(select(text("count(*)")).select_from(Run).where(
                Run.id.in_(ids), Run.status == "running")) == _RUNS

    wait_for(all_running, timeout=20, what=f"{_RUNS} runs running at once")
    # A few connections for all of them: the engine's database threads share one pool
    assert connections(runtime, app_name) <= 2 * _POOL
    # One heartbeat renews every lease: after a beat they all carry the same timestamp
    def one_beat() -> bool:
        with runtime.db.autocommit() as session:
            return session.scalar(text(
                "SELECT count(DISTINCT heartbeat_at) FROM runs WHERE id = ANY(:ids)"),
                {"ids": ids}) == 1
    wait_for(one_beat, timeout=5, what="one heartbeat for every run")
    # ... by one statement, which renews only the leases still held
    with runtime.db.autocommit() as session:
        leases = [(row.id, row.lease_epoch) for row in session.execute(
            select(Run.id, Run.lease_epoch).where(Run.id.in_(ids)))]
    stale = (leases[0][0], leases[0][1] - 1)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(runtime.db.engine, "before_cursor_execute", count)
    try:
        with runtime.db.autocommit() as session:
            live = attempts.heartbeat(session, leases=[stale, *leases[1:]])
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", count)
    assert len(statements) == 1
    assert set(live) == {run_id for run_id, _ in leases[1:]}  # not the stale lease's run
    done = [api.wait(run_id, timeout=30) for run_id in ids]
    assert {run["status"] for run in done} == {"succeeded"}
    results = [run["result"] for run in done]
    assert len({result["pid"] for result in results}) == 1  # one process held them all
    assert max(r["began"] for r in results) < min(r["ended"] for r in results)  # at once


def test_a_cancel_reaches_an_async_agent_at_once(api: ApiClient) -> None:
    run = api.submit("test.async.deaf")
    api.wait(run["id"], statuses={"running"})
    wait_for(lambda: progress(api, run["id"]), what="the agent to start")
    assert api.post(f"/v1/runs/{run['id']}/cancel").status_code == 202
    done = api.wait(run["id"], timeout=5)
    assert done["status"] == "cancelled"
    assert [t["outcome"] for t in tries(api, run["id"])] == ["cancelled"]
    assert done["error"]["type"] == "Cancelled"


def test_an_async_agent_that_swallows_the_cancel_is_given_up_on(api: ApiClient) -> None:
    run = api.submit("test.async.stubborn")
    api.wait(run["id"], statuses={"running"})
    wait_for(lambda: progress(api, run["id"]), what="the agent to start")
    api.post(f"/v1/runs/{run['id']}/cancel")
    done = api.wait(run["id"], timeout=10)
    assert done["status"] == "cancelled"
    assert "given up on" in done["error"]["message"]
    assert [t["outcome"] for t in tries(api, run["id"])] == ["cancelled"]


def test_an_async_timeout_is_retried_then_dead_lettered_keeping_progress(
        api: ApiClient) -> None:
    run = api.submit("test.async.timeout")
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "dead_lettered" and done["error"]["type"] == "Timeout"
    assert [t["outcome"] for t in tries(api, run["id"])] == ["timed_out", "timed_out"]
    # What it reported, even as the limit reached it, is kept
    assert progress(api, run["id"]) == ["attempt 1 started", "attempt 1 stopped",
                                        "attempt 2 started", "attempt 2 stopped"]


def test_an_async_agent_ignoring_its_time_limit_is_given_up_on_at_the_hard_limit(
        api: ApiClient) -> None:
    run = api.submit("test.async.stubborn_timeout")
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "dead_lettered"
    assert done["error"]["type"] == "TimeLimitExceeded"
    assert [t["outcome"] for t in tries(api, run["id"])] == ["timed_out"]


def test_a_full_worker_stops_taking_runs_and_the_queue_holds_the_rest(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=2)  # two slots
    ids = [api.submit("test.async.block")["id"] for _ in range(6)]

    def statuses() -> list[str]:
        return sorted(api.run(run_id)["status"] for run_id in ids)

    wait_for(lambda: statuses().count("running") == 2, what="two runs running")
    # Two run, two wait in the worker's threads (its prefetch), two stay in the broker
    holds(lambda: statuses() == ["queued"] * 4 + ["running"] * 2, seconds=1.5,
          what="two running, four queued")
    assert dispatch.broker_depths(runtime, [CRASH_QUEUE])[CRASH_QUEUE] == 2
    client = redis.Redis.from_url(runtime.settings.redis_url)
    for run_id in ids:
        client.set(f"test:release:{run_id}", 1, ex=120)
    done = [api.wait(run_id, timeout=60) for run_id in ids]
    assert [run["status"] for run in done] == ["succeeded"] * 6


def test_cpu_agents_run_in_the_cpu_process_children(
        api: ApiClient, crash_worker: StartWorker) -> None:
    cpu = crash_worker(2, "prefork", queues=CPU_QUEUE)
    done = [api.wait(api.submit("test.cpu", {"seconds": 0.2})["id"]) for _ in range(2)]
    assert [run["status"] for run in done] == ["succeeded"] * 2
    assert cpu.pid not in {run["result"]["pid"] for run in done}  # in a child, not the main


def test_sigterm_lets_the_async_runs_held_finish(
        api: ApiClient, crash_worker: StartWorker) -> None:
    worker = crash_worker(10, queues=INFLIGHT_QUEUE, AGENTQ_SHUTDOWN_GRACE_S="20")
    ids = [api.submit("test.async.sleep", {"seconds": 2})["id"] for _ in range(5)]
    for run_id in ids:
        api.wait(run_id, statuses={"running"})
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.popen is not None
    worker.popen.wait(timeout=30)
    done = [api.run(run_id) for run_id in ids]
    assert [run["status"] for run in done] == ["succeeded"] * 5
    assert all(len(tries(api, run_id)) == 1 for run_id in ids)


def test_a_sync_run_waits_unclaimed_for_a_thread_and_loses_none_of_its_time(
        api: ApiClient, crash_worker: StartWorker) -> None:
    # Four slots, one agent thread: five 0.6 s runs with 1 s limits wait their turns, 3 s in
    # all, past any one's limit and hard grace (1 s + 1 s) had it been claimed on arrival
    crash_worker(concurrency=4, AGENTQ_SYNC_AGENT_THREADS="1")
    ids = [api.submit("test.brief")["id"] for _ in range(5)]
    done = [api.wait(run_id, timeout=30) for run_id in ids]
    assert [run["status"] for run in done] == ["succeeded"] * 5, done
    assert all(0 < run["result"]["time_left"] < 0.5 for run in done)
    assert all(len(tries(api, run_id)) == 1 for run_id in ids)


def test_an_async_run_is_not_held_up_by_sync_runs_waiting_for_a_thread(
        api: ApiClient, crash_worker: StartWorker) -> None:
    crash_worker(4, queues=f"{CRASH_QUEUE},{INFLIGHT_QUEUE}", AGENTQ_SYNC_AGENT_THREADS="1")
    first, second = (api.submit("test.crash.sleep", {"seconds": 3})["id"] for _ in range(2))
    api.wait(first, statuses={"running"})
    quick = api.wait(api.submit("test.async.sleep", {"seconds": 0.1})["id"], timeout=10)
    assert quick["status"] == "succeeded"
    assert api.run(first)["status"] == "running"
    assert api.run(second)["status"] == "queued"  # handed over, but not claimed: no thread
    assert [api.wait(run_id, timeout=30)["status"] for run_id in (first, second)] == [
        "succeeded"] * 2


def test_a_cpu_agent_given_up_on_takes_its_child_process_with_it(
        api: ApiClient, crash_worker: StartWorker) -> None:
    crash_worker(1, "prefork", queues=CPU_QUEUE)
    run = api.wait(api.submit("test.cpu.stubborn")["id"], timeout=30)
    assert run["status"] == "dead_lettered" and run["error"]["type"] == "TimeLimitExceeded"
    items = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
    child = next(e["data"]["pid"] for e in items if e["data"].get("phase") == "working")
    # Celery's hard limit ends the child still running it (1 s + 2 x 1 s grace + 10 s here)
    wait_for(lambda: not psutil.pid_exists(child), timeout=40, what="the child to be ended")
    done = api.wait(api.submit("test.cpu", {"seconds": 0.1})["id"], timeout=30)
    assert done["status"] == "succeeded" and done["result"]["pid"] != child
