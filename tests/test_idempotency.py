"""Idempotency-Key: repeats get the first answer and create nothing, even all at once."""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from api import create_app
from tests.conftest import ApiClient, Tenant
from tests.harness import Receiver
from worker.base.models import IdempotencyKey, Run
from worker.base.runtime import Runtime
from worker.runs import idempotency

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


def stored_answers(runtime: Runtime, tenant_id: str) -> str:
    """Every answer the idempotency layer keeps for the tenant, and its keys, as text."""
    with runtime.db.autocommit() as session:
        rows = session.execute(select(IdempotencyKey.key, IdempotencyKey.response)
                               .where(IdempotencyKey.tenant_id == tenant_id)).all()
    return json.dumps([[row.key, row.response] for row in rows])


def test_creating_an_endpoint_twice_returns_the_first_one_without_keeping_its_secret(
        api: ApiClient, receiver: Receiver, runtime: Runtime) -> None:
    body = {"url": receiver.url + "/idem"}
    first = api.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "ep-1"})
    again = api.post("/v1/webhook-endpoints", json=body, headers={"Idempotency-Key": "ep-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert first.get_json()["secret"].startswith("whsec_")
    assert again.get_json() == {**first.get_json(), "secret": None}  # shown once, not twice
    assert len(api.get("/v1/webhook-endpoints").get_json()["items"]) == 1
    assert first.get_json()["secret"] not in stored_answers(runtime, api.tenant.id)


@pytest.mark.parametrize(("path", "body", "secret"), [
    ("/v1/api-keys", {"name": "ci"}, "key"),
    ("/v1/webhook-secret", None, "secret"),
])
def test_no_secret_is_kept_in_clear_by_the_idempotency_layer(
        api: ApiClient, runtime: Runtime, path: str, body: Any, secret: str) -> None:
    # Given a request that makes a secret, sent with an Idempotency-Key
    key = f"make-{secrets.token_hex(4)}"
    first = api.post(path, json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    made = first.get_json()[secret]
    # Then neither the secret nor the Idempotency-Key is stored in clear
    kept = stored_answers(runtime, api.tenant.id)
    assert made not in kept and key not in kept
    # And a repeat answers with the same object, its secret withheld, making nothing new
    again = api.post(path, json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == {**first.get_json(), secret: None}
    if path == "/v1/api-keys":
        assert len(api.get("/v1/api-keys").get_json()["items"]) == 2  # the tenant's + this


def test_a_key_whose_first_request_died_is_free_again_once_its_hold_expires(
        runtime: Runtime, tenant: Tenant) -> None:
    api = ApiClient(create_app(runtime=runtime).test_client(), tenant)
    body = {"agent": "echo", "input": {"order": 9}}
    # Given a first request that took the key and then died (its process killed)
    with api.client.application.test_request_context("/v1/runs", method="POST", json=body):
        from api.idempotency import _fingerprint

        fingerprint = _fingerprint()
    died = idempotency.begin(runtime, tenant_id=tenant.id, key="order-9", fingerprint=fingerprint)
    assert isinstance(died, idempotency.Hold)
    # When a repeat arrives after the hold has expired (moved back in SQL, not waited for)
    with runtime.db.transaction() as session:
        session.execute(update(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant.id, IdempotencyKey.key == died.key).values(
            held_until=func.now() - timedelta(seconds=1)))
    repeat = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-9"})
    # Then it does the work (not 409 for a day), and a third request replays its answer
    assert repeat.status_code == 202, repeat.get_json()
    third = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-9"})
    assert third.headers["Idempotent-Replayed"] == "true"
    assert third.get_json()["id"] == repeat.get_json()["id"]
    # And the dead request's late writes change nothing
    idempotency.complete(runtime, died, status_code=202, response={"forged": True}, run_id=None)
    idempotency.abandon(runtime, died)
    fourth = api.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-9"})
    assert fourth.get_json()["id"] == repeat.get_json()["id"]
    assert count_runs(runtime, tenant.id) == 1
