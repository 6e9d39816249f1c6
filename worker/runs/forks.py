"""Forking a run from one of its steps: a new run of the same agent that reuses the
original's steps recorded before that step and runs from there (DBOS's fork, Temporal's
reset, LangGraph's time travel): the way to redo the last part of a long agent with a
better prompt or new code without paying again for the part before.

**What is reused.** The original's durable steps (``ctx.step``, ``ctx.llm``) that finished
before ``from_step`` (in the order ``GET /v1/runs/{id}/steps`` lists them) are copied into
the fork with their results, durations, usage and finish times, in the transaction that
creates it (one ``INSERT ... SELECT``); ``from_step`` and every step after it run again.
A copied step has ``attempt`` 0: none of the fork's own attempts ran it. Waitpoints and
children are not steps: a fork waits at its waitpoints again and starts its children anew.

**Arguments.** Copied steps keep their fingerprints, so the fork reuses a step only when it
calls it with the same arguments. A new ``input`` that changes the arguments of a step
before ``from_step`` ends the fork ``failed`` with ``StepMismatch`` at that step, before it
makes any call: a stored result is never handed to a call it was not made for (fork from
that step, or an earlier one, instead).

**Spend.** Copied steps are not counted again: not on the tenant's day (their tokens were
counted when the original made them), nor in the fork's ``usage``, which counts the calls
the fork made itself (the copied steps show theirs in the fork's steps).

**What carries over.** The agent, timeout, attempts, priority, metadata and webhook URL
come from the original, and its input unless a new one is given (the concurrency key too,
with the input unchanged; else it is the new input's). Not the session (a fork is another
history, not the session's next turn), the schedule, the batch or the parent: a fork is a
run of its own, ``forked_from: {run_id, step}``. The original may be in any status, even
still going: a step, once stored, never changes.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from worker.base import tracing
from worker.base.errors import InvalidRequest
from worker.base.models import Run, RunStep
from worker.base.runtime import Runtime
from worker.runs import admission, events, store, submission

_LISTED = 20  # step names an unknown step's error lists at most


class _Keep(enum.Enum):
    INPUT = "the original's input"


KEEP = _Keep.INPUT  # ``fork(input=KEEP)``: the fork runs on the original's input


# The original's steps that finished before ``from_step`` (ordered as ``steps.listed``),
# copied into the fork as they are, but for the attempt that ran them.
_COPY = text("""
    INSERT INTO run_steps (run_id, name, fingerprint, result, attempt, duration_ms, usage,
                           finished_at)
    SELECT :fork_id, step.name, step.fingerprint, step.result, 0, step.duration_ms,
           step.usage, step.finished_at
    FROM run_steps AS step JOIN run_steps AS since
         ON since.run_id = step.run_id AND since.name = :from_step
    WHERE step.run_id = :run_id
      AND (step.finished_at, step.name) < (since.finished_at, since.name)
    RETURNING name, finished_at
""")


def fork(rt: Runtime, *, tenant_id: str, run_id: str, from_step: str, input: Any = KEEP,
         request_id: str | None = None) -> Run:
    """Create the fork of the tenant's run ``run_id`` from ``from_step`` (committed, with
    its copied steps), under the tenant's caps, and dispatch it. Raises NotFound for
    another tenant's run, InvalidRequest for a step the run has not recorded (or a new
    input its agent refuses)."""
    caps = admission.Caps.of(rt.settings)

    def in_transaction() -> submission.Stored:
        with rt.db.transaction() as session:
            original = store.get(session, tenant_id=tenant_id, run_id=run_id)
            require_step(session, run=original, name=from_step)
            new = dataclasses.replace(
                submission.plan(rt, _request(original, input=input, request_id=request_id)),
                traceparent=tracing.traceparent(),
                forked_from={"run_id": original.id, "step": from_step})
            stored = submission.store_run(rt, session, tenant_id=tenant_id, new=new)
            reused = copy_steps(session, run_id=original.id, fork_id=stored.run.id,
                                from_step=from_step)
            _record(session, fork_id=stored.run.id, forked_from=new.forked_from or {},
                    reused=reused)
            return stored

    stored = admission.admitted(rt.db, tenant_id=tenant_id, caps=caps, store=in_transaction)
    submission.launch(rt, stored)
    return stored.run


def require_step(session: Session, *, run: Run, name: str) -> None:
    """Raise InvalidRequest (a 422 on ``from_step``) unless the run has recorded step
    ``name``, listing the steps it has."""
    names = list(session.scalars(select(RunStep.name).where(RunStep.run_id == run.id)
                                 .order_by(RunStep.finished_at, RunStep.name)))
    if name in names:
        return
    listed = ", ".join(repr(step) for step in names[:_LISTED]) or "none"
    if len(names) > _LISTED:
        listed += f", ... ({len(names)} in all: GET /v1/runs/{run.id}/steps)"
    message = f"run {run.id} has no step {name!r}; its steps: {listed}"
    raise InvalidRequest(message, [{"field": "from_step", "message": message}])


def copy_steps(session: Session, *, run_id: str, fork_id: str, from_step: str) -> list[str]:
    """Copy run ``run_id``'s steps that finished before ``from_step`` into the fork; return
    their names in that order."""
    rows = session.execute(_COPY, {"run_id": run_id, "fork_id": fork_id,
                                   "from_step": from_step})
    return [row.name for row in sorted(rows, key=lambda row: (row.finished_at, row.name))]


def _request(original: Run, *, input: Any, request_id: str | None) -> submission.RunRequest:
    """The fork as a submission: the original's agent and options, on its input or ``input``."""
    same = input is KEEP
    return submission.RunRequest(
        agent=original.agent, input=original.input if same else input,
        timeout_s=original.timeout_s, max_attempts=original.max_attempts,
        webhook_url=original.webhook_url, metadata=dict(original.meta or {}),
        request_id=request_id, priority=original.priority,
        concurrency_key=original.concurrency_key if same else None)


def _record(session: Session, *, fork_id: str, forked_from: dict[str, Any],
            reused: list[str]) -> None:
    """The fork's second event, after its first ``queued``: where it comes from, and which
    steps it reuses."""
    seq = session.execute(update(Run).where(Run.id == fork_id)
                          .values(last_seq=Run.last_seq + 1).returning(Run.last_seq)).scalar_one()
    events.record(session, run_id=fork_id, seq=seq, type=events.PROGRESS, data={
        "phase": "forked", "forked_from": forked_from, "steps": reused[:50],
        "message": f"Forked from run {forked_from['run_id']} at step "
                   f"{forked_from['step']}: {len(reused)} earlier step(s) reused"})
