"""``/metrics``: Prometheus text, counted across processes, plus live readings."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from api import create_app
from tests.conftest import ApiClient
from tests.harness import Receiver, wait_for
from worker.app import build_runtime
from worker.base.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")


def scrape(app: Flask) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
          **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_runs_and_requests_are_counted_across_processes(app: Flask, api: ApiClient,
                                                        receiver: Receiver) -> None:
    before = scrape(app)
    api.post("/v1/webhook-endpoints", json={"url": receiver.url + "/m"})
    api.post("/v1/runs?wait=10", json={"agent": "echo"})
    api.wait(api.submit("flaky", {"failures": 1})["id"])
    api.wait(api.submit("test.fail")["id"])

    def counted() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        after = scrape(app)  # the worker flushes its counts to Redis every second
        grew = value(after, "agentq_runs_finished_total", agent="test.fail", status="failed") \
            > value(before, "agentq_runs_finished_total", agent="test.fail", status="failed")
        return after if grew and value(after, "agentq_deliveries_total",
                                       outcome="delivered") > 0 else None

    after = wait_for(counted, timeout=15, what="the worker's counts in /metrics")
    assert value(after, "agentq_runs_submitted_total", agent="echo") > \
        value(before, "agentq_runs_submitted_total", agent="echo")
    assert value(after, "agentq_run_retries_total", agent="flaky") >= 1
    assert value(after, "agentq_run_duration_seconds_count", agent="echo") >= 1
    assert value(after, "agentq_run_queue_wait_seconds_count", agent="echo") >= 1
    assert value(after, "agentq_http_requests_total", route="/v1/runs", method="POST",
                 status="202") >= 1
    assert value(after, "agentq_delivery_latency_seconds_count") >= 1
    assert "agentq_queue_depth" in after and "agentq_oldest_queued_age_seconds" in after
    assert value(after, "agentq_workers") >= 1
    assert set(dict(k)["queue"] for k in after["agentq_queue_depth"]) >= {
        "runs.high", "runs.normal", "runs.low", "notify", "maintenance"}


def test_metrics_can_require_a_token(settings: Settings) -> None:
    guarded = create_app(runtime=build_runtime(settings.model_copy(
        update={"metrics_token": "scrape-me"}))).test_client()
    assert guarded.get("/metrics").status_code == 401
    ok = guarded.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and re.search(r"^agentq_workers \d", ok.get_data(as_text=True),
                                               re.M)


def test_health_reports_the_backlog_and_liveness_needs_nothing(app: Flask) -> None:
    body = app.test_client().get("/health").get_json()
    assert set(body["queues"]) >= {"runs.normal", "notify"}
    assert "oldest_queued_age_s" in body
    assert app.test_client().get("/health/live").get_json() == {"status": "ok"}
