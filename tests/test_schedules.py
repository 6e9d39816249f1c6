"""Schedules on real workers and beats: on time, once per slot whatever the beats, overlap
policies, pause and resume, catch-up, trigger, and what is refused."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import ApiClient, Services
from tests.harness import BIN, ROOT, Process, wait_for
from worker.base.models import Run, Schedule
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


def create(api: ApiClient, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/schedules", json=fields)
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def runs_of(runtime: Runtime, schedule_id: str) -> list[Run]:
    with runtime.db.transaction() as session:
        return list(session.scalars(select(Run).where(Run.schedule_id == schedule_id)
                                    .order_by(Run.scheduled_for)))


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def second_beat(env: dict[str, str], services: Services) -> Iterator[Process]:
    """Another beat process: a deploy that started beat twice."""
    log = services.root / "beat-2.log"
    beat = Process([str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO",
                    "--schedule", str(log.with_suffix(".schedule"))], env=env, log=log)
    beat.start()
    wait_for(lambda: "beat: Starting" in beat.output() or not beat.alive(),
             what="the second beat to start")
    assert beat.alive(), beat.output()
    yield beat
    beat.stop()


def next_fire(api: ApiClient, schedule_id: str) -> datetime:
    return when(api.get(f"/v1/schedules/{schedule_id}").get_json()["next_fire_at"])


def beat_went_by(api: ApiClient, runtime: Runtime, *, seconds: int) -> None:
    """Wait until beat has fired schedules for ``seconds`` more (a witness schedule's
    slots), so that what other schedules did meanwhile can be counted."""
    witness = create(api, agent="echo", every_s=1)
    wait_for(lambda: len(runs_of(runtime, witness["id"])) >= seconds, timeout=seconds + 10,
             what=f"beat to fire {seconds} slots")
    api.delete(f"/v1/schedules/{witness['id']}")


def test_every_two_seconds_fires_on_time_once_per_slot_with_two_beats(
        api: ApiClient, runtime: Runtime, second_beat: Process) -> None:
    schedule = create(api, agent="echo", input={"n": 1}, every_s=2)
    assert schedule["id"].startswith("sch_") and schedule["next_fire_at"]
    fired = wait_for(lambda: len(made := runs_of(runtime, schedule["id"])) >= 4 and made,
                     timeout=20, what="four firings")
    slots = [run.scheduled_for for run in fired]
    assert all(slot is not None for slot in slots)
    assert len(set(slots)) == len(slots)  # never twice, with two beats
    gaps = {round((later - earlier).total_seconds(), 3)  # type: ignore[operator]
            for earlier, later in itertools.pairwise(slots)}
    assert gaps == {2.0}  # every slot, none skipped
    for run in fired:  # each made within a beat's tick of its slot
        assert run.scheduled_for is not None
        assert (run.created_at - run.scheduled_for).total_seconds() < 1.5
    one = api.run(fired[0].id)
    assert one["schedule_id"] == schedule["id"] and one["scheduled_for"] is not None
    assert one["metadata"]["schedule_id"] == schedule["id"]
    assert api.wait(fired[0].id)["status"] == "succeeded"
    assert api.delete(f"/v1/schedules/{schedule['id']}").status_code == 204
    count = len(runs_of(runtime, schedule["id"]))
    beat_went_by(api, runtime, seconds=3)  # a deleted schedule fires no more
    assert len(runs_of(runtime, schedule["id"])) <= count + 1  # one may have been in flight


def test_skip_passes_slots_over_while_a_run_is_going(api: ApiClient,
                                                     runtime: Runtime) -> None:
    schedule = create(api, agent="test.wait", input={"timeout_s": 60}, every_s=1,
                      overlap="skip")
    [first] = wait_for(lambda: runs_of(runtime, schedule["id"]), what="the first firing")
    api.wait(first.id, statuses={"waiting"})
    assert first.scheduled_for is not None
    wait_for(lambda: next_fire(api, schedule["id"]) > first.scheduled_for
             + timedelta(seconds=2.5), what="two slots to go by while it waits")
    assert [run.id for run in runs_of(runtime, schedule["id"])] == [first.id]
    # trigger says why it did not fire
    refused = api.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert refused.status_code == 409 and "overlap: skip" in refused.get_json()["detail"]
    api.post(f"/v1/runs/{first.id}/cancel")
    wait_for(lambda: len(runs_of(runtime, schedule["id"])) >= 2, what="the next firing")
    api.delete(f"/v1/schedules/{schedule['id']}")


def test_buffer_one_keeps_one_run_waiting_its_turn(api: ApiClient, runtime: Runtime) -> None:
    schedule = create(api, agent="test.wait", input={"timeout_s": 60}, every_s=1,
                      overlap="buffer_one")
    made = wait_for(lambda: len(runs := runs_of(runtime, schedule["id"])) >= 2 and runs,
                    what="a second run")
    second = made[1].scheduled_for
    assert second is not None
    wait_for(lambda: next_fire(api, schedule["id"]) > second + timedelta(seconds=2.5),
             what="more slots: skipped, one is waiting already")
    made = runs_of(runtime, schedule["id"])
    assert len(made) == 2
    assert api.run(made[1].id)["status"] == "queued"  # held behind the first
    assert made[0].session_id == made[1].session_id == f"schedule:{schedule['id']}"
    api.delete(f"/v1/schedules/{schedule['id']}")
    for run in made:
        api.post(f"/v1/runs/{run.id}/cancel")


def test_cancel_other_cancels_the_run_going(api: ApiClient, runtime: Runtime) -> None:
    schedule = create(api, agent="test.wait", input={"timeout_s": 60}, every_s=1,
                      overlap="cancel_other")
    made = wait_for(lambda: len(runs := runs_of(runtime, schedule["id"])) >= 3 and runs,
                    what="three firings")
    api.delete(f"/v1/schedules/{schedule['id']}")
    assert api.wait(made[0].id)["status"] == "cancelled"
    assert api.wait(made[1].id)["status"] == "cancelled"
    for run in runs_of(runtime, schedule["id"]):
        api.post(f"/v1/runs/{run.id}/cancel")


def test_pause_and_resume(api: ApiClient, runtime: Runtime) -> None:
    schedule = create(api, agent="echo", every_s=1, paused=True)
    beat_went_by(api, runtime, seconds=2)
    assert runs_of(runtime, schedule["id"]) == []
    resumed = api.client.patch(f"/v1/schedules/{schedule['id']}", json={"paused": False},
                               headers=api.headers)
    assert resumed.status_code == 200, resumed.get_json()
    body = resumed.get_json()
    assert body["paused"] is False
    assert when(body["next_fire_at"]) > datetime.now(UTC) - timedelta(seconds=1)
    wait_for(lambda: runs_of(runtime, schedule["id"]), what="a firing after the resume")
    paused = api.client.patch(f"/v1/schedules/{schedule['id']}", json={"paused": True},
                              headers=api.headers)
    assert paused.get_json()["paused"] is True
    count = len(runs_of(runtime, schedule["id"]))
    beat_went_by(api, runtime, seconds=2)
    assert len(runs_of(runtime, schedule["id"])) <= count + 1
    api.delete(f"/v1/schedules/{schedule['id']}")


def test_a_beat_down_for_a_while_catches_up_within_catchup_s_only(
        api: ApiClient, runtime: Runtime) -> None:
    schedule = create(api, agent="echo", every_s=1, catchup_s=3, paused=True, overlap="allow")
    with runtime.db.transaction() as session:  # as if beat had been down for 60 s
        session.execute(update(Schedule).where(Schedule.id == schedule["id"]).values(
            paused=False, created_at=datetime.now(UTC) - timedelta(seconds=90),
            next_fire_at=datetime.now(UTC) - timedelta(seconds=60)))
    made = wait_for(lambda: runs_of(runtime, schedule["id"]), what="the catch-up")
    api.delete(f"/v1/schedules/{schedule['id']}")
    assert 2 <= len(made) <= 6  # the last 3 s of slots, and the ones since: not 60
    assert all(run.scheduled_for is not None and run.scheduled_for
               > datetime.now(UTC) - timedelta(seconds=10) for run in made)


def test_trigger_fires_now(api: ApiClient) -> None:
    schedule = create(api, agent="echo", input={"x": 2}, cron="0 0 1 1 *")
    response = api.post(f"/v1/schedules/{schedule['id']}/trigger")
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert run["schedule_id"] == schedule["id"] and run["input"] == {"x": 2}
    assert api.wait(run["id"])["status"] == "succeeded"


def test_cron_follows_the_time_zone(api: ApiClient) -> None:
    schedule = create(api, agent="echo", cron="30 9 * * *", timezone="Asia/Kolkata")
    fire_at = when(schedule["next_fire_at"])
    assert (fire_at.hour, fire_at.minute) == (4, 0)  # 9:30 in India is 4:00 UTC
    listed = api.get("/v1/schedules").get_json()["items"]
    assert schedule["id"] in [item["id"] for item in listed]
    api.delete(f"/v1/schedules/{schedule['id']}")
    assert api.get(f"/v1/schedules/{schedule['id']}").status_code == 404


@pytest.mark.parametrize("fields, field", [
    ({"agent": "echo", "cron": "every day"}, "cron"),
    ({"agent": "echo", "every_s": 5, "timezone": "Mars/Olympus"}, "timezone"),
    ({"agent": "echo", "every_s": 5, "cron": "* * * * *"}, "one of them"),
    ({"agent": "echo"}, "one of them"),
    ({"agent": "nope", "every_s": 5}, "agent"),
    ({"agent": "echo", "every_s": 0.1}, "every_s"),
    ({"agent": "echo", "every_s": 5, "overlap": "sometimes"}, "overlap"),
])
def test_a_bad_schedule_is_refused_saying_what_to_fix(api: ApiClient, fields: dict[str, Any],
                                                      field: str) -> None:
    response = api.post("/v1/schedules", json=fields)
    assert response.status_code == 422, response.get_json()
    assert field in str(response.get_json())


def test_another_tenants_schedule_is_not_found(api: ApiClient, other_api: ApiClient) -> None:
    schedule = create(api, agent="echo", every_s=3600)
    for method, path in (("get", ""), ("delete", ""), ("post", "/trigger")):
        response = getattr(other_api, method)(f"/v1/schedules/{schedule['id']}{path}")
        assert response.status_code == 404
    patched = other_api.patch(f"/v1/schedules/{schedule['id']}", json={"paused": True},
                                     headers=other_api.headers)
    assert patched.status_code == 404
    assert schedule["id"] not in [s["id"] for s in other_api.get("/v1/schedules")
                                  .get_json()["items"]]


def test_agentq_schedules_from_a_shell(api: ApiClient, env: dict[str, str]) -> None:
    def agentq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "agentq"), "schedules", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    bad = agentq("create", "--tenant", api.tenant.name, "--agent", "echo", "--cron", "soon")
    assert bad.returncode != 0 and "cron" in bad.stderr and "Traceback" not in bad.stderr
    made = agentq("create", "--tenant", api.tenant.name, "--agent", "echo", "--every", "3600",
                  "--input", '{"from": "cli"}', "--paused")
    assert made.returncode == 0, made.stderr
    schedule_id = made.stdout.strip()
    listed = agentq("list", "--tenant", api.tenant.name, "--json")
    assert [item["id"] for item in json.loads(listed.stdout)] == [schedule_id]
    assert agentq("resume", schedule_id).returncode == 0
    assert api.get(f"/v1/schedules/{schedule_id}").get_json()["paused"] is False
    assert "paused" in agentq("pause", schedule_id).stdout
    fired = agentq("trigger", schedule_id)
    assert fired.returncode == 0, fired.stderr
    assert api.wait(fired.stdout.strip())["input"] == {"from": "cli"}
    assert agentq("delete", schedule_id).returncode == 0
    gone = agentq("pause", schedule_id)
    assert gone.returncode != 0 and "no such schedule" in gone.stderr
