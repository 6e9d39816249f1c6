"""Cluster-wide metrics: counters and histograms kept in Redis, rendered for Prometheus.

Every process (each gunicorn worker, each Celery pool process, on any machine) adds to the
same numbers: it buffers increments in memory and flushes them to one Redis hash every
second, so a hot path costs a dictionary update. ``GET /metrics`` reads the hash and adds
live gauges (queue depths, workers, runs by status). If Redis loses the hash, counters
restart from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

HASH = "agentq:metrics"
_FLUSH_S = 1.0
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class Definition:
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None  # a histogram's upper bounds (seconds)


DEFINITIONS = {
    "agentq_runs_submitted": Definition("Runs submitted.", ("agent",)),
    "agentq_runs_finished": Definition("Runs that ended, by final status.", ("agent", "status")),
    "agentq_run_retries": Definition("Attempts that ended in a retry.", ("agent",)),
    "agentq_runs_dead_lettered": Definition("Runs dead-lettered.", ("agent",)),
    "agentq_run_duration_seconds": Definition(
        "From a run's first start to its end.", ("agent",), _SECONDS),
    "agentq_run_queue_wait_seconds": Definition(
        "From a run's submission to its first start.", ("agent",), _SECONDS),
    "agentq_deliveries": Definition("Webhook delivery attempts, by outcome.", ("outcome",)),
    "agentq_delivery_latency_seconds": Definition(
        "Webhook receivers' answer time.", (), _SECONDS),
    "agentq_inbound_deliveries": Definition(
        "Inbound webhook deliveries, by provider and outcome.", ("provider", "outcome")),
    "agentq_llm_calls": Definition("LLM calls made (ctx.llm).", ("agent", "model")),
    "agentq_llm_tokens": Definition("LLM tokens used, by kind (input, output).",
                                    ("agent", "model", "kind")),
    "agentq_llm_call_seconds": Definition(
        "LLM call latency, retries within the call included.", ("agent", "model"), _SECONDS),
    "agentq_llm_time_to_first_token_seconds": Definition(
        "Streamed LLM calls: from the request to the first chunk of text, per try.",
        ("agent", "model"), _SECONDS),
    "agentq_llm_rate_limited": Definition(
        "LLM calls held by AGENTQ_LLM_LIMITS: waited within the attempt, or deferred to a "
        "later one, by limit (the model's name in AGENTQ_LLM_LIMITS, or *).",
        ("limit", "outcome")),
    "agentq_http_requests": Definition("HTTP requests.", ("route", "method", "status")),
    "agentq_http_request_duration_seconds": Definition(
        "HTTP request handling time (headers out, for streams).", ("route",), _SECONDS),
}


def _field(name: str, labels: tuple[str, ...], suffix: str = "") -> str:
    return json.dumps([name + suffix, *labels])


class Metrics:
    """Buffered increments, flushed to Redis by a thread of each process."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client
        self._lock = threading.Lock()
        self._buffer: dict[str, float] = defaultdict(float)
        self._pid = 0

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        """Add ``value`` to a counter."""
        self._add(_field(name, self._values(name, labels)), value)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        """Record one observation in a histogram."""
        definition = DEFINITIONS[name]
        assert definition.buckets is not None
        values = self._values(name, labels)
        for bound in definition.buckets:
            if seconds <= bound:
                self._add(_field(name, (*values, str(bound)), "_bucket"), 1)
        self._add(_field(name, (*values, "+Inf"), "_bucket"), 1)
        self._add(_field(name, values, "_sum"), seconds)
        self._add(_field(name, values, "_count"), 1)

    def _values(self, name: str, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(str(labels[label]) for label in DEFINITIONS[name].labels)

    def _add(self, field: str, value: float) -> None:
        with self._lock:
            self._buffer[field] += value
            if self._pid != os.getpid():  # first use in this process (or after a fork)
                self._pid = os.getpid()
                threading.Thread(target=self._flush_forever, name="agentq-metrics",
                                 daemon=True).start()

    def _flush_forever(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            threading.Event().wait(_FLUSH_S)
            self.flush()

    def flush(self) -> None:
        """Send the buffered increments to Redis (kept for the next try if it fails)."""
        with self._lock:
            pending, self._buffer = self._buffer, defaultdict(float)
        if not pending:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for field, value in pending.items():
                    pipe.hincrbyfloat(HASH, field, value)
                pipe.execute()
        except redis.RedisError as error:
            log.warning("metrics not flushed; will retry", extra={"error": str(error)})
            with self._lock:
                for field, value in pending.items():
                    self._buffer[field] += value

    def collect(self) -> Iterator[Metric]:
        """The stored counters and histograms as Prometheus metric families."""
        stored = self._redis.hgetall(HASH)
        grouped: dict[str, dict[tuple[str, ...], float]] = defaultdict(dict)
        for raw_field, raw_value in stored.items():
            name, *labels = json.loads(raw_field)
            grouped[name][tuple(labels)] = float(raw_value)
        for name, definition in DEFINITIONS.items():
            if definition.buckets is None:
                yield _counter(name, definition, grouped.get(name, {}))
            else:
                yield _histogram(name, definition, grouped)


def _counter(name: str, definition: Definition,
             samples: dict[tuple[str, ...], float]) -> Metric:
    family = CounterMetricFamily(name, definition.help, labels=list(definition.labels))
    for labels, value in sorted(samples.items()):
        family.add_metric(list(labels), value)
    return family


def _histogram(name: str, definition: Definition,
               grouped: dict[str, dict[tuple[str, ...], float]]) -> Metric:
    family = HistogramMetricFamily(name, definition.help, labels=list(definition.labels))
    sums, buckets = grouped.get(name + "_sum", {}), grouped.get(name + "_bucket", {})
    for labels, total in sorted(sums.items()):
        bounds = [str(bound) for bound in definition.buckets or ()] + ["+Inf"]
        family.add_metric(list(labels), [(bound, buckets.get((*labels, bound), 0.0))
                                         for bound in bounds], total)
    return family
