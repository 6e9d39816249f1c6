"""Request and response shapes: validated with pydantic, published in ``/openapi.json``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    JsonValue,
    model_validator,
)

from worker.base.models import AttemptOutcome, RunStatus, WaitpointStatus

SESSION_ID = r"^[A-Za-z0-9._:@/-]+$"
MAX_SEQ = 2**31 - 1  # event seqs are Postgres integers
MAX_DELAY_S = 366 * 24 * 3600  # a delay or a ttl of at most a year


class RunCreate(BaseModel):
    """Body of ``POST /v1/runs``. Unknown fields are refused (no mass assignment)."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200, description="A registered agent's name.")
    input: JsonValue = Field(default_factory=dict, description="JSON given to the agent.")
    session_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=SESSION_ID)
    webhook_url: HttpUrl | None = None
    timeout_s: int | None = Field(default=None, ge=1, description="Per-attempt time limit.")
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    metadata: dict[str, JsonValue] = Field(default_factory=dict, max_length=64)
    priority: Literal["high", "normal", "low"] = Field(
        default="normal", description="Which queue the run waits in (unless its agent names "
        "one): high is never stuck behind a backlog of low.")
    multitask: Literal["enqueue", "reject", "interrupt"] | None = Field(
        default=None, description="When the session has a run going: wait behind it "
        "(enqueue), refuse with 409 (reject), or cancel it first (interrupt).")
    start_at: AwareDatetime | None = Field(
        default=None, description="Do not start before this time (RFC 3339 with an offset); "
        "the run is 'scheduled' until then.")
    delay_s: float | None = Field(default=None, ge=0, le=MAX_DELAY_S,
                                  description="Do not start before this many seconds from now.")
    ttl_s: float | None = Field(
        default=None, gt=0, le=MAX_DELAY_S, description="End 'expired' (run.expired) if not "
        "started within this many seconds of when it could start.")
    concurrency_key: str | None = Field(
        default=None, min_length=1, max_length=300, description="At most the agent's Limit "
        "max (else 1) of the tenant's runs with this key run at once; the others wait "
        "queued, holding no worker.")

    @model_validator(mode="after")
    def _one_delay(self) -> RunCreate:
        if self.start_at is not None and self.delay_s is not None:
            raise ValueError("give start_at or delay_s, not both")
        return self


class RunListQuery(BaseModel):
    """Query of ``GET /v1/runs``."""

    model_config = ConfigDict(extra="ignore")

    status: RunStatus | None = None
    agent: str | None = Field(default=None, max_length=200)
    session_id: str | None = Field(default=None, max_length=200)
    parent_id: str | None = Field(default=None, max_length=40)  # its children
    batch_id: str | None = Field(default=None, max_length=40)  # the runs of a batch
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class ChildrenQuery(BaseModel):
    """Query of ``GET /v1/runs/{id}/children``."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class WaitQuery(BaseModel):
    """``?wait=N`` on ``POST /v1/runs``: seconds to hold the request for the run to end."""

    model_config = ConfigDict(extra="ignore")

    wait: float = Field(default=0, ge=0, le=30)


class EventsQuery(BaseModel):
    """``?after=SEQ`` on a run's events: only events after that seq; ``?tokens=1`` on the
    SSE stream: the streamed LLM calls' text too, as it is written."""

    model_config = ConfigDict(extra="ignore")

    after: int = Field(default=0, ge=0, le=MAX_SEQ)
    tokens: bool = False


class RunError(BaseModel):
    type: str
    message: str


class RunUsage(BaseModel):
    """What the run's LLM calls cost (ctx.llm), summed as each call is stored."""

    llm_calls: int
    input_tokens: int
    output_tokens: int


class ForkedFrom(BaseModel):
    run_id: str
    step: str


class RunOut(BaseModel):
    """A run as every endpoint (and every webhook) shows it."""

    id: str
    agent: str
    status: RunStatus
    input: JsonValue
    result: JsonValue
    error: RunError | None
    attempt: int
    max_attempts: int
    timeout_s: int
    priority: Literal["high", "normal", "low"]
    session_id: str | None
    metadata: dict[str, JsonValue]
    created_at: str
    started_at: str | None
    finished_at: str | None
    next_attempt_at: str | None
    start_at: str | None
    expires_at: str | None
    schedule_id: str | None
    scheduled_for: str | None
    concurrency_key: str | None
    parent_id: str | None = Field(description="The run that started it (ctx.start).")
    root_id: str | None = Field(description="Its tree's first run (None for that run).")
    child_name: str | None = Field(description="Its name under its parent.")
    batch_id: str | None = Field(default=None, description="The batch it came in.")
    forked_from: ForkedFrom | None = Field(
        default=None, description="POST /v1/runs/{id}/fork: the run and step it was forked "
                                  "from.")
    children: dict[str, int] | None = Field(
        default=None, description="GET /v1/runs/{id}: how many of its children stand in "
                                  "each status (absent if it started none).")
    waiting_for: str | None = Field(default=None, description="GET /v1/runs/{id}: why a "
                                    "queued run has not started (its concurrency key, its "
                                    "session, its tenant's running cap).")
    usage: RunUsage


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class AttemptError(BaseModel):
    type: str
    message: str | None
    traceback: str | None


class AttemptOut(BaseModel):
    attempt: int
    worker: str
    started_at: str
    finished_at: str | None
    outcome: AttemptOutcome | None
    error: AttemptError | None


class AttemptList(BaseModel):
    items: list[AttemptOut]


class StepOut(BaseModel):
    name: str
    attempt: int
    result: JsonValue
    duration_ms: int
    usage: dict[str, JsonValue] | None
    finished_at: str


class StepList(BaseModel):
    items: list[StepOut]


class WaitpointComplete(BaseModel):
    """Body that completes a waitpoint (``POST /v1/runs/{id}/waitpoints/{name}``, and the
    signed ``POST /waitpoints/{token}``)."""

    model_config = ConfigDict(extra="forbid")

    data: JsonValue = Field(description="What ctx.wait_for returns; it must match the "
                            "waitpoint's schema.")


class WaitpointOut(BaseModel):
    """A point where a run waits: ctx.wait_for (kind wait) or ctx.sleep (kind sleep)."""

    id: str
    run_id: str
    name: str
    kind: Literal["wait", "sleep"]
    status: WaitpointStatus
    prompt: str | None
    schema_: dict[str, JsonValue] | None = Field(alias="schema")
    deadline: str
    attempt: int
    data: JsonValue
    completed_by: str | None
    created_at: str
    completed_at: str | None
    url: str | None = Field(description="While it waits: a single-use, signed link that "
                            "completes it without an API key (POST {data}); it expires at "
                            "the deadline.")


class WaitpointList(BaseModel):
    items: list[WaitpointOut]


class UsageDay(BaseModel):
    day: str
    llm_calls: int
    input_tokens: int
    output_tokens: int


class UsageOut(BaseModel):
    day: str
    llm_calls: int
    input_tokens: int
    output_tokens: int
    daily_token_budget: int | None
    tokens_left: int | None
    days: list[UsageDay]


class EventOut(BaseModel):
    seq: int
    type: Literal["status", "progress"]
    data: dict[str, Any]
    at: str


class EventList(BaseModel):
    items: list[EventOut]


class FieldProblem(BaseModel):
    field: str
    message: str


class ProblemOut(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None = None
    errors: list[FieldProblem] | None = None


WebhookEventType = Literal["run.succeeded", "run.failed", "run.cancelled", "run.dead_lettered",
                           "run.waiting", "run.expired", "batch.completed"]


class EndpointCreate(BaseModel):
    """Body of ``POST /v1/webhook-endpoints``."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl
    events: list[WebhookEventType] | None = Field(default=None, min_length=1)


class EndpointOut(BaseModel):
    id: str
    url: str
    events: list[WebhookEventType]
    created_at: str
    disabled_at: str | None
    disabled_reason: str | None
    previous_secret_expires_at: str | None
    secret: str | None = Field(default=None, description="Only when made or rotated.")


class EndpointList(BaseModel):
    items: list[EndpointOut]


class SecretOut(BaseModel):
    secret: str
    previous_secret_expires_at: str | None = None


class DeliveryListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str | None = Field(default=None, max_length=100)
    endpoint_id: str | None = Field(default=None, max_length=100)
    status: Literal["pending", "delivered", "retrying", "dead"] | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(default=None, max_length=200)


class DeliveryAttemptOut(BaseModel):
    attempt: int
    started_at: str
    latency_ms: float | None
    status_code: int | None
    error: str | None
    response_body: str | None


class DeliveryOut(BaseModel):
    id: str
    run_id: str
    endpoint_id: str | None
    url: str
    type: WebhookEventType
    status: Literal["pending", "delivered", "retrying", "dead"]
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: str
    delivered_at: str | None
    attempt_log: list[DeliveryAttemptOut] | None = None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


Overlap = Literal["skip", "buffer_one", "allow", "cancel_other"]
_OVERLAP_HELP = ("While an earlier run of the schedule is going: pass the slot over (skip), "
                 "let one run wait behind it (buffer_one), start anyway (allow), or cancel "
                 "it first (cancel_other).")


class ScheduleCreate(BaseModel):
    """Body of ``POST /v1/schedules``: ``cron`` or ``every_s``, not both."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200)
    input: JsonValue = Field(default_factory=dict)
    metadata: dict[str, JsonValue] = Field(default_factory=dict, max_length=64)
    priority: Literal["high", "normal", "low"] = "normal"
    cron: str | None = Field(default=None, min_length=1, max_length=200,
                             description="Five fields, e.g. '0 9 * * 1-5' (9:00 on weekdays), "
                             "in timezone.")
    every_s: float | None = Field(default=None, ge=1, le=MAX_DELAY_S)
    timezone: str = Field(default="UTC", min_length=1, max_length=64,
                          description="An IANA zone: cron follows its clock, DST included.")
    overlap: Overlap = Field(default="skip", description=_OVERLAP_HELP)
    catchup_s: float = Field(default=60, ge=1, le=MAX_DELAY_S, description="Slots missed by "
                             "up to this much (beat was down) still fire; older ones do not.")
    paused: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleCreate:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("give cron or every_s (one of them)")
        return self


class ScheduleUpdate(BaseModel):
    """Body of ``PATCH /v1/schedules/{id}``: the fields to change."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(default=None, min_length=1, max_length=200)
    input: JsonValue = None
    metadata: dict[str, JsonValue] | None = Field(default=None, max_length=64)
    priority: Literal["high", "normal", "low"] | None = None
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    every_s: float | None = Field(default=None, ge=1, le=MAX_DELAY_S)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    overlap: Overlap | None = None
    catchup_s: float | None = Field(default=None, ge=1, le=MAX_DELAY_S)
    paused: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> ScheduleUpdate:
        for name in self.model_fields_set - {"input", "cron", "every_s", "metadata"}:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        if "cron" in self.model_fields_set and "every_s" in self.model_fields_set and (
                (self.cron is None) == (self.every_s is None)):
            raise ValueError("give cron or every_s (one of them)")
        return self


class ScheduleOut(BaseModel):
    id: str
    agent: str
    input: JsonValue
    metadata: dict[str, JsonValue]
    priority: Literal["high", "normal", "low"]
    cron: str | None
    every_s: float | None
    timezone: str
    overlap: Overlap
    catchup_s: float
    paused: bool
    next_fire_at: str | None
    last_fired_for: str | None
    created_at: str
    updated_at: str


class ScheduleList(BaseModel):
    items: list[ScheduleOut]
    next_cursor: str | None


class ScheduleListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=200)


class HookSourceCreate(BaseModel):
    """Body of ``POST /v1/hook-sources``."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["github", "slack", "stripe", "standard"]
    secret: str = Field(min_length=1, max_length=500,
                        description="The signing secret the platform gave you (or you chose).")
    agent: str = Field(min_length=1, max_length=200)
    events: list[str] | None = Field(default=None, min_length=1, max_length=100,
                                     description="Only these event types start runs.")
    reply: HttpUrl | None = Field(default=None, description="Where each run's result goes, "
                                  "as a signed webhook.")


class HookSourceRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(min_length=1, max_length=500)


class HookSourceOut(BaseModel):
    id: str
    url: str
    provider: str
    agent: str
    events: list[str] | None
    reply: str | None
    created_at: str
    previous_secret_expires_at: str | None


class HookSourceList(BaseModel):
    items: list[HookSourceOut]


Scope = Literal["runs:read", "runs:write", "admin"]
_DEFAULT_KEY_SCOPES: tuple[Scope, ...] = ("runs:read", "runs:write")


class ApiKeyCreate(BaseModel):
    """Body of ``POST /v1/api-keys``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=200)
    scopes: list[Scope] = Field(default_factory=lambda: list(_DEFAULT_KEY_SCOPES), min_length=1)


class ApiKeyOut(BaseModel):
    id: str
    prefix: str
    name: str
    scopes: list[str]
    created_at: str
    last_used_at: str | None
    revoked_at: str | None
    key: str | None = Field(default=None, description="Only when it is made.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class SessionOut(BaseModel):
    id: str
    state: dict[str, JsonValue]
    version: int
    created_at: str
    updated_at: str
    runs: list[str]


class CheckOut(BaseModel):
    ok: bool
    latency_ms: float
    error: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    version: str
    checks: dict[str, CheckOut]
    queues: dict[str, int] | None = None
    oldest_queued_age_s: float | None = None
