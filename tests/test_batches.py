"""``POST /v1/runs/batch``: many runs in one request and one transaction, on real workers."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import func, select, text, update

from api import create_app
from tests.conftest import ApiClient, make_tenant
from tests.harness import Receiver, holds, wait_for
from tests.test_signing import spec_verify
from worker.app import build_runtime
from worker.base.models import Batch, Run
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.runs import batch_end

pytestmark = pytest.mark.usefixtures("worker")


def stored(runtime: Runtime, api: ApiClient, model: type[Run] | type[Batch] = Run) -> int:
    """How many runs (or batches) the tenant has."""
    with runtime.db.autocommit() as session:
        return int(session.scalar(select(func.count()).select_from(model)
                                  .where(model.tenant_id == api.tenant.id)) or 0)


def completed(api: ApiClient, batch_id: str, timeout: float = 45) -> dict[str, Any]:
    """Poll the batch until its last run has ended."""
    return wait_for(lambda: (b := api.get(f"/v1/batches/{batch_id}").get_json())
                    ["completed_at"] and b, timeout=timeout, interval=0.2,
                    what=f"batch {batch_id} to complete")


def echoes(count: int, *, keyed: bool = True) -> list[dict[str, Any]]:
    return [{"agent": "echo", "input": {"i": i}, **({"idempotency_key": f"item-{i}"}
                                                      if keyed else {})}
            for i in range(count)]


def test_a_batch_of_1000_runs_all_succeed_in_order_and_a_repeat_makes_none(
    api: ApiClient, runtime: Runtime
) -> None:
    # When 1,000 runs come in one request
    response = api.post("/v1/runs/batch", json={"items": echoes(1000)})
    # Then they are all made at once, in the items' order, in one batch
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["id"].startswith("bat_") and body["size"] == 1000
    assert response.headers["Location"] == f"/v1/batches/{body['id']}"
    assert [run["input"] for run in body["runs"]] == [{"i": i} for i in range(1000)]
    assert {run["batch_id"] for run in body["runs"]} == {body["id"]}
    assert body["counts"] == {"queued": 1000} and body["replayed"] == []
    ids = [run["id"] for run in body["runs"]]
    assert ids == sorted(ids)  # newest first in lists means the items' order, reversed
    page = api.get("/v1/runs", query_string={"batch_id": body["id"], "limit": 5}).get_json()
    assert [run["id"] for run in page["items"]] == ids[::-1][:5]
    # ... and every one of them succeeds
    batch = completed(api, body["id"])
    assert batch["counts"] == {"succeeded": 1000} and batch["size"] == 1000
    assert api.run(ids[500])["result"] == {"i": 500}
    # When the same request comes again, with the same keys
    again = api.post("/v1/runs/batch", json={"items": echoes(1000)})
    # Then it answers with the same batch and runs, and makes nothing
    assert again.status_code == 200, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    repeat = again.get_json()
    assert repeat["id"] == body["id"] and [run["id"] for run in repeat["runs"]] == ids
    assert repeat["replayed"] == list(range(1000))
    assert repeat["counts"] == {"succeeded": 1000}
    assert stored(runtime, api) == 1000 and stored(runtime, api, Batch) == 1


def test_keys_are_honoured_item_by_item(api: ApiClient, runtime: Runtime) -> None:
    # Given a run made by POST /v1/runs with an Idempotency-Key
    single = api.post("/v1/runs", json={"agent": "echo", "input": {"i": 1}},
                      headers={"Idempotency-Key": "item-1"}).get_json()
    # When a batch has an item with that key and body, and two new ones
    response = api.post("/v1/runs/batch", json={"items": echoes(3)})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    # Then that item is the run the key made; the others are new, in this batch
    assert body["runs"][1]["id"] == single["id"] and body["replayed"] == [1]
    assert body["size"] == 2 and stored(runtime, api) == 3
    assert [run["batch_id"] for run in body["runs"]] == [body["id"], None, body["id"]]
    assert completed(api, body["id"])["counts"] == {"succeeded": 2}
    # ... and a single POST with an item's key is that item's run
    replayed = api.post("/v1/runs", json={"agent": "echo", "input": {"i": 2}},
                        headers={"Idempotency-Key": "item-2"})
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.get_json()["id"] == body["runs"][2]["id"]
    # A key sent again with another item, or twice in one batch, is refused
    other = api.post("/v1/runs/batch", json={"items": [
        {"agent": "echo", "input": {"i": 99}, "idempotency_key": "item-0"}]})
    assert other.status_code == 422
    assert [e["field"] for e in other.get_json()["errors"]] == ["items[0].idempotency_key"]
    twice = api.post("/v1/runs/batch", json={"items": [
        {"agent": "echo", "idempotency_key": "new"}, {"agent": "echo", "idempotency_key": "new"}]})
    assert twice.status_code == 422
    assert [e["field"] for e in twice.get_json()["errors"]] == ["items[1].idempotency_key"]
    assert stored(runtime, api) == 3


def test_an_invalid_item_refuses_the_whole_batch(api: ApiClient, runtime: Runtime) -> None:
    items: list[Any] = echoes(10)
    items[3] = {"agent": "sleep", "input": {"seconds": "soon"}}
    items[7] = {"agent": "no.such.agent"}
    items[8] = "not an object"
    before = stored(runtime, api)
    response = api.post("/v1/runs/batch", json={"items": items})
    assert response.status_code == 422
    problem = response.get_json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in problem["errors"]] == [
        "items[3].input.seconds", "items[7].agent", "items[8]"]
    assert "item 3, 7, 8" in problem["detail"]
    # Nothing was made, not even the valid items' runs
    assert stored(runtime, api) == before and stored(runtime, api, Batch) == 0
    # ... and their keys are free: the valid items can come again
    assert api.post("/v1/runs/batch", json={"items": echoes(2)}).status_code == 202


@pytest.mark.parametrize("items", [[], echoes(1001, keyed=False)], ids=["empty", "1001"])
def test_no_items_or_too_many_is_422(api: ApiClient, runtime: Runtime,
                                     items: list[Any]) -> None:
    response = api.post("/v1/runs/batch", json={"items": items})
    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["items"]
    assert stored(runtime, api) == 0


def test_batch_completed_is_sent_once_when_the_last_run_ends(
    api: ApiClient, receiver: Receiver, settings: Settings
) -> None:
    # Given an endpoint for batch.completed, and a batch whose last item waits to be let go
    hook = api.post("/v1/webhook-endpoints", json={
        "url": receiver.url + "/batches", "events": ["batch.completed"]}).get_json()
    items = [*echoes(3, keyed=False), {"agent": "test.fail"}, {"agent": "test.block"}]
    body = api.post("/v1/runs/batch", json={"items": items}).get_json()
    blocked = body["runs"][4]["id"]
    # When all but the last have ended, the batch is not complete, and nothing is sent
    wait_for(lambda: api.get(f"/v1/batches/{body['id']}").get_json()["counts"] == {
        "succeeded": 3, "failed": 1, "running": 1}, what="four runs to end")
    going = api.get(f"/v1/batches/{body['id']}")
    assert going.get_json()["completed_at"] is None and going.headers["Retry-After"] == "2"
    holds(lambda: not receiver.at("/batches"), seconds=0.5, what="no batch.completed yet")
    # When the last one ends
    redis.Redis.from_url(settings.redis_url).set(f"test:release:{blocked}", 1, ex=60)
    # Then batch.completed is sent, once, signed, with the batch counted by status
    [request] = wait_for(lambda: receiver.at("/batches"), what="batch.completed")
    holds(lambda: len(receiver.at("/batches")) == 1, seconds=0.5, what="exactly once")
    assert spec_verify(hook["secret"], request.headers, request.body)
    payload = json.loads(request.body)
    batch = api.get(f"/v1/batches/{body['id']}").get_json()
    assert payload["type"] == "batch.completed" and payload["data"] == batch
    assert batch["counts"] == {"succeeded": 4, "failed": 1} and batch["completed_at"]
    # ... filed under the run whose end completed the batch
    [delivery] = api.get("/v1/deliveries", query_string={"run_id": blocked}).get_json()["items"]
    assert delivery["type"] == "batch.completed"


def test_a_replayed_run_is_waited_for_and_a_complete_batch_stays_complete(
        api: ApiClient, runtime: Runtime, settings: Settings) -> None:
    body = api.post("/v1/runs/batch", json={"items": [{"agent": "test.fail"},
                                                      {"agent": "test.block"}]}).get_json()
    failed, blocked = (run["id"] for run in body["runs"])

    def going() -> int:
        with runtime.db.autocommit() as session:
            return int(session.scalar(select(Batch.going).where(Batch.id == body["id"])) or 0)

    def ended_again(attempts: int) -> bool:
        run = api.get(f"/v1/runs/{failed}").get_json()
        return run["status"] == "failed" and run["attempt"] > attempts

    wait_for(lambda: ended_again(0), what="the first run to fail")
    assert going() == 1
    # When the failed run is replayed, the batch waits for it again, and hears of its end
    attempts = api.get(f"/v1/runs/{failed}").get_json()["attempt"]
    assert api.post(f"/v1/runs/{failed}/replay").status_code == 202
    wait_for(lambda: ended_again(attempts), what="the replay to fail")
    assert going() == 1 and api.get(f"/v1/batches/{body['id']}").get_json()["completed_at"] is None
    # When the last one ends, the batch completes
    redis.Redis.from_url(settings.redis_url).set(f"test:release:{blocked}", 1, ex=60)
    done = completed(api, body["id"])
    assert done["counts"] == {"failed": 1, "succeeded": 1} and going() == 0
    # And a replay of a complete batch's run leaves the batch as it was
    attempts = api.get(f"/v1/runs/{failed}").get_json()["attempt"]
    assert api.post(f"/v1/runs/{failed}/replay").status_code == 202
    wait_for(lambda: ended_again(attempts), what="the second replay to fail")
    assert api.get(f"/v1/batches/{body['id']}").get_json() == done and going() == 0


def test_the_sweeper_completes_a_batch_whose_count_missed_an_end(
        api: ApiClient, runtime: Runtime, receiver: Receiver, settings: Settings) -> None:
    api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/missed",
                                            "events": ["batch.completed"]})
    body = api.post("/v1/runs/batch", json={"items": [{"agent": "test.block"}]}).get_json()
    # Given a batch whose count missed an end (made by a process older than the count)
    with runtime.db.transaction() as session:
        session.execute(update(Batch).where(Batch.id == body["id"]).values(
            going=Batch.going + 1))
    redis.Redis.from_url(settings.redis_url).set(f"test:release:{body['runs'][0]['id']}", 1,
                                                 ex=60)
    api.wait(body["runs"][0]["id"])
    assert api.get(f"/v1/batches/{body['id']}").get_json()["completed_at"] is None
    # When it is a while old and the sweeper's repair looks (here, or the worker's beat's),
    # the batch completes, and batch.completed is sent once
    with runtime.db.transaction() as session:
        session.execute(update(Batch).where(Batch.id == body["id"]).values(
            created_at=func.now() - timedelta(minutes=5)))
    batch_end.complete_forgotten(runtime)
    done = completed(api, body["id"], timeout=30)
    assert done["counts"] == {"succeeded": 1}
    [request] = wait_for(lambda: receiver.at("/missed"), what="batch.completed")
    assert json.loads(request.body)["data"] == done
    batch_end.complete_forgotten(runtime)  # (again: nothing more for this batch)
    holds(lambda: len(receiver.at("/missed")) == 1, seconds=0.5, what="exactly once")
    # And one whose runs were purged before it was completed is completed, with nothing sent
    gone = api.post("/v1/runs/batch", json={"items": [{"agent": "echo"}]}).get_json()
    api.wait(gone["runs"][0]["id"])
    with runtime.db.transaction() as session:
        session.execute(update(Batch).where(Batch.id == gone["id"]).values(
            going=1, completed_at=None, created_at=func.now() - timedelta(minutes=5)))
        session.execute(text("DELETE FROM runs WHERE batch_id = :id"), {"id": gone["id"]})
    batch_end.complete_forgotten(runtime)
    assert completed(api, gone["id"], timeout=30)["counts"] == {}


def test_another_tenants_batch_is_404_and_its_runs_invisible(
    api: ApiClient, other_api: ApiClient
) -> None:
    body = api.post("/v1/runs/batch", json={"items": echoes(2)}).get_json()
    assert other_api.get(f"/v1/batches/{body['id']}").status_code == 404
    assert other_api.get("/v1/runs", query_string={"batch_id": body["id"]}).get_json()[
        "items"] == []
    assert other_api.get(f"/v1/runs/{body['runs'][0]['id']}").status_code == 404
    assert other_api.get("/v1/batches/bat_nope").status_code == 404
    # The same keys are the other tenant's own: they make its own runs
    theirs = other_api.post("/v1/runs/batch", json={"items": echoes(2)}).get_json()
    assert theirs["replayed"] == [] and theirs["id"] != body["id"]


def test_a_batch_over_the_queued_cap_is_refused_whole(settings: Settings,
                                                      runtime: Runtime) -> None:
    capped = ApiClient(create_app(runtime=build_runtime(settings.model_copy(
        update={"tenant_max_queued": 5}))).test_client(), make_tenant(runtime))
    parked = [{"agent": "test.parked"} for _ in range(4)]
    assert capped.post("/v1/runs/batch", json={"items": parked}).status_code == 202
    refused = capped.post("/v1/runs/batch", json={"items": parked[:2]})
    assert refused.status_code == 429 and refused.headers["Retry-After"]
    assert "AGENTQ_TENANT_MAX_QUEUED" in refused.get_json()["detail"]
    assert stored(runtime, capped) == 4
    assert capped.post("/v1/runs/batch", json={"items": parked[:1]}).status_code == 202


def test_runs_of_a_session_in_a_batch_run_one_at_a_time_in_the_items_order(
    api: ApiClient
) -> None:
    items = [{"agent": "test.chat", "session_id": "s-batch", "input": {"message": m}}
             for m in ("first", "second", "third")]
    body = api.post("/v1/runs/batch", json={"items": items}).get_json()
    completed(api, body["id"])
    assert api.run(body["runs"][2]["id"])["result"]["history"] == ["first", "second", "third"]
    # A session's other policies are POST /v1/runs's: a batch refuses them by name
    refused = api.post("/v1/runs/batch", json={"items": [{**items[0], "multitask": "reject"}]})
    assert refused.status_code == 422
    assert [e["field"] for e in refused.get_json()["errors"]] == ["items[0].multitask"]
