"""``GET /metrics``: Prometheus text, the same from every API process.

Counters and histograms come from Redis (every process of the cluster adds to them); queue
depths, live workers and the runs waiting are read when scraped. Set
``AGENTQ_METRICS_TOKEN`` to require ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from api.deps import runtime
from api.errors import unauthorized
from worker.base.runtime import Runtime
from worker.runs import observe

bp = Blueprint("metrics", __name__)


class LiveCollector(Collector):
    """One scrape: the stored counters, and the readings of this moment."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def collect(self) -> Iterator[Metric]:
        yield from self._rt.metrics.collect()
        depth = GaugeMetricFamily("agentq_queue_depth", "Messages waiting in a queue.",
                                  labels=["queue"])
        for queue, count in observe.queue_depths(self._rt).items():
            depth.add_metric([queue], count)
        yield depth
        workers = observe.live_workers(self._rt, timeout_s=0.5)
        yield GaugeMetricFamily("agentq_workers", "Workers answering a ping.",
                                value=len(workers))
        by_status, oldest = observe.waiting(self._rt)
        runs = GaugeMetricFamily("agentq_runs", "Runs not yet ended, by status.",
                                 labels=["status"])
        for status, count in by_status.items():
            runs.add_metric([status], count)
        yield runs
        yield GaugeMetricFamily("agentq_oldest_queued_age_seconds",
                                "How long the oldest queued run has waited.", value=oldest or 0)


@bp.get("/metrics")
def metrics() -> Response:
    rt = runtime()
    token = rt.settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise unauthorized("send the metrics token as 'Authorization: Bearer <token>'")
    rt.metrics.flush()  # this process's latest increments, before reading them back
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveCollector(rt))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
