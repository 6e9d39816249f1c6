"""Errors the client raises.

The hierarchy::

    AgentqError                   every error the client raises on purpose
    ├── ApiError                  the server answered with a problem (RFC 9457): status, title,
    │   │                         detail, type, request_id, retry_after, the body as it came
    │   ├── Unauthorized          401: a missing, unknown or revoked API key
    │   ├── Forbidden             403: the key lacks the scope
    │   ├── NotFound              404: no such object for this tenant (another tenant's too)
    │   ├── Conflict              409: the object's state forbids it (a finished run, ...)
    │   ├── ValidationFailed      422: errors lists each problem (field, message)
    │   ├── RateLimited           429: over a rate or a cap, retry_after says when
    │   └── ServiceUnavailable    503: a dependency is down, retry_after says when
    ├── ConnectionFailed          no answer at all (refused, reset, timed out), after retries
    ├── WaitTimeout               runs.wait: the run had not ended in time (a TimeoutError)
    └── WebhookVerificationError  webhooks.verify: not signed by the secret, stale or unreadable

Any other error status is an ``ApiError`` itself. The problem fields live on ``ApiError``
rather than on ``AgentqError``: a dropped connection or a forged webhook has no status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentq.client.models import FieldProblem

if TYPE_CHECKING:
    from agentq.client.models import Run


class AgentqError(Exception):
    """Base of every error the client raises on purpose."""


class ApiError(AgentqError):
    """The server answered with an error status (a problem+json body, as a rule)."""

    def __init__(self, *, status: int, title: str, detail: str, type: str = "about:blank",
                 request_id: str | None = None, retry_after: float | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body or {}


class Unauthorized(ApiError):
    """401: the API key is missing, unknown or revoked."""


class Forbidden(ApiError):
    """403: the API key lacks the scope this needs."""


class NotFound(ApiError):
    """404: no such object for this tenant."""


class Conflict(ApiError):
    """409: the object's state forbids the request."""


class ValidationFailed(ApiError):
    """422: the request cannot be accepted; ``errors`` lists each problem."""

    @property
    def errors(self) -> list[FieldProblem]:
        return [FieldProblem.model_validate(item) for item in self.body.get("errors") or []]


class RateLimited(ApiError):
    """429: over the key's rate or the tenant's cap; ``retry_after`` says when to retry."""


class ServiceUnavailable(ApiError):
    """503: the server cannot answer now; ``retry_after`` says when to retry."""


class ConnectionFailed(AgentqError):
    """No answer from the server (refused, reset, timed out), even after the retries."""


class WaitTimeout(AgentqError, TimeoutError):
    """The run had not ended within the time given; ``run`` is how it stood last."""

    def __init__(self, run: Run, timeout: float) -> None:
        super().__init__(f"run {run.id} is still {run.status} after {timeout:g} s")
        self.run = run


class WebhookVerificationError(AgentqError):
    """The webhook is not signed by the secret, is too old or too new, or is unreadable."""


BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: ValidationFailed,
    429: RateLimited, 503: ServiceUnavailable,
}
