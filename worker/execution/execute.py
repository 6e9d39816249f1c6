"""One attempt of one run, in parts the engine (``worker.execution.engine``) puts together:
claim it, load its session, give the agent its context, turn what the agent did into an
outcome, and record the outcome under the attempt's lease.

Everything here is sync and talks to Postgres; the engine calls it from a thread (its own
database threads, or the sync agent's thread), never on its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from opentelemetry.trace import Span, SpanKind
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from worker.agents import AgentSpec
from worker.agents.context import AsyncRunContext, RunContext
from worker.base import jsonb, retry, tracing
from worker.base.errors import Cancelled, Deferred, LeaseLost
from worker.base.models import AttemptOutcome, RunStatus
from worker.base.runtime import Runtime
from worker.llm.client import LLM, AsyncLLM
from worker.llm.stream import TokenSink
from worker.runs import attempts, children, events, sessions, steps, waits
from worker.runs.attempts import Claim, Outcome

log = logging.getLogger("agentq.run")

MAX_DEFERRALS = 100  # a run's Deferred attempts that are free; later ones count
_RECORD_PATIENCE_S = 60.0  # how long to keep trying to record an outcome through a DB outage
_UNSTORABLE = "UnstorableOutcome"


@dataclass(eq=False)
class Active:
    """An attempt this process is running, as the engine tracks it."""

    claim: Claim
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: bool = False  # its lease moved on: it must stop
    started: float = field(default_factory=time.monotonic)
    thread: int | None = None  # a sync agent's thread, while it runs the agent
    lock: threading.Lock = field(default_factory=threading.Lock)
    task: asyncio.Task[Any] | None = None  # an async agent's task
    given_up: asyncio.Future[Outcome] | None = None  # set when the engine stops waiting
    work: asyncio.Future[Any] | None = None  # the agent itself (its task, or its thread's)
    thread_hold: Any = None  # a sync run's hold on an agent thread (the engine's _Thread)

    @property
    def stopping(self) -> bool:
        return self.lost or self.cancelled.is_set()


def claim(rt: Runtime, *, run_id: str, worker: str) -> Claim | None:
    """Take the run's next attempt if this worker can; None if it is not claimable. In a
    transaction: a running cap or a concurrency key holds its lock for it."""
    cap = rt.settings.tenant_max_running
    with rt.db.transaction() as session:
        claimed = attempts.claim(session, run_id=run_id, worker=worker, running_cap=cap)
    _claimed(rt, run_id, claimed)
    return claimed


def claim_many(rt: Runtime, *, run_ids: list[str], worker: str) -> dict[str, Claim]:
    """``claim`` for many runs (no running cap configured): in one statement that needs no
    transaction, then those with a concurrency key, which it leaves, all in one
    transaction under their keys' locks."""
    assert not rt.settings.tenant_max_running
    with rt.db.autocommit() as session:
        claims = attempts.claim_many(session, run_ids=run_ids, worker=worker)
        left = [run_id for run_id in run_ids if run_id not in claims]
        keyed = attempts.keyed(session, run_ids=left) if left else []
    if keyed:
        with rt.db.transaction() as session:
            claims.update(attempts.claim_keyed(session, run_ids=keyed, worker=worker))
    for run_id in run_ids:
        _claimed(rt, run_id, claims.get(run_id))
    return claims


def _claimed(rt: Runtime, run_id: str, claimed: Claim | None) -> None:
    if claimed is None:
        log.info("run not claimable, message dropped", extra={"run_id": run_id})
    elif claimed.attempt == 1:
        rt.metrics.observe("agentq_run_queue_wait_seconds", claimed.waited_s,
                           agent=claimed.agent)


@dataclass
class SessionState:
    """The session's state as the attempt loaded it, and the dict the agent changes."""

    version: int
    loaded: str
    current: dict[str, Any]

    @property
    def changed(self) -> bool:
        return json.dumps(self.current, sort_keys=True) != self.loaded


def session_state(rt: Runtime, claim: Claim) -> SessionState | None:
    if claim.session_id is None:
        return None
    with rt.db.autocommit() as session:
        state, version = sessions.load(session, tenant_id=claim.tenant_id,
                                       session_id=claim.session_id)
    return SessionState(version, json.dumps(state, sort_keys=True), state)


def call_sync(rt: Runtime, spec: AgentSpec, ctx: RunContext, active: Active,
              state: SessionState | None) -> Outcome:
    """Call a sync agent (in its thread) and say how its attempt ended."""
    try:
        result = _json(spec.fn(ctx, spec.parse_input(active.claim.input)))
        if state is not None:
            jsonb.check(state.current, what="ctx.session")
    except waits.Suspend as suspend:
        return suspended(active, suspend)
    except BaseException as error:  # each way out (a timeout raised in) becomes an outcome
        return ended_by(rt, active, error, ctx.log)
    return succeeded(active, result)


async def call_async(rt: Runtime, spec: AgentSpec, ctx: AsyncRunContext, active: Active,
                     state: SessionState | None) -> Outcome:
    """Await an async agent under its attempt's timeout and say how its attempt ended."""
    claim = active.claim
    limit = asyncio.timeout(claim.timeout_s)
    try:
        async with limit:
            value = await spec.fn(ctx, spec.parse_input(claim.input))
        result = _json(value)
        if state is not None:
            jsonb.check(state.current, what="ctx.session")
    except waits.Suspend as suspend:
        return suspended(active, suspend)
    except TimeoutError as error:  # the attempt's limit, or one of the agent's own
        stopped = SoftTimeLimitExceeded() if limit.expired() else error
        return ended_by(rt, active, stopped, ctx.log)
    except asyncio.CancelledError as error:
        if active.stopping:  # a cancel (or the worker stopping) reached the coroutine
            return ended_by(rt, active, Cancelled(str(error) or "cancelled while running"),
                            ctx.log)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # this task itself is being cancelled, not by agentq: let it be
        # Something the agent awaited was cancelled: the agent's error, not a cancel
        return ended_by(rt, active, RuntimeError(
            f"the agent raised CancelledError ({error or 'a task it awaited was cancelled'})"),
            ctx.log)
    except Exception as error:
        return ended_by(rt, active, error, ctx.log)
    return succeeded(active, result)


@contextlib.contextmanager
def attempt_span(claim: Claim) -> Iterator[Span]:
    """The attempt's span, in the trace its run's submission began (its first attempt's
    time in the queue before it, as a span of its own)."""
    attributes = {"agentq.run_id": claim.run_id, "agentq.agent": claim.agent,
                  "agentq.attempt": claim.attempt, "agentq.tenant": claim.tenant_id}
    if claim.attempt == 1:
        tracing.waited("agentq.queue", seconds=claim.waited_s, within=claim.traceparent,
                       attributes=attributes)
    with tracing.span("agentq.attempt", within=claim.traceparent, kind=SpanKind.CONSUMER,
                      attributes=attributes) as span:
        yield span


def ended_span(span: Span, outcome: Outcome) -> None:
    span.set_attributes({"agentq.status": outcome.status.value,
                         "agentq.outcome": outcome.attempt_outcome.value})
    if outcome.status not in (RunStatus.SUCCEEDED, RunStatus.WAITING):
        tracing.failed(span, outcome.error)


def suspended(active: Active, suspend: waits.Suspend) -> Outcome:
    """The agent stopped at a waitpoint not yet completed: its run waits (unless it was
    asked to stop meanwhile)."""
    if active.cancelled.is_set():
        return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED,
                       error={"type": "Cancelled", "message": "cancelled while running"})
    return Outcome(RunStatus.WAITING, AttemptOutcome.SUSPENDED,
                   waits=tuple(suspend.waitpoint_ids), deadlines=tuple(suspend.deadline_ids))


def succeeded(active: Active, result: Any) -> Outcome:
    if active.cancelled.is_set():  # it stopped early, as asked: what it returned is kept
        return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, result=result,
                       error={"type": "Cancelled", "message": "cancelled while running"})
    return Outcome(RunStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, result=result)


def ended_by(rt: Runtime, active: Active, error: BaseException,
             agent_log: logging.LoggerAdapter[logging.Logger]) -> Outcome:
    """The outcome of an attempt the agent left by ``error``."""
    if isinstance(error, Cancelled) or (active.cancelled.is_set()
                                        and not isinstance(error, SoftTimeLimitExceeded)):
        return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error=_describe(error))
    if not isinstance(error, Exception):  # SystemExit, KeyboardInterrupt in an agent
        error = RuntimeError(f"the agent raised {type(error).__name__}")
    agent_log.error("agent raised %s", type(error).__name__, exc_info=error)
    return failed(rt, active.claim, error)


def failed(rt: Runtime, claim: Claim, error: Exception) -> Outcome:
    """Decide where a failed attempt sends the run: failed, retrying, or dead-lettered."""
    spec: AgentSpec | None = rt.registry.get(claim.agent) if claim.agent in rt.registry else None
    timed_out = retry.is_timeout(error)
    kind = AttemptOutcome.TIMED_OUT if timed_out else AttemptOutcome.FAILED
    described = _describe(error)
    if timed_out:
        described = {"type": "Timeout", "message": f"attempt {claim.attempt} did not finish "
                                                   f"within timeout_s={claim.timeout_s}"}
    trace = "".join(traceback.format_exception(error))
    if isinstance(error, Deferred) and claim.deferrals < MAX_DEFERRALS:
        return Outcome(RunStatus.RETRYING, kind, error=described, traceback=trace,
                       retry_in_s=error.delay_s or 1.0, free=True)
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


def record(rt: Runtime, claim: Claim, outcome: Outcome,
           state: SessionState | None) -> tuple[Outcome, bool]:
    """Write the outcome (and, on success, the session's state) in one transaction, waiting
    out a short database outage; the outcome written, and False if nothing was."""
    deadline = time.monotonic() + _RECORD_PATIENCE_S
    pause = 0.5
    while True:
        try:
            with rt.db.transaction() as session:
                if outcome.status in (RunStatus.RETRYING, RunStatus.WAITING) and \
                        attempts.cancel_requested(session, claim=claim):  # it ends here
                    outcome = _cancelled_instead(claim, outcome)
                    if outcome.waits:
                        waits.cancel_open(session, run_id=claim.run_id)
                if outcome.status == RunStatus.WAITING:
                    left = waits.suspend(session, run_id=claim.run_id, epoch=claim.epoch,
                                         attempt=claim.attempt,
                                         waitpoint_ids=list(outcome.waits),
                                         deadline_ids=list(outcome.deadlines))
                    return dataclasses.replace(outcome, status=left.status,
                                               retry_in_s=left.wake_in_s), True
                if (outcome.status == RunStatus.SUCCEEDED and state is not None
                        and claim.session_id is not None and state.changed):
                    sessions.save(session, tenant_id=claim.tenant_id,
                                  session_id=claim.session_id, state=state.current,
                                  version=state.version)
                attempts.finish(session, claim=claim, outcome=outcome)
            return outcome, True
        except sessions.SessionConflict as conflict:
            outcome = failed(rt, claim, conflict)  # retried on the newer state
            state = None
        except LeaseLost:
            log.warning("stale attempt's outcome refused",
                        extra={"run_id": claim.run_id, "attempt": claim.attempt,
                               "status": outcome.status.value})
            return outcome, False
        except (OperationalError, InterfaceError, PoolTimeout) as error:
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


def _cancelled_instead(claim: Claim, outcome: Outcome) -> Outcome:
    """A retrying or waiting outcome of a run asked to stop: it ends here, cancelled."""
    if outcome.status == RunStatus.WAITING:
        message = f"cancelled; attempt {claim.attempt} stopped at a waitpoint first"
    else:
        message = (f"cancelled; attempt {claim.attempt} failed first "
                   f"({(outcome.error or {}).get('type')}), not retried")
    return Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, waits=outcome.waits,
                   error={"type": "Cancelled", "message": message})


def _describe(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def _json(result: Any) -> Any:
    """Return the agent's result as plain JSON, or raise TypeError naming what is wrong."""
    return steps.as_json(result, what="the agent's result")


def agent_log(claim: Claim) -> logging.LoggerAdapter[logging.Logger]:
    fields = {"run_id": claim.run_id, "tenant": claim.tenant_id, "agent": claim.agent,
              "attempt": claim.attempt, "request_id": claim.request_id}
    return logging.LoggerAdapter(logging.getLogger(f"agentq.agent.{claim.agent}"), fields)


def _emitter(rt: Runtime, claim: Claim) -> Callable[[dict[str, Any]], int]:
    def emit(data: dict[str, Any]) -> int:
        jsonb.check(data, what="the event")  # ValueError into the agent, naming the field
        event = events.append_alone(rt.db, run_id=claim.run_id, epoch=claim.epoch,
                                    type=events.PROGRESS, data=data)
        rt.bus.announce([event])  # committed: tell its streams
        return event.seq

    return emit


def _tokens(rt: Runtime, claim: Claim) -> TokenSink:
    return TokenSink(rt.bus, run_id=claim.run_id, attempt=claim.attempt)


def _fields(claim: Claim) -> dict[str, Any]:
    return {"run_id": claim.run_id, "tenant_id": claim.tenant_id, "agent": claim.agent,
            "attempt": claim.attempt, "max_attempts": claim.max_attempts,
            "timeout_s": claim.timeout_s, "session_id": claim.session_id,
            "request_id": claim.request_id}


def sync_context(rt: Runtime, active: Active, session_state: dict[str, Any],
                 loop: asyncio.AbstractEventLoop) -> RunContext:
    """A sync agent's ``ctx``: its emits and steps write from the agent's own thread; its
    LLM calls are made on the engine's loop."""
    claim, log = active.claim, agent_log(active.claim)
    emit = _emitter(rt, claim)
    runner = steps.StepRunner(rt.db, run_id=claim.run_id, epoch=claim.epoch,
                              attempt=claim.attempt, emit=emit,
                              announce=lambda event: rt.bus.announce([event]),
                              none_stored=not claim.has_steps)
    deadline = time.monotonic() + claim.timeout_s
    llm = LLM(rt, steps=runner, loop=loop, tenant_id=claim.tenant_id, agent=claim.agent,
              log=log, time_left=lambda: deadline - time.monotonic(),
              cancelled=lambda: active.stopping, tokens=_tokens(rt, claim))
    return RunContext(**_fields(claim), log=log, session=session_state,
                      _is_cancelled=lambda: active.stopping, _emit=emit, _steps=runner,
                      _llm=llm, _tree=_children(rt, claim))


Offload = Callable[[Callable[[], Any]], Awaitable[Any]]


def async_context(rt: Runtime, active: Active, session_state: dict[str, Any], *,
                  offload: Offload, in_thread: Offload) -> AsyncRunContext:
    """An async agent's ``ctx``: what writes to Postgres is offloaded to the engine's
    database threads (``offload``); plain step functions run in ``in_thread``."""
    claim, log = active.claim, agent_log(active.claim)
    emit = _emitter(rt, claim)
    runner = steps.StepRunner(rt.db, run_id=claim.run_id, epoch=claim.epoch,
                              attempt=claim.attempt, emit=emit,
                              announce=lambda event: rt.bus.announce([event]),
                              none_stored=not claim.has_steps)
    async_runner = steps.AsyncStepRunner(runner, offload=offload, in_thread=in_thread)
    deadline = time.monotonic() + claim.timeout_s
    llm = AsyncLLM(rt, steps=async_runner, offload=offload, tenant_id=claim.tenant_id,
                   agent=claim.agent, log=log, time_left=lambda: deadline - time.monotonic(),
                   tokens=_tokens(rt, claim))

    async def emit_async(data: dict[str, Any]) -> int:
        seq: int = await offload(lambda: emit(data))
        return seq

    return AsyncRunContext(**_fields(claim), log=log, session=session_state,
                           _is_cancelled=lambda: active.stopping, _emit=emit_async,
                           _steps=async_runner, _llm=llm,
                           _tree=children.AsyncChildren(_children(rt, claim), offload))


def _children(rt: Runtime, claim: Claim) -> children.Children:
    return children.Children(rt, children.Parent(claim.run_id, claim.tenant_id, claim.epoch,
                                                 claim.attempt))


def finished_fields(claim: Claim, outcome: Outcome, started: float) -> dict[str, Any]:
    """What the log line of an attempt that ended says."""
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
