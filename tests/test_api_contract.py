"""The API's refusals: authentication, tenant isolation, validation, problem+json."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.conftest import ApiClient


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json(force=True)
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


def test_no_key_is_401(app: Flask) -> None:
    response = app.test_client().get("/v1/runs")
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer aq_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer"])
def test_wrong_key_is_401(app: Flask, header: str) -> None:
    assert_problem(app.test_client().get("/v1/runs", headers={"Authorization": header}), 401)


def test_key_in_query_string_is_refused(api: ApiClient) -> None:
    # Even a valid key is refused when it also travels in the URL.
    body = assert_problem(api.get(f"/v1/runs?api_key={api.tenant.key}"), 401)
    assert "query string" in body["detail"]


def test_another_tenants_run_is_404(api: ApiClient, other_api: ApiClient) -> None:
    run = api.submit("echo")
    for path in ("", "/attempts", "/events"):
        assert_problem(other_api.get(f"/v1/runs/{run['id']}{path}"), 404)
    assert run["id"] not in {item["id"] for item in other_api.get("/v1/runs").get_json()["items"]}
    assert api.get(f"/v1/runs/{run['id']}").status_code == 200


def test_unknown_run_is_404(api: ApiClient) -> None:
    assert_problem(api.get("/v1/runs/run_doesnotexist"), 404)


def test_unknown_agent_is_422_listing_the_agents(api: ApiClient) -> None:
    body = assert_problem(api.post("/v1/runs", json={"agent": "nope"}), 422)
    assert {"echo", "sleep", "flaky", "demo.research", "support.triage"} <= set(body["agents"])
    assert body["errors"][0]["field"] == "agent"
    assert "demo.research" in body["errors"][0]["message"]


def test_bad_body_lists_every_problem(api: ApiClient) -> None:
    body = assert_problem(api.post("/v1/runs", json={
        "agent": "", "timeout_s": 0, "max_attempts": "many", "status": "succeeded",
    }), 422)
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"agent", "timeout_s", "max_attempts", "status"}
    status_error = next(e for e in body["errors"] if e["field"] == "status")
    assert "unknown field" in status_error["message"]


def test_input_is_checked_against_the_agents_schema(api: ApiClient) -> None:
    body = assert_problem(api.post("/v1/runs", json={"agent": "sleep",
                                                     "input": {"seconds": "long"}}), 422)
    assert body["errors"][0]["field"] == "input.seconds"


def test_timeout_over_the_cap_is_422(api: ApiClient) -> None:
    body = assert_problem(api.post("/v1/runs", json={"agent": "echo", "timeout_s": 999_999}),
                          422)
    assert "AGENTQ_MAX_TIMEOUT_S" in body["errors"][0]["message"]


def test_malformed_json_is_400(api: ApiClient) -> None:
    response = api.post("/v1/runs", data='{"agent": ', content_type="application/json")
    assert "not valid JSON" in assert_problem(response, 400)["detail"]


def test_non_json_body_is_415(api: ApiClient) -> None:
    response = api.post("/v1/runs", data="agent=echo",
                        content_type="application/x-www-form-urlencoded")
    assert_problem(response, 415)


def test_unknown_route_and_method_are_problems(api: ApiClient) -> None:
    assert_problem(api.get("/v1/nothing-here"), 404)
    response = api.client.delete("/v1/runs", headers=api.headers)
    assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


def test_request_id_is_echoed_or_made(api: ApiClient) -> None:
    given = api.get("/v1/runs", headers={"X-Request-ID": "req-123"})
    assert given.headers["X-Request-ID"] == "req-123"
    assert len(api.get("/v1/runs").headers["X-Request-ID"]) == 32
