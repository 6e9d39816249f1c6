"""``/openapi.json`` is a valid OpenAPI 3.1 document that covers every route."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from flask import Flask
from openapi_spec_validator import validate

from tests.conftest import ApiClient
from tests.harness import Receiver, wait_for


def _document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def test_document_is_valid_openapi_3_1(app: Flask) -> None:
    document = _document(app)
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_is_documented(app: Flask) -> None:
    documented = {
        (path, method.upper())
        for path, item in _document(app)["paths"].items() for method in item
    }
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("dashboard."):
            continue  # the dashboard is HTML for browsers, not part of the API's contract
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not in /openapi.json"


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}", "components": document["components"]}


def test_responses_match_their_documented_schemas(app: Flask, api: ApiClient,
                                                  worker: object) -> None:
    document = _document(app)
    run = api.post("/v1/runs?wait=10", json={"agent": "echo", "input": {"a": [1, 2]}}).get_json()
    jsonschema.validate(run, _schema(document, "RunOut"))
    jsonschema.validate(api.get("/v1/runs").get_json(), _schema(document, "RunPage"))
    jsonschema.validate(api.get(f"/v1/runs/{run['id']}/attempts").get_json(),
                        _schema(document, "AttemptList"))
    jsonschema.validate(api.get(f"/v1/runs/{run['id']}/events").get_json(),
                        _schema(document, "EventList"))
    problem = api.post("/v1/runs", json={"agent": "nope"}).get_json()
    jsonschema.validate(problem, _schema(document, "ProblemOut"))
    jsonschema.validate(app.test_client().get("/health").get_json(),
                        _schema(document, "HealthOut"))


def test_webhook_responses_match_their_schemas(app: Flask, api: ApiClient, worker: object,
                                               receiver: Receiver) -> None:
    document = _document(app)
    hook = api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/s"}).get_json()
    jsonschema.validate(hook, _schema(document, "EndpointOut"))
    jsonschema.validate(api.get("/v1/webhook-endpoints").get_json(),
                        _schema(document, "EndpointList"))
    run = api.post("/v1/runs?wait=10", json={"agent": "echo"}).get_json()
    page = wait_for(lambda: (p := api.get(f"/v1/deliveries?run_id={run['id']}").get_json())
                    ["items"] and p["items"][0]["status"] == "delivered" and p,
                    what="the delivery")
    jsonschema.validate(page, _schema(document, "DeliveryPage"))
    detail = api.get(f"/v1/deliveries/{page['items'][0]['id']}").get_json()
    jsonschema.validate(detail, _schema(document, "DeliveryOut"))
    jsonschema.validate(api.post("/v1/webhook-secret").get_json(),
                        _schema(document, "SecretOut"))
