"""The public JSON shape of stored objects, shared by the API and the notifier."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.base.models import (
    Batch,
    Delivery,
    DeliveryAttempt,
    Run,
    RunAttempt,
    RunStep,
    WebhookEndpoint,
)
from worker.runs.events import Event
from worker.runs.spend import Day


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with milliseconds, e.g. ``2026-11-24T10:00:00.123Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_view(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "agent": run.agent,
        "status": run.status,
        "input": run.input,
        "result": run.result,
        "error": run.error,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "timeout_s": run.timeout_s,
        "priority": run.priority,
        "session_id": run.session_id,
        "metadata": run.meta,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "next_attempt_at": iso(run.next_attempt_at),
        "start_at": iso(run.start_at),
        "expires_at": iso(run.expires_at),
        "schedule_id": run.schedule_id,
        "scheduled_for": iso(run.scheduled_for),
        "parent_id": run.parent_id,
        "root_id": run.root_id,
        "child_name": run.child_name,
        "batch_id": run.batch_id,
        "concurrency_key": run.concurrency_key,
        "forked_from": run.forked_from,
        "usage": {"llm_calls": run.llm_calls, "input_tokens": run.input_tokens,
                  "output_tokens": run.output_tokens},
    }


def batch_view(batch: Batch, counts: dict[str, int]) -> dict[str, Any]:
    """A batch, with its runs counted by status."""
    return {
        "id": batch.id,
        "size": batch.size,
        "created_at": iso(batch.created_at),
        "completed_at": iso(batch.completed_at),
        "counts": counts,
    }


def event_view(event: Event) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.type, "data": event.data, "at": iso(event.at)}


def attempt_view(attempt: RunAttempt) -> dict[str, Any]:
    error = None
    if attempt.error_type is not None:
        error = {"type": attempt.error_type, "message": attempt.error_message,
                 "traceback": attempt.traceback}
    return {
        "attempt": attempt.attempt,
        "worker": attempt.worker,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "outcome": attempt.outcome,
        "error": error,
    }


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint without its secret (shown only when it is made or rotated)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "created_at": iso(endpoint.created_at),
        "disabled_at": iso(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "previous_secret_expires_at": iso(endpoint.previous_expires_at),
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "run_id": delivery.run_id,
        "endpoint_id": delivery.endpoint_id,
        "url": delivery.url,
        "type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": iso(delivery.created_at),
        "delivered_at": iso(delivery.delivered_at),
    }


def delivery_attempt_view(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "started_at": iso(attempt.started_at),
        "latency_ms": attempt.latency_ms,
        "status_code": attempt.status_code,
        "error": attempt.error,
        "response_body": attempt.response_body,
    }


def step_view(step: RunStep) -> dict[str, Any]:
    return {
        "name": step.name,
        "attempt": step.attempt,
        "result": step.result,
        "duration_ms": step.duration_ms,
        "usage": step.usage,
        "finished_at": iso(step.finished_at),
    }


def usage_view(days: list[Day], budget: int) -> dict[str, Any]:
    today = days[0]
    return {
        "day": today.day.isoformat(),
        "llm_calls": today.llm_calls,
        "input_tokens": today.input_tokens,
        "output_tokens": today.output_tokens,
        "daily_token_budget": budget or None,
        "tokens_left": max(0, budget - today.tokens) if budget else None,
        "days": [{"day": day.day.isoformat(), "llm_calls": day.llm_calls,
                  "input_tokens": day.input_tokens, "output_tokens": day.output_tokens}
                 for day in days],
    }
