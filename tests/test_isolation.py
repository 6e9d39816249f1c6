"""Every route refuses another tenant's ids with 404 (never 403: nothing is confirmed)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask

from tests.conftest import ApiClient
from tests.harness import Receiver, wait_for

pytestmark = pytest.mark.usefixtures("worker")

BODIES: dict[str, dict[str, Any]] = {
    "/v1/hook-sources/<source_id>/rotate-secret": {"secret": "another-secret-long-enough"},
    "/v1/runs/<run_id>/waitpoints/<name>": {"data": {}},
    "/v1/runs/<run_id>/fork": {"from_step": "llm:1"},
    "/v1/schedules/<schedule_id>": {"paused": True},
}


@pytest.fixture
def theirs(api: ApiClient, receiver: Receiver) -> dict[str, str]:
    """One of everything, owned by the first tenant."""
    run = api.post("/v1/runs?wait=10", json={"agent": "echo", "session_id": "s-1"}).get_json()
    endpoint = api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/x"}).get_json()
    api.post("/v1/runs?wait=10", json={"agent": "echo"})
    delivery = wait_for(lambda: api.get("/v1/deliveries").get_json()["items"],
                        what="a delivery")[0]
    source = api.post("/v1/hook-sources", json={"provider": "github",
                                                "secret": "0123456789abcdef0123",
                                                "agent": "echo"}).get_json()
    key = api.post("/v1/api-keys", json={"name": "x"}).get_json()
    schedule = api.post("/v1/schedules", json={"agent": "echo", "every_s": 3600}).get_json()
    batch = api.post("/v1/runs/batch", json={"items": [{"agent": "echo"}]}).get_json()
    return {"batch_id": batch["id"], "run_id": run["id"], "session_id": "s-1",
            "endpoint_id": endpoint["id"],
            "delivery_id": delivery["id"], "source_id": source["id"], "key_id": key["id"],
            "name": "answer", "schedule_id": schedule["id"]}


def test_every_route_refuses_another_tenants_ids(app: Flask, theirs: dict[str, str],
                                                 other_api: ApiClient) -> None:
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.arguments or not rule.rule.startswith("/v1/"):
            continue
        path = re.sub(r"<(\w+)>", lambda m: theirs[m.group(1)], rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = other_api.client.open(path, method=method, headers=other_api.headers,
                                             json=BODIES.get(rule.rule))
            assert response.status_code == 404, f"{method} {rule.rule}: {response.status_code}"
            checked += 1
    assert checked >= 15


def test_lists_show_nothing_of_another_tenant(theirs: dict[str, str],
                                              other_api: ApiClient) -> None:
    for path in ("/v1/runs", "/v1/deliveries", "/v1/webhook-endpoints", "/v1/hook-sources"):
        assert other_api.get(path).get_json()["items"] == [], path
    keys = other_api.get("/v1/api-keys").get_json()["items"]
    assert theirs["key_id"] not in {item["id"] for item in keys}
