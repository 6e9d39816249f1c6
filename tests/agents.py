"""Agents the tests register through AGENTQ_AGENTS=tests.agents, as a user's module would."""

from __future__ import annotations

from typing import Any

from worker.agents import agent
from worker.context import RunContext


@agent("support.triage", timeout_s=60)
def triage(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Label a support ticket, the way a user's own agent would."""
    text = str(input.get("text", "")).lower()
    ctx.emit("classifying", "Reading the ticket…")
    label = "billing" if "invoice" in text or "refund" in text else "general"
    return {"label": label, "run_id": ctx.run_id, "attempt": ctx.attempt}


@agent("test.fail")
def fail(ctx: RunContext, input: dict[str, Any]) -> None:
    """Raise a non-retryable error."""
    raise ValueError(input.get("message", "the agent failed on purpose"))


@agent("test.unserialisable")
def unserialisable(ctx: RunContext, input: dict[str, Any]) -> object:
    """Return something that is not JSON."""
    return {"when": object()}


@agent("test.emit")
def emit(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """Emit ``count`` progress events, then finish."""
    count = int(input.get("count", 3))
    for i in range(count):
        ctx.emit("step", f"step {i + 1} of {count}", index=i)
    return {"emitted": count}
