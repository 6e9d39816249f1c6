"""Idempotency-Key: repeats get the first answer and create nothing, even all at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from tests.conftest import ApiClient
from tests.harness import Receiver
from worker.models import Run
from worker.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


def count_runs(runtime: Runtime, tenant_id: str) -> int:
    with runtime.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Run)
                                  .where(Run.tenant_id == tenant_id)) or 0)


def test_ten_identical_requests_at_once_make_one_run(api: ApiClient, runtime: Runtime) -> None:
    body = {"agent": "sleep", "input": {"seconds": 0.2}}

    def post(_: int) -> tuple[int, str, str | None]:
        response = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-77"})
        return (response.status_code, response.get_json()["id"],
                response.headers.get("Idempotent-Replayed"))

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(post, range(10)))
    assert len({run_id for _, run_id, _ in answers}) == 1
    assert {code for code, _, _ in answers} <= {200, 202}
    assert sum(replayed == "true" for _, _, replayed in answers) == 9
    assert count_runs(runtime, api.tenant.id) == 1


def test_a_repeat_shows_the_run_as_it_stands(api: ApiClient) -> None:
    first = api.post("/v1/runs", json={"agent": "echo", "input": {"a": 1}},
                     headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    api.wait(first.get_json()["id"])
    again = api.post("/v1/runs", json={"agent": "echo", "input": {"a": 1}},
                     headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200  # finished by now
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["status"] == "succeeded"
    assert again.get_json()["id"] == first.get_json()["id"]


def test_the_same_key_with_another_body_is_422(api: ApiClient) -> None:
    api.post("/v1/runs", json={"agent": "echo", "input": {"a": 1}},
             headers={"Idempotency-Key": "k-2"})
    response = api.post("/v1/runs", json={"agent": "echo", "input": {"a": 2}},
                        headers={"Idempotency-Key": "k-2"})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == "Idempotency-Key"


def test_whitespace_does_not_make_another_body(api: ApiClient) -> None:
    one = api.post("/v1/runs", data='{"agent": "echo", "input": {"a": 1}}',
                   content_type="application/json", headers={"Idempotency-Key": "k-3"})
    two = api.post("/v1/runs", data='{"input":{"a":1},"agent":"echo"}',
                   content_type="application/json", headers={"Idempotency-Key": "k-3"})
    assert two.get_json()["id"] == one.get_json()["id"]


def test_keys_belong_to_a_tenant(api: ApiClient, other_api: ApiClient) -> None:
    ours = api.post("/v1/runs", json={"agent": "echo"}, headers={"Idempotency-Key": "shared"})
    theirs = other_api.post("/v1/runs", json={"agent": "echo"},
                            headers={"Idempotency-Key": "shared"})
    assert ours.get_json()["id"] != theirs.get_json()["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_a_failed_request_leaves_the_key_free(api: ApiClient) -> None:
    bad = api.post("/v1/runs", json={"agent": "nope"}, headers={"Idempotency-Key": "k-4"})
    assert bad.status_code == 422
    fixed = api.post("/v1/runs", json={"agent": "nope"}, headers={"Idempotency-Key": "k-4"})
    assert fixed.status_code == 422 and "Idempotent-Replayed" not in fixed.headers


def test_creating_an_endpoint_twice_returns_the_first_one(api: ApiClient,
                                                          receiver: Receiver) -> None:
    body = {"url": receiver.url + "/idem"}
    first = api.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "ep-1"})
    again = api.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "ep-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(api.get("/v1/webhook-endpoints").get_json()["items"]) == 1
