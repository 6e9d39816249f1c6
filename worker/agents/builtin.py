"""Built-in agents for demos and tests: ``echo``, ``sleep`` and ``flaky``."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.agents import agent
from worker.agents.context import RunContext
from worker.base.errors import RetryableError


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
