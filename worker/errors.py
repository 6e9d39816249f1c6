"""``from worker.errors import RetryableError``: the public path of ``worker.base.errors``."""

from worker.base.errors import (
    AgentError,
    AgentqError,
    BudgetExceeded,
    Cancelled,
    ConfigurationError,
    Conflict,
    FatalError,
    InvalidRequest,
    LeaseLost,
    LimitExceeded,
    LLMError,
    NotFound,
    RetryableError,
    StepMismatch,
    UnknownAgent,
)

__all__ = [
    "AgentError",
    "AgentqError",
    "BudgetExceeded",
    "Cancelled",
    "ConfigurationError",
    "Conflict",
    "FatalError",
    "InvalidRequest",
    "LLMError",
    "LeaseLost",
    "LimitExceeded",
    "NotFound",
    "RetryableError",
    "StepMismatch",
    "UnknownAgent",
]
