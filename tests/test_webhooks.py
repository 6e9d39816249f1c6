"""Signed outbound webhooks to a real local receiver: sent once, retried, disabled, listed."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.conftest import ApiClient
from tests.harness import Receiver, holds, wait_for
from tests.test_signing import spec_verify

pytestmark = pytest.mark.usefixtures("worker")


def endpoint(api: ApiClient, url: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/webhook-endpoints", json={"url": url, **fields})
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    _secrets[api.tenant.id] = body["secret"]
    return body


def deliveries(api: ApiClient, **query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get("/v1/deliveries", query_string=query).get_json()["items"]
    return items


_secrets: dict[str, str] = {}


def secret_of(api: ApiClient) -> str:
    return _secrets[api.tenant.id]


def item_time(item: Any) -> int:
    return int(item.at)


def settled(api: ApiClient, run_id: str, count: int = 1, timeout: float = 30) -> list[Any]:
    """Wait until the run's deliveries are all delivered or dead."""
    def done() -> list[Any] | None:
        items = deliveries(api, run_id=run_id)
        finished = [d for d in items if d["status"] in {"delivered", "dead"}]
        return items if len(finished) == count == len(items) else None

    return wait_for(done, timeout=timeout, what=f"{count} settled deliveries of {run_id}")


def test_a_run_that_ends_is_delivered_once_signed(api: ApiClient, receiver: Receiver) -> None:
    hook = endpoint(api, receiver.url + "/hook")
    run = api.post("/v1/runs?wait=10", json={"agent": "echo", "input": {"n": 1}}).get_json()
    [delivery] = settled(api, run["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1
    [request] = wait_for(lambda: receiver.at("/hook"), what="the request")
    holds(lambda: len(receiver.at("/hook")) == 1, seconds=0.5, what="exactly once")
    headers = request.headers
    assert headers["webhook-id"] == delivery["id"]
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("agentq")
    assert spec_verify(hook["secret"], headers, request.body)
    payload = json.loads(request.body)
    assert payload["type"] == "run.succeeded"
    assert payload["data"] == api.run(run["id"])  # the run as GET /v1/runs/{id} returns it
    assert payload["timestamp"]


def test_failures_are_retried_with_the_same_id_and_a_fresh_timestamp(
    api: ApiClient, receiver: Receiver
) -> None:
    endpoint(api, receiver.url + "/flaky")
    receiver.script("/flaky", [500, 500, 200])
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    [delivery] = settled(api, run["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    seen = receiver.at("/flaky")
    assert len(seen) == 3
    assert len({item.headers["webhook-id"] for item in seen}) == 1
    stamps = [int(item.headers["webhook-timestamp"]) for item in seen]
    assert stamps == sorted(stamps) and abs(stamps[-1] - item_time(seen[-1])) <= 1
    # each attempt is signed over its own timestamp
    assert all(spec_verify(secret_of(api), item.headers, item.body) for item in seen)
    detail = api.get(f"/v1/deliveries/{delivery['id']}").get_json()
    assert [a["status_code"] for a in detail["attempt_log"]] == [500, 500, 200]
    assert detail["attempt_log"][0]["response_body"] == "ok"
    assert all(a["latency_ms"] is not None for a in detail["attempt_log"])


def test_retry_after_is_honoured(api: ApiClient, receiver: Receiver) -> None:
    endpoint(api, receiver.url + "/later")
    receiver.script("/later", [(503, {"Retry-After": "2"}), 200])
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    settled(api, run["id"])
    first, second = receiver.at("/later")
    assert second.at - first.at >= 1.9  # the schedule alone would retry after 0.3 s


def test_exhausted_retries_make_the_delivery_dead_and_it_can_be_retried_by_hand(
    api: ApiClient, receiver: Receiver
) -> None:
    endpoint(api, receiver.url + "/down")
    receiver.script("/down", [500] * 4)  # 1 attempt + 3 retries (the tests' schedule)
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    [delivery] = settled(api, run["id"])
    assert delivery["status"] == "dead" and delivery["attempts"] == 4
    assert deliveries(api, status="dead", run_id=run["id"])[0]["id"] == delivery["id"]
    # When the receiver is back and someone retries it by hand
    response = api.post(f"/v1/deliveries/{delivery['id']}/retry")
    assert response.status_code == 202
    [again] = settled(api, run["id"])
    assert again["status"] == "delivered" and again["attempts"] == 5
    assert api.post(f"/v1/deliveries/{delivery['id']}/retry").status_code == 409


def test_410_disables_the_endpoint(api: ApiClient, receiver: Receiver) -> None:
    hook = endpoint(api, receiver.url + "/gone")
    receiver.script("/gone", [410])
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    [delivery] = settled(api, run["id"])
    assert delivery["status"] == "dead" and delivery["attempts"] == 1
    disabled = api.get(f"/v1/webhook-endpoints/{hook['id']}").get_json()
    assert disabled["disabled_at"] and "410" in disabled["disabled_reason"]
    # A disabled endpoint gets nothing more: no delivery is even recorded for it
    later = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    assert deliveries(api, run_id=later["id"]) == []
    assert len(receiver.at("/gone")) == 1


def test_a_slow_receiver_is_recorded_as_a_timeout(api: ApiClient, receiver: Receiver) -> None:
    endpoint(api, receiver.url + "/slow")
    receiver.slow("/slow", 3)  # AGENTQ_WEBHOOK_TIMEOUT_S is 2 in the tests
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    detail = wait_for(lambda: (d := deliveries(api, run_id=run["id"])) and d[0]["attempts"] >= 1
                      and d[0]["last_error"] and d[0], timeout=20, what="a timed-out attempt")
    assert "timed out" in detail["last_error"]
    assert detail["status"] in {"retrying", "dead", "pending"}
    receiver.slow("/slow", 0)


def test_only_the_chosen_events_are_sent(api: ApiClient, receiver: Receiver) -> None:
    endpoint(api, receiver.url + "/failures", events=["run.failed"])
    ok = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    bad = api.wait(api.submit("test.fail")["id"])
    [delivery] = settled(api, bad["id"])
    assert json.loads(receiver.at("/failures")[0].body)["type"] == "run.failed"
    assert deliveries(api, run_id=ok["id"]) == []
    assert delivery["type"] == "run.failed"


def test_a_runs_own_webhook_url_is_signed_with_the_tenant_secret(
    api: ApiClient, receiver: Receiver
) -> None:
    refused = api.post("/v1/runs", json={"agent": "echo",
                                         "webhook_url": receiver.url + "/mine"})
    assert refused.status_code == 422
    assert "POST /v1/webhook-secret" in refused.get_json()["errors"][0]["message"]
    created = api.post("/v1/webhook-secret")
    assert created.status_code == 201
    secret = created.get_json()["secret"]
    assert api.post("/v1/webhook-secret").status_code == 409
    run = api.submit("echo", webhook_url=receiver.url + "/mine")
    [request] = wait_for(lambda: receiver.at("/mine"), what="the run's own webhook")
    assert spec_verify(secret, request.headers, request.body)
    assert json.loads(request.body)["data"]["id"] == run["id"]


def test_rotation_signs_with_both_secrets_during_the_overlap(
    api: ApiClient, receiver: Receiver
) -> None:
    hook = endpoint(api, receiver.url + "/rotated")
    rotated = api.post(f"/v1/webhook-endpoints/{hook['id']}/rotate-secret").get_json()
    assert rotated["secret"] != hook["secret"] and rotated["previous_secret_expires_at"]
    api.post("/v1/runs?wait=10", json={"agent": "echo"})
    [request] = wait_for(lambda: receiver.at("/rotated"), what="a delivery")
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert spec_verify(hook["secret"], request.headers, request.body)
    assert spec_verify(rotated["secret"], request.headers, request.body)


def test_endpoints_are_listed_without_secrets_and_deleted(api: ApiClient,
                                                          receiver: Receiver) -> None:
    hook = endpoint(api, receiver.url + "/listed")
    listed = api.get("/v1/webhook-endpoints").get_json()["items"]
    assert [item["id"] for item in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    assert api.client.delete(f"/v1/webhook-endpoints/{hook['id']}",
                             headers=api.headers).status_code == 204
    assert api.get(f"/v1/webhook-endpoints/{hook['id']}").status_code == 404
    assert api.get("/v1/webhook-endpoints").get_json()["items"] == []


@pytest.mark.parametrize("url", [
    "http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:10.0.0.1]/x", "http://100.64.1.1/x", "ftp://example.com/x",
])
def test_an_internal_or_non_http_target_is_refused_at_creation(api: ApiClient, url: str) -> None:
    response = api.post("/v1/webhook-endpoints", json={"url": url})
    assert response.status_code == 422, response.get_json()


def test_unknown_event_types_are_refused(api: ApiClient, receiver: Receiver) -> None:
    response = api.post("/v1/webhook-endpoints", json={"url": receiver.url,
                                                       "events": ["run.exploded"]})
    assert response.status_code == 422


def test_endpoints_and_deliveries_are_isolated_by_tenant(
    api: ApiClient, other_api: ApiClient, receiver: Receiver
) -> None:
    hook = endpoint(api, receiver.url + "/mine-only")
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    [delivery] = settled(api, run["id"])
    assert other_api.get(f"/v1/webhook-endpoints/{hook['id']}").status_code == 404
    assert other_api.client.delete(f"/v1/webhook-endpoints/{hook['id']}",
                                   headers=other_api.headers).status_code == 404
    assert other_api.post(f"/v1/webhook-endpoints/{hook['id']}/rotate-secret").status_code \
        == 404
    assert other_api.get(f"/v1/deliveries/{delivery['id']}").status_code == 404
    assert other_api.post(f"/v1/deliveries/{delivery['id']}/retry").status_code == 404
    assert other_api.get("/v1/deliveries").get_json()["items"] == []
    assert other_api.get("/v1/webhook-endpoints").get_json()["items"] == []
    # And another tenant's runs never reach this tenant's endpoint: their end (committed
    # with its deliveries, as the outbox is) recorded none
    other_api.post("/v1/runs?wait=10", json={"agent": "echo"})
    assert other_api.get("/v1/deliveries").get_json()["items"] == []
    assert len(deliveries(api)) == 1
    assert len(receiver.at("/mine-only")) == 1
