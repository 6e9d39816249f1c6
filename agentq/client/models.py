"""What the API answers, as pydantic models: each mirrors a schema of ``/openapi.json``
(``tests/test_client.py`` holds them to it), and keeps fields a newer server adds."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypedDict, Unpack

from pydantic import BaseModel, ConfigDict, Field

RunStatus = Literal["scheduled", "queued", "running", "retrying", "waiting", "succeeded",
                    "failed", "cancelled", "dead_lettered", "expired"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "dead_lettered",
                                      "expired"})
Priority = Literal["high", "normal", "low"]
WebhookEventType = Literal["run.succeeded", "run.failed", "run.cancelled", "run.dead_lettered",
                           "run.waiting", "run.expired", "batch.completed"]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class RunError(Model):
    """Why a run failed: the error's type and message."""

    type: str
    message: str


class RunUsage(Model):
    """What the run's LLM calls cost."""

    llm_calls: int
    input_tokens: int
    output_tokens: int


class ForkedFrom(Model):
    """Where a fork came from (``POST /v1/runs/{id}/fork``)."""

    run_id: str
    step: str


class Run(Model):
    """A run (``RunOut``)."""

    id: str
    agent: str
    status: RunStatus
    input: Any
    result: Any
    error: RunError | None
    attempt: int
    max_attempts: int
    timeout_s: int
    priority: Priority
    session_id: str | None
    metadata: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    start_at: datetime | None
    expires_at: datetime | None
    schedule_id: str | None
    scheduled_for: datetime | None
    concurrency_key: str | None
    parent_id: str | None
    root_id: str | None
    child_name: str | None
    batch_id: str | None = None
    forked_from: ForkedFrom | None = None
    children: dict[str, int] | None = None
    waiting_for: str | None = None
    usage: RunUsage

    @property
    def terminal(self) -> bool:
        """True once the run has ended (succeeded, failed, cancelled, dead-lettered, expired)."""
        return self.status in TERMINAL


class Page(Model):
    """One page of runs (``RunPage``): newest first, or a run's children oldest first;
    pass ``next_cursor`` for the next."""

    items: list[Run]
    next_cursor: str | None


class Batch(Model):
    """A batch (``BatchOut``): the runs one ``runs.batch`` made, counted by status."""

    id: str
    size: int
    created_at: datetime
    completed_at: datetime | None
    counts: dict[str, int]

    @property
    def completed(self) -> bool:
        """True once its last run has ended."""
        return self.completed_at is not None


class BatchCreated(Batch):
    """What ``runs.batch`` answers (``BatchCreated``): the batch, and a run per item in the
    items' order; ``replayed`` lists the items their idempotency key answered with an
    earlier run."""

    runs: list[Run]
    replayed: list[int]


class Event(Model):
    """One entry of a run's event log (``EventOut``): a ``status`` change or the agent's
    ``progress``. An event read from the live stream has no ``at``."""

    seq: int
    type: Literal["status", "progress"]
    data: dict[str, Any]
    at: datetime | None = None

    @property
    def status(self) -> str | None:
        """The run's status this event reports (status events only)."""
        return self.data.get("status") if self.type == "status" else None

    @property
    def terminal(self) -> bool:
        """True for the run's last event: a status event with a terminal status."""
        return self.status in TERMINAL


class Token(Model):
    """A piece of a streamed LLM call's text: ``i`` 1 sets the step's text, any other
    ``i`` appends to it."""

    step: str
    i: int
    text: str


class TokenReset(Model):
    """The step's call is being tried again: drop its text; its pieces follow from ``i`` 1."""

    step: str


StreamItem = Event | Token | TokenReset


class Waitpoint(Model):
    """Where a run waits (``WaitpointOut``): ``ctx.wait_for`` (kind wait) or ``ctx.sleep``."""

    id: str
    run_id: str
    name: str
    kind: Literal["wait", "sleep"]
    status: Literal["waiting", "completed", "timed_out", "cancelled"]
    prompt: str | None
    schema_: dict[str, Any] | None = Field(alias="schema")
    deadline: datetime
    attempt: int
    data: Any
    completed_by: str | None
    created_at: datetime
    completed_at: datetime | None
    url: str | None


class FieldProblem(Model):
    """One problem of a request that failed validation."""

    field: str
    message: str


class Problem(Model):
    """An error answer (RFC 9457 ``application/problem+json``, ``ProblemOut``)."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: list[FieldProblem] | None = None


class WebhookEvent(Model):
    """A webhook delivery's body: the run as it ended (or began to wait)."""

    type: WebhookEventType
    timestamp: datetime
    data: Run

    @property
    def waitpoint(self) -> Waitpoint | None:
        """A ``run.waiting`` event's waitpoint, with its signed ``url``."""
        point = (self.data.model_extra or {}).get("waitpoint")
        return None if point is None else Waitpoint.model_validate(point)


class RunOptions(TypedDict, total=False):
    """What ``POST /v1/runs`` takes besides the agent and its input (``RunCreate``)."""

    session_id: str
    webhook_url: str
    timeout_s: int
    max_attempts: int
    metadata: dict[str, Any]
    priority: Priority
    multitask: Literal["enqueue", "reject", "interrupt"]
    start_at: datetime | str
    delay_s: float
    ttl_s: float
    concurrency_key: str


class BatchItem:
    """One run of ``runs.batch``: what ``runs.create`` takes, and the item's own key."""

    __slots__ = ("agent", "idempotency_key", "input", "options")

    def __init__(self, agent: str, input: Any = None, *, idempotency_key: str | None = None,
                 **options: Unpack[RunOptions]) -> None:
        self.agent, self.input, self.options = agent, input, options
        self.idempotency_key = idempotency_key

    def __repr__(self) -> str:
        return (f"BatchItem({self.agent!r}, {self.input!r}, "
                f"idempotency_key={self.idempotency_key!r}, **{self.options!r})")
