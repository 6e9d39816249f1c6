"""Workers die mid-run (SIGKILL, a poison run, a deploy's SIGTERM): no run is lost or doubled."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from tests.conftest import ApiClient, StartWorker
from tests.harness import Receiver, holds, wait_for
from worker.base.models import RunEvent
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")  # the session worker runs the sweeper

def terminal_transitions(runtime: Runtime, run_id: str) -> list[str]:
    with runtime.db.transaction() as session:
        data = session.scalars(select(RunEvent.data).where(
            RunEvent.run_id == run_id, RunEvent.type == "status")).all()
    return [d["status"] for d in data
            if d["status"] in {"succeeded", "failed", "cancelled", "dead_lettered"}]


def running_on(api: ApiClient, run_id: str) -> str:
    api.wait(run_id, statuses={"running"})
    tries = api.get(f"/v1/runs/{run_id}/attempts").get_json()["items"]
    worker: str = tries[-1]["worker"]
    return worker


def test_sigkill_of_the_worker_mid_run_ends_succeeded_once(
    api: ApiClient, runtime: Runtime, crash_worker: StartWorker
) -> None:
    # Given a run in progress on worker A, and worker B idle
    a = crash_worker()
    run = api.submit("test.crash.sleep", {"seconds": 20, "later_s": 0.5})
    assert running_on(api, run["id"]).startswith(f"{a.name}@")
    b = crash_worker()
    # When A and its children are killed outright
    a.signal(signal.SIGKILL)
    # Then the lease goes stale, the sweeper re-queues the run and B finishes it
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "succeeded"
    tries = api.get(f"/v1/runs/{run['id']}/attempts").get_json()["items"]
    assert [t["outcome"] for t in tries] == ["crashed", "succeeded"]
    assert tries[0]["error"]["type"] == "WorkerLost"
    assert tries[1]["worker"].startswith(f"{b.name}@")
    assert terminal_transitions(runtime, run["id"]) == ["succeeded"]


def test_poison_run_is_dead_lettered_and_the_worker_keeps_serving(
    api: ApiClient, runtime: Runtime, crash_worker: StartWorker
) -> None:
    # A prefork worker (the Procfile's cpu): an agent that kills its process kills a child,
    # which the worker replaces. (One in the default worker's engine takes the worker down
    # with it; its orchestrator restarts it, and the same count dead-letters the run.)
    crash_worker(concurrency=1, pool="prefork")
    # Given a run that kills the process running it, every time
    poison = api.submit("test.poison")
    done = api.wait(poison["id"], timeout=90)
    # Then after max_attempts (3) claims that never finished, it stops being redelivered
    assert done["status"] == "dead_lettered"
    assert done["error"]["type"] == "WorkerLost"
    tries = api.get(f"/v1/runs/{poison['id']}/attempts").get_json()["items"]
    assert [t["outcome"] for t in tries] == ["crashed", "crashed", "crashed"]
    assert terminal_transitions(runtime, poison["id"]) == ["dead_lettered"]
    # And the same worker still serves other runs
    healthy = api.wait(api.submit("test.crash.sleep", {"seconds": 0.1})["id"], timeout=30)
    assert healthy["status"] == "succeeded"


def test_sigterm_mid_run_requeues_after_the_grace_and_another_worker_finishes(
    api: ApiClient, runtime: Runtime, crash_worker: StartWorker
) -> None:
    a = crash_worker(AGENTQ_SHUTDOWN_GRACE_S="1")
    run = api.submit("test.crash.sleep", {"seconds": 20, "later_s": 0.5})
    assert running_on(api, run["id"]).startswith(f"{a.name}@")
    b = crash_worker()
    # When A is asked to stop (SIGTERM to its main process, as an orchestrator does)
    assert a.popen is not None
    os.kill(a.pid, signal.SIGTERM)
    # Then A exits soon after its grace, having given the run back at once
    a.popen.wait(timeout=30)
    tries = wait_for(lambda: len(t := api.get(f"/v1/runs/{run['id']}/attempts")
                                 .get_json()["items"]) >= 2 and t, timeout=10,
                     what="a second attempt without waiting for the lease to go stale")
    assert tries[0]["outcome"] == "crashed" and tries[0]["error"]["type"] == "WorkerShutdown"
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "succeeded"
    assert tries[1]["worker"].startswith(f"{b.name}@")
    assert terminal_transitions(runtime, run["id"]) == ["succeeded"]


def test_sigterm_lets_a_short_run_finish_on_the_same_worker(
    api: ApiClient, runtime: Runtime, crash_worker: StartWorker
) -> None:
    a = crash_worker(AGENTQ_SHUTDOWN_GRACE_S="20")
    run = api.submit("test.crash.sleep", {"seconds": 1.5})
    running_on(api, run["id"])
    os.kill(a.pid, signal.SIGTERM)
    assert a.popen is not None
    a.popen.wait(timeout=30)
    done = api.wait(run["id"])
    assert done["status"] == "succeeded" and done["result"] == {"attempt": 1}
    assert terminal_transitions(runtime, run["id"]) == ["succeeded"]


def test_a_worker_killed_between_the_runs_commit_and_the_send_still_delivers_once(
    api: ApiClient, runtime: Runtime, crash_worker: StartWorker, receiver: Receiver
) -> None:
    # Given an endpoint, and a worker that dies right after committing a run's end,
    # before anything else (the announcement, the publish of the delivery) happens
    api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/once"})
    crash_worker(AGENTQ_FAULT="exit_after_terminal_commit")
    run = api.submit("test.crash.sleep", {"seconds": 0.1})
    # Then the run ends once, and the sweeper sends its delivery, once
    assert api.wait(run["id"])["status"] == "succeeded"
    wait_for(lambda: receiver.at("/once"), timeout=30, what="the delivery")
    holds(lambda: len(receiver.at("/once")) == 1, seconds=2,  # two sweeps
          what="one delivery")
    assert terminal_transitions(runtime, run["id"]) == ["succeeded"]


def test_a_run_cancelled_before_its_worker_died_ends_cancelled_not_again(
    api: ApiClient, runtime: Runtime, crash_worker: StartWorker, receiver: Receiver
) -> None:
    assert api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/ended"}) \
        .status_code == 201
    # Given a run in progress on worker A, and worker B idle
    a = crash_worker()
    run = api.submit("test.crash.sleep", {"seconds": 20, "later_s": 0.2})
    running_on(api, run["id"])
    crash_worker()
    # When the run is cancelled and A dies before it could stop the attempt
    assert api.post(f"/v1/runs/{run['id']}/cancel").status_code == 202
    a.signal(signal.SIGKILL)
    # Then recovery ends the run cancelled: it is not started again on B
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "cancelled" and done["error"]["type"] == "Cancelled"
    tries = api.get(f"/v1/runs/{run['id']}/attempts").get_json()["items"]
    assert [t["outcome"] for t in tries] == ["crashed"]
    assert terminal_transitions(runtime, run["id"]) == ["cancelled"]
    [ended] = wait_for(lambda: receiver.at("/ended"), what="the run.cancelled webhook")
    assert b'"run.cancelled"' in ended.body
