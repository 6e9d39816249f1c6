"""The one settings object, read from the environment once and validated at start.

Nothing else in agentq reads ``os.environ``: processes build a ``Settings`` with
``load_settings()`` (the API in its factory, Celery in ``worker.celery``) and pass it down.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.base.errors import ConfigurationError

_POSTGRES_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def normalize_database_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` as managed services hand them out."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _POSTGRES_SCHEMES:
        raise ValueError(
            "must be a PostgreSQL URL such as postgresql://user:password@host:5432/dbname"
        )
    return f"{_POSTGRES_SCHEMES[scheme]}://{rest}"


def _check_redis_url(url: str) -> str:
    scheme = url.partition("://")[0]
    if scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("must be a Redis URL such as redis://localhost:6379/0")
    return url


@dataclass(frozen=True)
class LLMRate:
    """One model's limits from ``AGENTQ_LLM_LIMITS``: at most ``requests`` calls in any
    ``request_window_s``, and ``tokens`` (input + output) per ``token_window_s``; 0: none."""

    requests: int = 0
    request_window_s: float = 60.0
    tokens: int = 0
    token_window_s: float = 60.0


_RATE_UNITS = {"rpm": ("requests", 60.0), "rps": ("requests", 1.0),
               "tpm": ("tokens", 60.0), "tps": ("tokens", 1.0)}


def parse_llm_limits(value: str) -> dict[str, LLMRate]:
    """``gpt-4o=500rpm:300000tpm, *=60rpm`` as each model's ``LLMRate`` (``*``: any model
    not named, each with limits of its own)."""
    limits: dict[str, LLMRate] = {}
    for part in _split_csv(value):
        model, sep, rates = part.rpartition("=")
        model = model.strip()
        if not sep or not model:
            raise ValueError(f"{part!r} should be MODEL=RATE[:RATE], e.g. gpt-4o=500rpm:30000tpm")
        fields: dict[str, Any] = {}
        for rate in rates.split(":"):
            rate = rate.strip().lower()
            amount, unit = rate[:-3], rate[-3:]
            if unit not in _RATE_UNITS or not amount.isdigit() or int(amount) < 1:
                raise ValueError(f"{rate!r} (for {model}) should be a whole number followed "
                                 "by rpm, rps, tpm or tps, e.g. 500rpm")
            kind, window_s = _RATE_UNITS[unit]
            if kind in fields:
                raise ValueError(f"{model} has two {kind} limits")
            fields[kind], fields[f"{kind[:-1]}_window_s"] = int(amount), window_s
        if model in limits:
            raise ValueError(f"{model} is named twice")
        limits[model] = LLMRate(**fields)
    return limits


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DatabaseSettings(BaseSettings):
    """What reaching Postgres takes (all that ``alembic upgrade head`` needs)."""

    model_config = SettingsConfigDict(env_prefix="AGENTQ_", extra="ignore", frozen=True)

    database_url: str = Field(validation_alias=AliasChoices("DATABASE_URL", "database_url"))
    db_pool_size: int = Field(default=10, ge=1)
    db_connect_timeout_s: int = Field(default=3, ge=1)
    # The bound on every call to Postgres, Redis and the broker, in every process: a link
    # that hangs (no reset, no answer) fails the call within it (worker.base.db, bus, queues).
    dependency_timeout_s: float = Field(default=5.0, ge=0.5, le=300)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)


class Settings(DatabaseSettings):
    """Everything agentq reads from its environment; required fields have no default."""

    redis_url: str = Field(validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    broker_url: str | None = Field(
        default=None, validation_alias=AliasChoices("BROKER_URL", "broker_url")
    )
    agents: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    default_timeout_s: int = Field(default=300, ge=1)
    max_timeout_s: int = Field(default=3600, ge=1)
    default_max_attempts: int = Field(default=3, ge=1, le=100)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    schedule_tick_s: float = Field(default=1.0, gt=0, le=60)  # how often beat fires schedules
    dispatch_grace_s: float = Field(default=5.0, ge=0)
    # Queued runs published longer ago than this, and missing from the broker's queue, are
    # published again (a broker that lost its data, a message dropped by a failing task).
    redispatch_after_s: float = Field(default=30.0, ge=0)
    # Runs that ended (not dead letters until dismissed) this many days ago are deleted
    # with all that is theirs by the sweeper (worker.runs.retention); 0: kept forever.
    retention_days: int = Field(default=30, ge=0)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    lease_timeout_s: float = Field(default=30.0, gt=0)
    hard_timeout_grace_s: float = Field(default=30.0, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # A worker process holds this many attempts at once (worker.execution.engine); plain
    # ``def`` agents among them run in at most this many threads.
    worker_slots: int = Field(default=2000, ge=1, le=100_000)
    sync_agent_threads: int = Field(default=64, ge=1, le=10_000)
    # A running attempt asked to stop has this long before the worker terminates it.
    cancel_grace_s: float = Field(default=10.0, ge=0)
    # SSE and WebSocket: a keep-alive every so often, and a fresh connection every so often.
    stream_keepalive_s: float = Field(default=15.0, gt=0)
    stream_max_s: float = Field(default=3600.0, gt=0)
    # Outbound webhooks (the notifier), after the Standard Webhooks / Svix conventions.
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0])
    webhook_timeout_s: float = Field(default=15.0, gt=0)  # each attempt's whole deadline
    # At most this many deliveries of one tenant in flight at once, across all notifiers:
    # one tenant's slow receivers cannot hold every notifier thread.
    webhook_tenant_concurrency: int = Field(default=8, ge=1)
    webhook_response_max_bytes: int = Field(default=20 * 1024, ge=0)
    webhook_secret_overlap_s: float = Field(default=24 * 3600, ge=0)
    webhook_disable_after_s: float = Field(default=5 * 24 * 3600, gt=0)
    webhook_allowed_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Deliveries go through this HTTP proxy if set (HTTP(S)_PROXY are not read: the SSRF
    # guard pins the checked address, and the proxy is told to connect to it).
    webhook_proxy: str | None = None
    # Safe to expose: idempotency, rate limits, per-tenant caps, input caps.
    idempotency_ttl_s: float = Field(default=24 * 3600, gt=0)
    # A request in flight holds its Idempotency-Key this long; a repeat may take over after
    # (its first request died). Longer than any request may take (?wait= is at most 30 s).
    idempotency_lease_s: float = Field(default=60.0, ge=40)
    rate_limit_per_minute: int = Field(default=6000, ge=0)  # per API key; 0 turns it off
    tenant_max_queued: int = Field(default=10_000, ge=0)  # 0: no cap
    tenant_max_running: int = Field(default=0, ge=0)  # 0: no cap
    tenant_running_cap_mode: Literal["queue", "reject"] = "queue"
    max_input_bytes: int = Field(default=256 * 1024, ge=1)
    max_json_depth: int = Field(default=32, ge=1)
    # API processes remember a valid key this long; a revocation clears it at once.
    key_cache_s: float = Field(default=30.0, ge=0)
    # Optional JWT bearer tokens for a product's own front end (HS256 or RS256).
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_tenant_claim: str = "tenant"
    jwt_scopes_claim: str = "scope"
    metrics_token: str | None = None  # if set, GET /metrics needs it as a bearer token
    # Signs the dashboard's session cookies (32+ characters); the API refuses to start
    # without it unless the dashboard is turned off (only the API reads these two).
    secret_key: str | None = Field(default=None, min_length=32)
    dashboard: bool = True
    # Where clients reach the API: the base of the links agentq hands out (a waitpoint's
    # signed URL, in its run.waiting webhook and in GET /v1/runs/{id}/waitpoints).
    public_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://[^\s/?#]+")
    cookie_secure: bool = False  # always mark cookies Secure (behind a TLS-terminating proxy)
    # ctx.llm and the llm.chat agent: any OpenAI-compatible chat completions endpoint.
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: str | None = None  # sent as a bearer token; never logged
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = Field(default=120.0, gt=0)  # a call's read timeout
    llm_max_retries: int = Field(default=4, ge=0, le=20)  # 429, 5xx, connection errors
    # Each model's requests and tokens a minute (or second), across every worker:
    # "gpt-4o=500rpm:30000tpm,*=60rpm" (worker.llm.limits). Empty: no limits.
    llm_limits: Annotated[dict[str, LLMRate], NoDecode] = Field(default_factory=dict)
    # Child runs (ctx.start): how deep a tree may grow, how many children one run starts.
    max_run_depth: int = Field(default=8, ge=1, le=100)
    max_children: int = Field(default=10_000, ge=1, le=1_000_000)
    # Each tenant's LLM tokens (input + output) per UTC day; 0: no budget.
    tenant_daily_tokens: int = Field(default=0, ge=0)
    # Test-only: make a worker die right after committing a terminal transition.
    fault: str | None = None
    backoff_base_s: float = Field(default=2.0, ge=0)
    backoff_max_s: float = Field(default=300.0, ge=0)
    # OpenTelemetry (worker.base.tracing): on if an exporter or an OTLP endpoint is named;
    # the exporter reads its other OTEL_* variables itself.
    otel_traces_exporter: str | None = Field(default=None, validation_alias=AliasChoices(
        "OTEL_TRACES_EXPORTER", "otel_traces_exporter"))
    otel_exporter_otlp_endpoint: str | None = Field(default=None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "otel_exporter_otlp_endpoint"))
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                                    "otel_exporter_otlp_traces_endpoint"))
    otel_service_name: str | None = Field(default=None, validation_alias=AliasChoices(
        "OTEL_SERVICE_NAME", "otel_service_name"))
    otel_sdk_disabled: bool = Field(default=False, validation_alias=AliasChoices(
        "OTEL_SDK_DISABLED", "otel_sdk_disabled"))
    log_level: str = "INFO"
    beat_schedule_file: str = "celerybeat-schedule"

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return _check_redis_url(value)

    @field_validator("agents", mode="before")
    @classmethod
    def _agents(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("llm_limits", mode="before")
    @classmethod
    def _llm_limits(cls, value: Any) -> Any:
        return parse_llm_limits(value) if isinstance(value, str) else value

    @field_validator("webhook_retry_schedule", "webhook_allowed_cidrs", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("webhook_allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 127.0.0.0/8") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @model_validator(mode="after")
    def _timeouts(self) -> Settings:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError(
                "AGENTQ_DEFAULT_TIMEOUT_S must not exceed AGENTQ_MAX_TIMEOUT_S "
                f"({self.default_timeout_s} > {self.max_timeout_s})"
            )
        if (self.jwt_secret or self.jwt_public_key) and not (self.jwt_issuer
                                                            and self.jwt_audience):
            raise ValueError("AGENTQ_JWT_ISSUER and AGENTQ_JWT_AUDIENCE are required when "
                             "JWTs are accepted (AGENTQ_JWT_SECRET or AGENTQ_JWT_PUBLIC_KEY)")
        if self.heartbeat_interval_s * 2 > self.lease_timeout_s:
            raise ValueError(
                "AGENTQ_LEASE_TIMEOUT_S must be at least twice AGENTQ_HEARTBEAT_INTERVAL_S "
                f"({self.lease_timeout_s} < 2 x {self.heartbeat_interval_s}), or live runs "
                "would be taken for dead"
            )
        return self

    @property
    def visibility_timeout_s(self) -> int:
        """Redis's redelivery timeout: well past the longest run a worker may hold."""
        return int(max(3600, 2 * (self.max_timeout_s + self.hard_timeout_grace_s)))

    @property
    def celery_broker_url(self) -> str:
        """The broker Celery talks to: ``BROKER_URL`` if set (e.g. RabbitMQ), else Redis."""
        return self.broker_url or self.redis_url


class DevSettings(BaseSettings):
    """What ``agentq dev`` reads: the servers to use, if any, and where to listen."""

    model_config = SettingsConfigDict(env_prefix="AGENTQ_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "redis_url")
    )
    port: int = Field(default=8000, validation_alias=AliasChoices("PORT", "port"), gt=0, lt=65536)
    flower_port: int = Field(
        default=5555, validation_alias=AliasChoices("FLOWER_PORT", "flower_port"), gt=0, lt=65536
    )
    data_dir: Path = Path(".agentq")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        return None if value is None else normalize_database_url(value)


def _env_name(kind: type[BaseSettings], field: str) -> str:
    """The variable a field is read from: its alias (``DATABASE_URL``), else prefixed."""
    info = kind.model_fields.get(field)
    if info is None:  # pydantic names a field read through its alias by that alias
        return field
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    if isinstance(alias, str):
        return alias
    return f"{kind.model_config.get('env_prefix', '')}{field}".upper()


def _describe(error: ValidationError, kind: type[BaseSettings]) -> str:
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = _env_name(kind, field) if field else "settings"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required but not set"
        problems.append(f"{name} {message}" if field else message)
    return "; ".join(problems)


S = TypeVar("S", bound=BaseSettings)


def _load(kind: type[S], overrides: dict[str, Any]) -> S:
    try:
        return kind(**overrides)
    except ValidationError as error:
        raise ConfigurationError(f"invalid configuration: {_describe(error, kind)}") from None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment (and overrides); fail naming the variable."""
    return _load(Settings, overrides)


def load_database_settings(**overrides: Any) -> DatabaseSettings:
    """Build only what reaching Postgres takes; fail naming the variable."""
    return _load(DatabaseSettings, overrides)


def load_dev_settings(**overrides: Any) -> DevSettings:
    """Build what ``agentq dev`` needs; fail naming the variable."""
    return _load(DevSettings, overrides)
