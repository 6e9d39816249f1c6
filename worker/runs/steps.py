"""Durable steps: a step's result is committed before ``ctx.step`` returns, and later
attempts of the run (a retry, a crash recovery, a replay) get it back instead of running
the step again.

A step is keyed by the run and its name. Its arguments are fingerprinted, so a name reused
with other arguments (a loop that forgot to number its steps) is an error, not a silent
wrong answer. A step that raised is not stored: it runs again on the next attempt.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.base import jsonb, tracing
from worker.base.db import Database
from worker.base.errors import Cancelled, LeaseLost, StepMismatch, WaitTimeout
from worker.base.event import Event
from worker.base.models import RunStep, WaitpointStatus
from worker.runs import events, spend, waits

MAX_NAME = 200


@dataclass(frozen=True)
class Stored:
    """What an earlier execution of a step left."""

    fingerprint: str
    result: Any


@dataclass(frozen=True)
class Usage:
    """One LLM call's cost, stored with its step and summed on the run and the tenant."""

    model: str
    input_tokens: int
    output_tokens: int
    latency_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "latency_ms": self.latency_ms}


def fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A stable hash of a step's arguments (objects that are not JSON count by type)."""
    encoded = json.dumps([args, kwargs], sort_keys=True, separators=(",", ":"),
                         default=lambda value: f"<{type(value).__qualname__}>")
    return hashlib.sha256(encoded.encode()).hexdigest()


def check(name: str, stored: Stored | None, fingerprint: str) -> None:
    """Refuse a name reused with other arguments, saying how to fix it."""
    if stored is not None and stored.fingerprint != fingerprint:
        raise StepMismatch(
            f"step {name!r} already ran in this run with other arguments; give each call "
            f"a name of its own (e.g. f\"{name}:{{i}}\" in a loop)")


def load(session: Session, *, run_id: str) -> dict[str, Stored]:
    """The run's finished steps, by name."""
    rows = session.execute(select(RunStep.name, RunStep.fingerprint, RunStep.result)
                           .where(RunStep.run_id == run_id))
    return {row.name: Stored(row.fingerprint, row.result) for row in rows}


# A finished step in one statement that commits by itself (a hot path: every LLM call):
# its step.finished event under the attempt's lease, its result, and its usage on the run
# and on the tenant's day (spend's counts, when it made an LLM call).
_STORE = """
    WITH bumped AS (
        UPDATE runs SET last_seq = last_seq + 1, llm_calls = llm_calls + %(calls)s,
            input_tokens = input_tokens + %(input_tokens)s,
            output_tokens = output_tokens + %(output_tokens)s
        WHERE id = %(run_id)s AND lease_epoch = %(epoch)s AND status = 'running'
        RETURNING id, tenant_id, last_seq
    ), event AS (
        INSERT INTO run_events (run_id, seq, type, data)
        SELECT id, last_seq, 'progress', CAST(%(event)s AS jsonb) FROM bumped
        RETURNING seq, at
    ), step AS (
        INSERT INTO run_steps (run_id, name, fingerprint, result, attempt, duration_ms, usage)
        SELECT id, %(name)s, %(fingerprint)s, CAST(%(result)s AS jsonb), %(attempt)s,
               %(duration_ms)s, CAST(%(usage)s AS jsonb) FROM bumped
        ON CONFLICT (run_id, name) DO NOTHING
    ), day AS (
        INSERT INTO tenant_usage (tenant_id, day, llm_calls, input_tokens, output_tokens)
        SELECT tenant_id, %(day)s, 1, %(input_tokens)s, %(output_tokens)s FROM bumped
        WHERE %(calls)s > 0
        ON CONFLICT (tenant_id, day) DO UPDATE SET
            llm_calls = tenant_usage.llm_calls + 1,
            input_tokens = tenant_usage.input_tokens + EXCLUDED.input_tokens,
            output_tokens = tenant_usage.output_tokens + EXCLUDED.output_tokens
    )
    SELECT seq, at FROM event
"""


def store(db: Database, *, run_id: str, epoch: int, attempt: int, name: str,
          fingerprint: str, result: Any, duration_ms: int, usage: Usage | None) -> Event:
    """Commit the step's result, its ``step.finished`` event (returned, for the caller to
    announce) and its usage, in one statement. Raises LeaseLost if this attempt no longer
    holds the run."""
    data = {"phase": "step.finished", "message": f"Step {name} finished", "step": name,
            "duration_ms": duration_ms}
    row = db.one_row(_STORE, {
        "run_id": run_id, "epoch": epoch, "event": json.dumps(data), "name": name,
        "fingerprint": fingerprint, "result": json.dumps(result), "attempt": attempt,
        "duration_ms": duration_ms, "usage": json.dumps(usage.as_dict()) if usage else None,
        "calls": 1 if usage is not None else 0,
        "input_tokens": usage.input_tokens if usage else 0,
        "output_tokens": usage.output_tokens if usage else 0, "day": spend.today()})
    if row is None:
        raise LeaseLost(f"run {run_id}: attempt with lease epoch {epoch} no longer holds it")
    return Event(run_id, int(row.seq), events.PROGRESS, data, row.at)


def listed(session: Session, *, run_id: str) -> list[RunStep]:
    """The run's stored steps in the order they finished."""
    return list(session.scalars(select(RunStep).where(RunStep.run_id == run_id)
                                .order_by(RunStep.finished_at, RunStep.name)))


def as_json(value: Any, *, what: str = "the value") -> Any:
    """``value`` as plain JSON that Postgres can store (a pydantic model dumped), or
    TypeError naming what is wrong."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    try:
        return json.loads(jsonb.dumps(value, what=what))
    except jsonb.Unstorable as error:
        raise TypeError(str(error)) from None
    except TypeError as error:
        raise TypeError(f"{what} is not JSON-serialisable: {error}") from None


class StepRunner:
    """The durable steps of one attempt: what a sync agent's ``ctx.step`` and ``ctx.llm``
    call (and what ``AsyncStepRunner`` runs in a thread for an async agent)."""

    def __init__(self, db: Database, *, run_id: str, epoch: int, attempt: int,
                 emit: Callable[[dict[str, Any]], int], announce: Callable[[Event], None],
                 none_stored: bool = False) -> None:
        self._db = db
        self._announce = announce
        self._run_id = run_id
        self._epoch = epoch
        self._attempt = attempt
        self._emit = emit
        # With none_stored (the claim saw no step), the first step reads nothing.
        self._done: dict[str, Stored] | None = {} if none_stored else None

    def run(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any], *,
            usage_of: Callable[[Any], Usage | None] | None = None) -> Any:
        """Return the step's stored result, or run ``fn`` and store what it returns."""
        signature, stored = self.lookup(name, args, kwargs)
        if stored is not None:
            return stored.result
        began = time.monotonic()
        with tracing.span(f"agentq.step {name}", attributes={"agentq.step": name}):
            try:
                result = fn(*args, **kwargs)
            except Exception as error:
                self.failed(name, error)
                raise
            return self.keep(name, signature, result, began, usage_of)

    def lookup(self, name: str, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> tuple[str, Stored | None]:
        """The step's fingerprint, and its stored result (a copy) if it ran before; if not,
        its ``step.started`` event is written."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"a step name is a string of 1 to {MAX_NAME} characters")
        signature = fingerprint(args, kwargs)
        done = self._finished()
        check(name, done.get(name), signature)
        if name in done:
            return signature, Stored(signature, copy.deepcopy(done[name].result))
        self._emit({"phase": "step.started", "message": f"Step {name} started", "step": name})
        return signature, None

    def failed(self, name: str, error: Exception) -> None:
        with contextlib.suppress(Exception):  # the step's own error is what matters
            self._emit({"phase": "step.failed", "step": name, "error": type(error).__name__,
                        "message": f"Step {name} failed: {type(error).__name__}"})

    def keep(self, name: str, signature: str, value: Any, began: float,
             usage_of: Callable[[Any], Usage | None] | None) -> Any:
        """Commit the step's result; return a copy of it as plain JSON."""
        result = as_json(value, what=f"step {name!r}'s result")
        duration_ms = round((time.monotonic() - began) * 1000)
        self._announce(store(
            self._db, run_id=self._run_id, epoch=self._epoch, attempt=self._attempt,
            name=name, fingerprint=signature, result=result, duration_ms=duration_ms,
            usage=usage_of(result) if usage_of else None))
        self._finished()[name] = Stored(signature, result)
        return copy.deepcopy(result)

    def wait(self, name: str, *, kind: str, timeout_s: float, prompt: str | None = None,
             schema: Any = None) -> Any:
        """``ctx.wait_for`` (kind ``wait``) and ``ctx.sleep`` (``sleep``): the waitpoint's
        data once it is completed (None for a sleep that is over); WaitTimeout once it is
        past its deadline; else the attempt suspends here (``waits.Suspend``)."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise ValueError(f"a waitpoint name is a string of 1 to {MAX_NAME} characters")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) \
                or not 0 <= timeout_s <= waits.MAX_WAIT_S:
            raise ValueError(f"{'seconds' if kind == waits.SLEEP else 'timeout_s'} is a number "
                             f"of seconds from 0 to {waits.MAX_WAIT_S}")
        if prompt is not None and (not isinstance(prompt, str)
                                   or len(prompt) > waits.MAX_PROMPT):
            raise ValueError(f"prompt is a string of at most {waits.MAX_PROMPT} characters")
        reached = waits.reach(self._db, run_id=self._run_id, epoch=self._epoch,
                              attempt=self._attempt, name=name, kind=kind,
                              timeout_s=float(timeout_s), prompt=prompt,
                              schema=waits.schema_of(schema))
        if reached.status == WaitpointStatus.COMPLETED:
            return copy.deepcopy(reached.data)
        if reached.status == WaitpointStatus.TIMED_OUT:
            raise WaitTimeout(name, reached.timeout_s)
        if reached.status == WaitpointStatus.CANCELLED:
            raise Cancelled(f"waitpoint {name!r} was cancelled")
        raise waits.Suspend([reached.id], [name])

    def _finished(self) -> dict[str, Stored]:
        if self._done is None:
            with self._db.autocommit() as session:
                self._done = load(session, run_id=self._run_id)
            if self._done:
                names = list(self._done)
                self._emit({"phase": "step.resumed", "steps": names[:50],
                            "message": f"Resuming: {len(names)} finished step(s) reused"})
        return self._done


Offload = Callable[[Callable[[], Any]], Awaitable[Any]]


class AsyncStepRunner:
    """An async agent's durable steps: the database's part in a thread (``offload``), the
    step itself awaited if it is a coroutine function, else run in a thread too."""

    def __init__(self, steps: StepRunner, *, offload: Offload, in_thread: Offload) -> None:
        self._steps = steps
        self._offload = offload
        self._in_thread = in_thread

    async def run(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any], *,
                  usage_of: Callable[[Any], Usage | None] | None = None) -> Any:
        signature, stored = await self._offload(lambda: self._steps.lookup(name, args, kwargs))
        if stored is not None:
            return stored.result
        began = time.monotonic()
        with tracing.span(f"agentq.step {name}", attributes={"agentq.step": name}):
            try:
                if inspect.iscoroutinefunction(fn):
                    value = await fn(*args, **kwargs)
                else:
                    value = await self._in_thread(lambda: fn(*args, **kwargs))
                    if inspect.isawaitable(value):
                        value = await value
            except Exception as error:
                failure = error
                await self._offload(lambda: self._steps.failed(name, failure))
                raise
            return await self._offload(lambda: self._steps.keep(name, signature, value,
                                                                 began, usage_of))

    async def wait(self, name: str, *, kind: str, timeout_s: float, prompt: str | None = None,
                   schema: Any = None) -> Any:
        return await self._offload(lambda: self._steps.wait(
            name, kind=kind, timeout_s=timeout_s, prompt=prompt, schema=schema))
