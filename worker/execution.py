"""One attempt of one run: claim it, call the agent, record how it ended."""

from __future__ import annotations

import json
import logging
import time
import traceback
from typing import Any

from sqlalchemy import select

from worker import events, runs
from worker.context import RunContext
from worker.errors import Cancelled, LeaseLost
from worker.models import AttemptOutcome, Run, RunStatus
from worker.runtime import Runtime

log = logging.getLogger("agentq.run")


def execute(rt: Runtime, *, run_id: str, worker: str) -> None:
    """Run one attempt of ``run_id`` if this worker can claim it; otherwise do nothing."""
    with rt.db.transaction() as session:
        claim = runs.claim(session, run_id=run_id, worker=worker)
    if claim is None:
        log.info("run not claimable, message dropped", extra={"run_id": run_id})
        return
    rt.bus.announce(run_id, claim.seq)
    started = time.monotonic()
    outcome = _attempt(rt, claim)
    try:
        with rt.db.transaction() as session:
            seq = runs.finish(session, claim=claim, outcome=outcome)
    except LeaseLost:
        log.warning("stale attempt's outcome refused", extra=_fields(claim, outcome, started))
        return
    rt.bus.announce(run_id, seq)
    log.info("run attempt finished", extra=_fields(claim, outcome, started))


def _attempt(rt: Runtime, claim: runs.Claim) -> runs.Outcome:
    ctx = _context(rt, claim)
    try:
        spec = rt.registry.get(claim.agent)
        result = spec.fn(ctx, spec.parse_input(claim.input))
        return runs.Outcome(RunStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, result=_json(result))
    except Cancelled as error:
        return _failure(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error)
    except Exception as error:
        ctx.log.exception("agent raised %s", type(error).__name__)
        return _failure(RunStatus.FAILED, AttemptOutcome.FAILED, error)


def _failure(status: RunStatus, outcome: AttemptOutcome, error: BaseException) -> runs.Outcome:
    return runs.Outcome(
        status,
        outcome,
        error={"type": type(error).__name__, "message": str(error)},
        traceback="".join(traceback.format_exception(error)),
    )


def _json(result: Any) -> Any:
    """Return the agent's result as plain JSON, or raise TypeError naming what is wrong."""
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    try:
        return json.loads(json.dumps(result))
    except (TypeError, ValueError) as error:
        raise TypeError(f"agent result is not JSON-serialisable: {error}") from None


def _context(rt: Runtime, claim: runs.Claim) -> RunContext:
    fields = {"run_id": claim.run_id, "tenant": claim.tenant_id, "agent": claim.agent,
              "attempt": claim.attempt, "request_id": claim.request_id}

    def emit(data: dict[str, Any]) -> int:
        with rt.db.transaction() as session:
            seq = events.append(session, run_id=claim.run_id, epoch=claim.epoch,
                                type=events.PROGRESS, data=data)
        rt.bus.announce(claim.run_id, seq)
        return seq

    def is_cancelled() -> bool:
        with rt.db.transaction() as session:
            requested = session.scalar(
                select(Run.cancel_requested_at).where(Run.id == claim.run_id)
            )
        return requested is not None

    return RunContext(
        run_id=claim.run_id,
        tenant_id=claim.tenant_id,
        agent=claim.agent,
        attempt=claim.attempt,
        max_attempts=claim.max_attempts,
        timeout_s=claim.timeout_s,
        session_id=claim.session_id,
        request_id=claim.request_id,
        log=logging.LoggerAdapter(logging.getLogger(f"agentq.agent.{claim.agent}"), fields),
        _emit=emit,
        _is_cancelled=is_cancelled,
    )


def _fields(claim: runs.Claim, outcome: runs.Outcome, started: float) -> dict[str, Any]:
    return {
        "run_id": claim.run_id,
        "tenant": claim.tenant_id,
        "agent": claim.agent,
        "attempt": claim.attempt,
        "request_id": claim.request_id,
        "status": outcome.status.value,
        "outcome": outcome.attempt_outcome.value,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
        "error": outcome.error,
    }
