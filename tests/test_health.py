"""``/health`` checks the database, the broker and live workers for real."""

from __future__ import annotations

from flask import Flask

from agentq.embedded import free_port
from api import create_app
from worker.app import build_runtime
from worker.base.settings import Settings


def test_healthy_when_every_check_passes(app: Flask, worker: object) -> None:
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "workers"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["version"]


def test_no_worker_listening_is_503(settings: Settings, worker: object) -> None:
    # A broker (another Redis database) that no worker consumes from
    lonely = settings.redis_url.rsplit("/", 1)[0] + "/7"
    app = create_app(runtime=build_runtime(settings.model_copy(update={"broker_url": lonely})))
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 503
    assert body["checks"]["workers"]["ok"] is False
    assert "no worker answered" in body["checks"]["workers"]["error"]
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]


def test_broker_down_is_503_quickly(settings: Settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(runtime=build_runtime(settings.model_copy(update={"broker_url": dead})))
    response = app.test_client().get("/health")
    body = response.get_json()
    assert response.status_code == 503
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["broker"]["latency_ms"] < 5000
