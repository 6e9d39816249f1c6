"""Errors agentq raises, and the ones agents raise to steer their run.

The hierarchy::

    AgentqError
    ├── ConfigurationError   settings missing or invalid: the process refuses to start
    ├── NotFound             no such object for this tenant (another tenant's id included)
    ├── InvalidRequest       the request is well-formed but cannot be accepted (422)
    │   └── UnknownAgent     no agent is registered under that name
    ├── Conflict             the object's state forbids the request (409)
    ├── LimitExceeded        a rate or a cap was reached (429, with when to retry)
    ├── LeaseLost            a write named a lease epoch that is no longer current
    └── AgentError           raised by agent code to say how its attempt ended
        ├── RetryableError   try again later (optionally after ``delay_s``)
        │   └── SessionConflict  (worker.sessions) another run saved the session first
        ├── FatalError       give up now: another attempt will not help
        ├── WaitTimeout      ctx.wait_for's waitpoint was not completed by its deadline
        └── Cancelled        the run was cancelled; raised by ``ctx.check_cancelled()``

The API maps these to problem+json in one place (``api/errors.py``).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class AgentqError(Exception):
    """Base of every error agentq raises on purpose."""


class ConfigurationError(AgentqError):
    """Settings are missing or invalid; the process must not start."""


class NotFound(AgentqError):
    """The object does not exist for this tenant."""

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"{kind} {object_id!r} not found")
        self.kind = kind
        self.object_id = object_id


class InvalidRequest(AgentqError):
    """The request cannot be accepted; ``errors`` lists each problem as {field, message}."""

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []

    @classmethod
    def from_validation(cls, error: ValidationError, *, prefix: str = "") -> InvalidRequest:
        """Describe each of pydantic's problems with a dotted field path."""
        problems = []
        for item in error.errors(include_url=False):
            path = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
            message = item["msg"]
            if item["type"] == "extra_forbidden":
                message = "unknown field; remove it"
            problems.append({"field": path or "body", "message": message})
        noun = "problem" if len(problems) == 1 else "problems"
        return cls(f"the request has {len(problems)} {noun}; see errors", problems)


class UnknownAgent(InvalidRequest):
    """No agent is registered under the requested name."""

    def __init__(self, name: str, available: list[str]) -> None:
        listing = ", ".join(available) or "none"
        message = f"unknown agent {name!r}; registered agents: {listing}"
        super().__init__(message, [{"field": "agent", "message": message}])
        self.available = available


class Conflict(AgentqError):
    """The object's current state does not allow the request."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.extra = extra


class LimitExceeded(AgentqError):
    """A rate limit or a cap was reached; try again after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LeaseLost(AgentqError):
    """A write named a lease epoch that a newer attempt has replaced."""


class AgentError(AgentqError):
    """Raised by agent code to say how its attempt ended."""


class RetryableError(AgentError):
    """The attempt failed in a way another attempt may fix."""

    def __init__(self, message: str = "retryable error", *, delay_s: float | None = None) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class Deferred(RetryableError):
    """The attempt stopped before doing its work, for want of room (a rate limit): the run
    is tried again after ``delay_s``, and the attempt does not count against its
    ``max_attempts`` (for its first 100 deferrals: a bound, like every retry's)."""


class FatalError(AgentError):
    """The attempt failed in a way no retry will fix."""


class ChildFailed(FatalError):
    """A child run (``ctx.start``) ended without a result: failed, dead-lettered,
    cancelled or expired. Raised where the parent waits for it; catch it to go on."""

    def __init__(self, *, child_id: str, name: str, status: str,
                 error: dict[str, Any] | None) -> None:
        detail = f": {error.get('type')}: {error.get('message')}" if error else ""
        super().__init__(f"child {name!r} ({child_id}) ended {status}{detail}")
        self.child_id = child_id
        self.name = name
        self.status = status
        self.error = error


class RunTreeLimit(FatalError):
    """A run may not start this child: too deep (``AGENTQ_MAX_RUN_DEPTH``) or too many
    children (``AGENTQ_MAX_CHILDREN``). An agent that starts itself in a loop ends here."""


class Cancelled(AgentError):
    """The run was cancelled while the agent was working."""


class WaitTimeout(AgentError):
    """``ctx.wait_for``'s waitpoint reached its deadline without being completed. Raised at
    the call (the agent may catch it); uncaught, the run fails (a retry would wait no
    longer: the waitpoint stays timed out)."""

    def __init__(self, name: str, timeout_s: float) -> None:
        super().__init__(f"waitpoint {name!r} was not completed within {timeout_s:g} s")
        self.name = name
        self.timeout_s = timeout_s


class StepMismatch(FatalError):
    """A step name was reused in one run with other arguments."""


class BudgetExceeded(FatalError):
    """The tenant's daily LLM token budget is used up."""


class LLMError(FatalError):
    """The LLM endpoint refused the request in a way a retry will not fix (a 4xx)."""
