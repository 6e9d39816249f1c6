"""Built-in agents for demos and tests: ``echo``, ``sleep``, ``flaky`` and
``demo.approval``."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.agents import agent
from worker.agents.context import RunContext
from worker.base.errors import RetryableError, WaitTimeout


class SleepInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(default=1.0, ge=0, le=3600)


class FlakyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failures: int = Field(default=1, ge=0, le=100)


@agent("echo", timeout_s=30)
def echo(ctx: RunContext, input: Any) -> Any:
    """Return the input unchanged."""
    return input


@agent("sleep", input_model=SleepInput)
def sleep(ctx: RunContext, input: SleepInput) -> dict[str, float]:
    """Sleep for ``seconds``, stopping early when the run is cancelled."""
    started = time.monotonic()
    deadline = started + input.seconds
    while (left := deadline - time.monotonic()) > 0 and not ctx.cancelled:
        time.sleep(min(left, 0.1))
    return {"slept": round(time.monotonic() - started, 3)}


@agent("flaky", input_model=FlakyInput)
def flaky(ctx: RunContext, input: FlakyInput) -> dict[str, int]:
    """Fail with a retryable error on the first ``failures`` attempts, then succeed."""
    if ctx.attempt <= input.failures:
        raise RetryableError(f"flaky failure {ctx.attempt} of {input.failures}")
    return {"attempt": ctx.attempt}


class ApprovalInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=2000)
    timeout_s: int = Field(default=3600, ge=1, le=30 * 24 * 3600)


class Approval(BaseModel):
    """What a person answers (the waitpoint's schema)."""

    model_config = ConfigDict(extra="forbid")

    approved: bool
    comment: str | None = None


@agent("demo.approval", input_model=ApprovalInput, timeout_s=60)
def approval(ctx: RunContext, input: ApprovalInput) -> dict[str, Any]:
    """Ask a person ``question`` and return their answer: the run waits (holding no worker)
    at the waitpoint ``approval`` until it is completed, or ``timeout_s`` passes."""
    ctx.step("ask", lambda: ctx.emit("approval.requested",  # once, not again on resume
                                     f"Waiting for an answer to: {input.question}"))
    try:
        answer = ctx.wait_for("approval", timeout_s=input.timeout_s, schema=Approval,
                              prompt=input.question)
    except WaitTimeout:
        return {"approved": False, "comment": "timed out"}
    return {"approved": answer.approved, "comment": answer.comment}
