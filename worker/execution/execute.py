"""One attempt of one run: claim it, call the agent under a live lease, record how it ended."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.agents import AgentSpec
from worker.agents.context import RunContext
from worker.base import jsonb, retry
from worker.base.errors import Cancelled, LeaseLost
from worker.base.models import AttemptOutcome, RunStatus
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.execution.supervisor import Active, Supervisor
from worker.llm.client import LLM
from worker.runs import attempts, dispatch, events, sessions, steps
from worker.runs.attempts import Claim, Outcome

log = logging.getLogger("agentq.run")

_RECORD_PATIENCE_S = 60.0  # how long to keep trying to record an outcome through a DB outage
_UNSTORABLE = "UnstorableOutcome"


def execute(rt: Runtime, *, run_id: str, worker: str) -> None:
    """Run one attempt of ``run_id`` if this worker can claim it; otherwise do nothing."""
    cap = rt.settings.tenant_max_running
    # One atomic statement, unless a running cap needs its lock held for a transaction.
    with (rt.db.transaction() if cap else rt.db.autocommit()) as session:
        claim = attempts.claim(session, run_id=run_id, worker=worker, running_cap=cap)
    if claim is None:
        log.info("run not claimable, message dropped", extra={"run_id": run_id})
        return
    started = time.monotonic()
    if claim.attempt == 1:
        rt.metrics.observe("agentq_run_queue_wait_seconds", claim.waited_s, agent=claim.agent)
    state = _session_state(rt, claim)
    supervisor = Supervisor.of(rt)
    active = supervisor.begin(claim)
    try:
        with Heartbeat(rt, claim, active) as lease:
            outcome = _attempt(rt, claim, lease, active, state)
            outcome, recorded = _record(rt, claim, outcome, state)
    finally:
        supervisor.end(active)
    if not recorded:
        return
    if outcome.status == RunStatus.RETRYING:
        rt.metrics.inc("agentq_run_retries", agent=claim.agent)
        dispatch.dispatch(rt, Dispatch(claim.run_id, claim.queue, claim.timeout_s,
                                       countdown_s=outcome.retry_in_s))
    log.info("run attempt finished", extra=_fields(claim, outcome, started))


class Heartbeat:
    """Renew the attempt's lease every ``AGENTQ_HEARTBEAT_INTERVAL_S`` from a thread."""

    def __init__(self, rt: Runtime, claim: Claim, active: Active) -> None:
        self._rt = rt
        self._claim = claim
        self._active = active
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.run_id}",
                                        daemon=True)
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._rt.settings.heartbeat_interval_s):
            try:
                with self._rt.db.autocommit() as session:
                    lease = attempts.heartbeat(session, run_id=self._claim.run_id,
                                               epoch=self._claim.epoch)
            except Exception as error:  # an outage: keep trying until the attempt ends
                log.warning("heartbeat failed", extra={"run_id": self._claim.run_id,
                                                       "error": f"{type(error).__name__}"})
                continue
            if lease.cancel_requested:  # the bus's notice may have been lost
                Supervisor.of(self._rt).cancel(self._claim.run_id)
            if not lease.held and not self._stop.is_set():
                self.lost = True
                log.warning("lease lost; the attempt should stop",
                            extra={"run_id": self._claim.run_id, "attempt": self._claim.attempt})
                return


@dataclass
class SessionState:
    """The session's state as the attempt loaded it, and the dict the agent changes."""

    version: int
    loaded: str
    current: dict[str, Any]

    @property
    def changed(self) -> bool:
        return json.dumps(self.current, sort_keys=True) != self.loaded


def _session_state(rt: Runtime, claim: Claim) -> SessionState | None:
    if claim.session_id is None:
        return None
    with rt.db.autocommit() as session:
        state, version = sessions.load(session, tenant_id=claim.tenant_id,
                                       session_id=claim.session_id)
    return SessionState(version, json.dumps(state, sort_keys=True), state)


def _attempt(rt: Runtime, claim: Claim, lease: Heartbeat, active: Active,
             state: SessionState | None) -> Outcome:
    ctx = _context(rt, claim, lease, active, state.current if state else {})
    try:
        spec = rt.registry.get(claim.agent)
        result = _json(spec.fn(ctx, spec.parse_input(claim.input)))
        if state is not None:
            jsonb.check(state.current, what="ctx.session")
    except Cancelled as error:
        return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error=_describe(error))
    except Exception as error:
        if active.cancelled.is_set():
            return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error=_describe(error))
        ctx.log.exception("agent raised %s", type(error).__name__)
        return _failed(rt, claim, error)
    if active.cancelled.is_set():  # it stopped early, as asked: what it returned is kept
        return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, result=result,
                       error={"type": "Cancelled", "message": "cancelled while running"})
    return Outcome(RunStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, result=result)


def _failed(rt: Runtime, claim: Claim, error: Exception) -> Outcome:
    """Decide where a failed attempt sends the run: failed, retrying, or dead-lettered."""
    spec: AgentSpec | None = rt.registry.get(claim.agent) if claim.agent in rt.registry else None
    timed_out = retry.is_timeout(error)
    kind = AttemptOutcome.TIMED_OUT if timed_out else AttemptOutcome.FAILED
    described = _describe(error)
    if timed_out:
        described = {"type": "Timeout", "message": f"attempt {claim.attempt} did not finish "
                                                   f"within timeout_s={claim.timeout_s}"}
    trace = "".join(traceback.format_exception(error))
    if spec is None or not retry.is_retryable(error, spec.retry_on):
        return Outcome(RunStatus.FAILED, kind, error=described, traceback=trace)
    if claim.attempts_left <= 0:
        return Outcome(RunStatus.DEAD_LETTERED, kind, error=described, traceback=trace)
    base_s, max_s = rt.settings.backoff_base_s, rt.settings.backoff_max_s
    if spec.backoff_base_s is not None:
        base_s = spec.backoff_base_s
    if spec.backoff_max_s is not None:
        max_s = spec.backoff_max_s
    wait = retry.delay_s(error, claim.attempt, base_s=base_s, max_s=max_s)
    return Outcome(RunStatus.RETRYING, kind, error=described, traceback=trace, retry_in_s=wait)


def _record(rt: Runtime, claim: Claim, outcome: Outcome,
            state: SessionState | None) -> tuple[Outcome, bool]:
    """Write the outcome (and, on success, the session's state) in one transaction, waiting
    out a short database outage; the outcome written, and False if nothing was."""
    deadline = time.monotonic() + _RECORD_PATIENCE_S
    pause = 0.5
    while True:
        try:
            with rt.db.transaction() as session:
                if outcome.status == RunStatus.RETRYING and attempts.cancel_requested(
                        session, claim=claim):  # asked to stop: no retry, it ends here
                    outcome = Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error={
                        "type": "Cancelled", "message": f"cancelled; attempt {claim.attempt} "
                        f"failed first ({(outcome.error or {}).get('type')}), not retried"})
                if (outcome.status == RunStatus.SUCCEEDED and state is not None
                        and claim.session_id is not None and state.changed):
                    sessions.save(session, tenant_id=claim.tenant_id,
                                  session_id=claim.session_id, state=state.current,
                                  version=state.version)
                attempts.finish(session, claim=claim, outcome=outcome)
            return outcome, True
        except sessions.SessionConflict as conflict:
            outcome = _failed(rt, claim, conflict)  # retried on the newer state
            state = None
        except LeaseLost:
            log.warning("stale attempt's outcome refused",
                        extra={"run_id": claim.run_id, "attempt": claim.attempt,
                               "status": outcome.status.value})
            return outcome, False
        except (OperationalError, InterfaceError) as error:
            if time.monotonic() > deadline:
                log.error("outcome not recorded; the sweeper will re-queue the run",
                          extra={"run_id": claim.run_id, "error": type(error).__name__})
                return outcome, False
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
        except DBAPIError as error:  # Postgres refused what the outcome holds
            if (outcome.error or {}).get("type") == _UNSTORABLE:
                raise  # even the plain failure was refused: let the sweeper see it
            log.error("outcome refused by the database; the run fails",
                      extra={"run_id": claim.run_id, "error": type(error.orig).__name__})
            outcome = Outcome(RunStatus.FAILED, AttemptOutcome.FAILED, error={
                "type": _UNSTORABLE,
                "message": f"the attempt's outcome could not be stored "
                           f"({type(error.orig).__name__}); it held a value Postgres refuses"})
            state = None


def _describe(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def _json(result: Any) -> Any:
    """Return the agent's result as plain JSON, or raise TypeError naming what is wrong."""
    return steps.as_json(result, what="the agent's result")


def _context(rt: Runtime, claim: Claim, lease: Heartbeat, active: Active,
             session_state: dict[str, Any]) -> RunContext:
    fields = {"run_id": claim.run_id, "tenant": claim.tenant_id, "agent": claim.agent,
              "attempt": claim.attempt, "request_id": claim.request_id}

    def emit(data: dict[str, Any]) -> int:
        jsonb.check(data, what="the event")  # ValueError into the agent, naming the field
        with rt.db.autocommit() as session:  # one atomic statement
            event = events.append(session, run_id=claim.run_id, epoch=claim.epoch,
                                  type=events.PROGRESS, data=data)
        return event.seq

    def is_cancelled() -> bool:
        return lease.lost or active.cancelled.is_set()

    log = logging.LoggerAdapter(logging.getLogger(f"agentq.agent.{claim.agent}"), fields)
    runner = steps.StepRunner(rt.db, run_id=claim.run_id, epoch=claim.epoch,
                              attempt=claim.attempt, emit=emit)
    deadline = time.monotonic() + claim.timeout_s
    llm = LLM(rt, steps=runner, tenant_id=claim.tenant_id, agent=claim.agent, log=log,
              time_left=lambda: deadline - time.monotonic(), cancelled=is_cancelled)
    return RunContext(
        run_id=claim.run_id,
        tenant_id=claim.tenant_id,
        agent=claim.agent,
        attempt=claim.attempt,
        max_attempts=claim.max_attempts,
        timeout_s=claim.timeout_s,
        session_id=claim.session_id,
        request_id=claim.request_id,
        log=log,
        session=session_state,
        _emit=emit,
        _is_cancelled=is_cancelled,
        _steps=runner,
        _llm=llm,
    )


def _fields(claim: Claim, outcome: Outcome, started: float) -> dict[str, Any]:
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
        "retry_in_s": outcome.retry_in_s,
    }
