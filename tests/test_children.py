"""Child runs on real workers: an agent starts agents, fans out and in, and waits for them
as a run ``waiting`` that holds no worker slot."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from tests.conftest import ApiClient, StartWorker
from tests.harness import holds, wait_for
from worker.base.models import Run, Waitpoint
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


def children_of(runtime: Runtime, run_id: str) -> list[Run]:
    with runtime.db.autocommit() as session:
        return list(session.scalars(select(Run).where(Run.parent_id == run_id)
                                    .order_by(Run.id)))


def waiting_on_two(api: ApiClient, runtime: Runtime, run_id: str) -> None:
    """Wait until the parent's two children run and it waits for them."""
    wait_for(lambda: len([c for c in children_of(runtime, run_id)
                          if c.status == "running"]) == 2 and
             api.run(run_id)["status"] == "waiting", timeout=30,
             what="both children running and the parent waiting")


@pytest.mark.parametrize("agent", ["test.parent.map", "test.parent.async_map"])
def test_two_slots_finish_a_parent_that_maps_over_twenty_children(
        agent: str, api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=2)  # the parent and one child at most, if the parent held one
    run = api.submit(agent, {"n": 20, "max_concurrency": 4, "pause_s": 0.05})
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["result"] == {"echoes": list(range(20))}
    children = children_of(runtime, run["id"])
    assert sorted(child.child_name for child in children) == sorted(
        f"map:{i}" for i in range(20))  # each made once
    assert {child.status for child in children} == {"succeeded"}
    assert {(child.root_id, child.depth) for child in children} == {(run["id"], 1)}
    events = api.get(f"/v1/runs/{run['id']}/events").get_json()["items"]
    phases = [e["data"].get("phase") for e in events if e["type"] == "progress"]
    assert phases.count("child.started") == 20 and phases.count("child.finished") == 20
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert "waiting" in statuses  # it gave its slot back while its children ran


def test_a_gather_wakes_at_the_first_deadline_of_the_children_it_waits_for(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    # map:0 and map:2 work long; map:1 ends soon, so map:2 starts (and its wait begins) later
    run = api.submit("test.parent.map", {"pauses": [60, 0.5, 60], "max_concurrency": 2,
                                         "timeout_s": 600})

    def waiting_for_both() -> tuple[Run, list[Waitpoint]] | None:
        with runtime.db.autocommit() as session:
            parent = session.get(Run, run["id"])
            points = list(session.scalars(select(Waitpoint).where(
                Waitpoint.run_id == run["id"], Waitpoint.status == "waiting")))
        names = {point.name for point in points}
        ready = parent is not None and parent.status == "waiting"
        return (parent, points) if ready and names == {"child:map:0", "child:map:2"} else None

    parent, points = wait_for(waiting_for_both, timeout=20, what="the parent's last wait")
    deadlines = sorted(point.deadline for point in points)
    # It is woken by map:2's end (the last going) but at map:0's deadline, the first
    assert deadlines[0] < deadlines[1]
    assert parent.next_attempt_at == deadlines[0]
    api.post(f"/v1/runs/{run['id']}/cancel")


def test_a_failed_child_is_caught_by_its_parent(api: ApiClient, runtime: Runtime,
                                                 crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    run = api.submit("test.parent.catch", {})
    done = api.wait(run["id"], timeout=30)
    assert done["status"] == "succeeded", done
    failing = next(c for c in children_of(runtime, run["id"]) if c.agent == "test.child.fail")
    assert done["result"]["caught"] == failing.id
    assert done["result"]["status"] == "failed"
    assert done["result"]["error"]["message"] == "the child gives up"
    assert done["result"]["fine"] == "fine"


def test_a_parent_killed_right_after_starting_its_child_starts_it_once(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    first = crash_worker(concurrency=4)
    run = api.submit("test.parent.kill", {})
    wait_for(lambda: not first.alive(), timeout=30, what="the parent's worker to die")
    crash_worker(concurrency=4)  # its next attempt, once the sweeper sees the lease stale
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "succeeded", done
    [child] = children_of(runtime, run["id"])
    assert done["result"] == {"child": child.id, "echo": "once"}
    assert done["attempt"] >= 2


def test_cancelling_a_parent_cancels_its_children_but_not_a_detached_one(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    run = api.submit("test.parent.tree", {})
    waiting_on_two(api, runtime, run["id"])
    refused = api.post(f"/v1/runs/{run['id']}/waitpoints/child:kept", json={"data": {}})
    assert refused.status_code == 409  # only its child's end completes it
    assert "completes when that run ends" in refused.get_json()["detail"]
    assert api.post(f"/v1/runs/{run['id']}/cancel").status_code in (200, 202)
    assert api.wait(run["id"])["status"] == "cancelled"
    by_name = {c.child_name: c for c in children_of(runtime, run["id"])}
    assert api.wait(by_name["gone"].id, timeout=30)["status"] == "cancelled"
    assert api.run(by_name["kept"].id)["status"] == "running"
    api.post(f"/v1/runs/{by_name['kept'].id}/cancel")
    assert api.wait(by_name["kept"].id, timeout=30)["status"] == "cancelled"


def test_a_child_replayed_after_its_end_is_waited_for_again(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    run = api.submit("test.parent.pair", {})
    waiting_on_two(api, runtime, run["id"])
    by_name = {c.child_name: c.id for c in children_of(runtime, run["id"])}

    def point_a() -> Waitpoint:
        with runtime.db.autocommit() as session:
            return session.scalars(select(Waitpoint).where(
                Waitpoint.run_id == run["id"], Waitpoint.name == "child:a")).one()

    first = point_a()
    # Given child a ended (its end does not wake a gather: b is the last going) and replayed
    assert api.post(f"/v1/runs/{by_name['a']}/cancel").status_code in (200, 202)
    assert api.wait(by_name["a"], timeout=30)["status"] == "cancelled"
    assert api.post(f"/v1/runs/{by_name['a']}/replay").status_code == 202
    wait_for(lambda: api.run(by_name["a"])["status"] == "running", timeout=30,
             what="the replayed child to run")
    # When b's end wakes the parent
    assert api.post(f"/v1/runs/{by_name['b']}/cancel").status_code in (200, 202)

    def waiting_for_a() -> bool:
        return point_a().status == "waiting" and api.run(run["id"])["status"] == "waiting"

    # Then it waits for a again (from this wait on), rather than waking at once (and again)
    wait_for(waiting_for_a, timeout=30, what="the parent to wait for the replayed child")
    again = point_a()
    assert again.deadline > first.deadline and again.attempt > first.attempt
    attempt = api.run(run["id"])["attempt"]
    holds(lambda: waiting_for_a() and api.run(run["id"])["attempt"] == attempt, seconds=1,
          what="the parent still waiting, on the same attempt")
    assert api.post(f"/v1/runs/{run['id']}/cancel").status_code in (200, 202)
    assert api.wait(by_name["a"], timeout=30)["status"] == "cancelled"


def test_the_depth_limit_stops_an_agent_that_starts_itself(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    root = api.submit("test.recursive", {})
    assert api.wait(root["id"], timeout=60)["status"] == "failed"
    with runtime.db.autocommit() as session:
        tree = list(session.scalars(select(Run).where(Run.root_id == root["id"])))
        deepest = max(tree, key=lambda run: run.depth)
        assert session.scalar(select(func.count()).select_from(Run)
                              .where(Run.root_id == root["id"])) == 8
    assert deepest.depth == 8 and deepest.error["type"] == "RunTreeLimit"
    assert "AGENTQ_MAX_RUN_DEPTH" in deepest.error["message"]
    assert {run.status for run in tree} == {"failed"}


def test_the_tree_is_in_the_api_and_hidden_from_other_tenants(
        api: ApiClient, other_api: ApiClient, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    run = api.submit("test.parent.map", {"n": 5})
    assert api.wait(run["id"], timeout=30)["status"] == "succeeded"
    parent = api.run(run["id"])
    assert parent["children"] == {"succeeded": 5} and parent["parent_id"] is None
    first = api.get(f"/v1/runs/{run['id']}/children?limit=3").get_json()
    rest = api.get(f"/v1/runs/{run['id']}/children?limit=3&cursor={first['next_cursor']}")
    children = first["items"] + rest.get_json()["items"]
    assert [c["child_name"] for c in children] == [f"map:{i}" for i in range(5)]
    assert rest.get_json()["next_cursor"] is None
    assert {(c["parent_id"], c["root_id"]) for c in children} == {(run["id"], run["id"])}
    listed = api.get(f"/v1/runs?parent_id={run['id']}&limit=100").get_json()["items"]
    assert sorted(c["id"] for c in listed) == sorted(c["id"] for c in children)
    assert other_api.get(f"/v1/runs/{run['id']}/children").status_code == 404
    assert other_api.get(f"/v1/runs/{children[0]['id']}").status_code == 404
    assert other_api.get(f"/v1/runs?parent_id={run['id']}").get_json()["items"] == []


def test_demo_fanout_answers_each_question_in_order(api: ApiClient) -> None:
    questions = ["Why is the sky blue?", "What causes tides?", "Why are plants green?"]
    run = api.submit("demo.fanout", {"questions": questions, "max_concurrency": 2,
                                     "phase_s": 0})
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "succeeded", done
    answers = done["result"]["answers"]
    assert len(answers) == 3
    assert "blue" in answers[0] and "Moon" in answers[1] and "chlorophyll" in answers[2]


def test_the_sweeper_cancels_the_children_a_lost_cascade_left_running(
        api: ApiClient, runtime: Runtime, crash_worker: StartWorker) -> None:
    crash_worker(concurrency=4)
    run = api.submit("test.parent.tree", {})
    wait_for(lambda: len([c for c in children_of(runtime, run["id"])
                          if c.status == "running"]) == 2, timeout=30, what="both children")
    with runtime.db.transaction() as session:  # cancelled, and the process died right after
        session.execute(update(Run).where(Run.id == run["id"])
                        .values(status="cancelled", finished_at=func.now()))
    by_name = {c.child_name: c for c in children_of(runtime, run["id"])}
    assert api.wait(by_name["gone"].id, timeout=30)["status"] == "cancelled"
    assert api.run(by_name["kept"].id)["status"] == "running"  # detached
    api.post(f"/v1/runs/{by_name['kept'].id}/cancel")
    assert api.wait(by_name["kept"].id, timeout=30)["status"] == "cancelled"
