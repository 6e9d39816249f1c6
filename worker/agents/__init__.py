"""What users write: ``@agent("name")`` turns a function into a runnable agent; the
registry; ``RunContext`` (``ctx``, in ``context``); the built-in agents.

An agent is ``fn(ctx, input) -> result``: JSON in, JSON out. If it declares an
``input_model`` (a pydantic model), the API validates input against it before anything is
queued, and the agent receives the parsed model instead of raw JSON.

May import: ``worker.base``.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from worker.base.errors import ChildFailed, ConfigurationError, UnknownAgent

__all__ = ["AgentSpec", "ChildFailed", "Limit", "Registry", "agent", "load_agents"]

# fn(ctx, input): ctx is a RunContext, or an AsyncRunContext for an ``async def`` agent.
AgentFn = Callable[[Any, Any], Any]

BUILTIN_MODULES = ("worker.agents.builtin", "worker.agents.research",
                   "worker.agents.llm_chat")


Strategy = Literal["queue", "cancel_in_progress", "keep_latest"]
STRATEGIES = ("queue", "cancel_in_progress", "keep_latest")


@dataclass(frozen=True)
class Limit:
    """At most ``max`` of the agent's runs with the same value at ``key`` (a path into the
    run: ``"input.customer_id"``) running at once, per tenant. A run over the limit waits
    queued, holding no worker slot (``queue``); or, when it is submitted, the runs going
    with its key are cancelled (``cancel_in_progress``), or those not started yet are
    (``keep_latest``). A request's ``concurrency_key`` stands in for the value."""

    key: str
    max: int = 1
    strategy: Strategy = "queue"

    def __post_init__(self) -> None:
        if not self.key.startswith("input.") or len(self.key) > 200:
            raise ConfigurationError(f"Limit key {self.key!r} is a path into the input, such "
                                     "as 'input.customer_id'")
        if not isinstance(self.max, int) or self.max < 1:
            raise ConfigurationError(f"Limit max must be a whole number of at least 1, not "
                                     f"{self.max!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(f"Limit strategy {self.strategy!r} is one of "
                                     f"{', '.join(STRATEGIES)}")

    def value(self, input: Any) -> str | None:
        """The run's key for this limit (``None``: the input has no such field, no limit)."""
        found = input
        for part in self.key.split(".")[1:]:
            if not isinstance(found, dict) or part not in found:
                return None
            found = found[part]
        if found is None:
            return None
        text = found if isinstance(found, str) else json.dumps(found, sort_keys=True)
        return f"{self.key}={text}"[:300]


@dataclass(frozen=True)
class AgentSpec:
    """A registered agent and its run policy (each field overridable per run where noted)."""

    name: str
    fn: AgentFn
    description: str = ""
    timeout_s: int | None = None  # per run: timeout_s
    max_attempts: int | None = None  # per run: max_attempts
    retry_on: tuple[type[BaseException], ...] = ()  # retried besides the defaults
    backoff_base_s: float | None = None  # default: AGENTQ_BACKOFF_BASE_S
    backoff_max_s: float | None = None  # default: AGENTQ_BACKOFF_MAX_S
    queue: str | None = None
    input_model: type[BaseModel] | None = None
    multitask: str = "enqueue"  # per run: multitask (enqueue, reject, interrupt)
    concurrency: Limit | None = None  # per run: concurrency_key

    @property
    def is_async(self) -> bool:
        """An ``async def`` agent: run on the worker's event loop, not in a thread."""
        return inspect.iscoroutinefunction(self.fn)

    def parse_input(self, raw: Any) -> Any:
        """Return what the agent receives: the parsed model if one is declared, else ``raw``."""
        if self.input_model is None:
            return raw
        return self.input_model.model_validate(raw)


class Registry:
    """Agents by name, filled by importing the modules that define them."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentSpec] = {}

    def agent(self, name: str, **policy: Any) -> Callable[[AgentFn], AgentFn]:
        """Register the decorated function as agent ``name`` with the given policy."""

        limits = policy.pop("concurrency", None)
        if isinstance(limits, list | tuple):
            if len(limits) > 1:
                raise ConfigurationError(f"agent {name!r}: one concurrency Limit per agent")
            limits = limits[0] if limits else None
        if limits is not None and not isinstance(limits, Limit):
            raise ConfigurationError(f"agent {name!r}: concurrency takes a Limit(key=..., "
                                     "max=...)")

        def register(fn: AgentFn) -> AgentFn:
            description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            self.add(AgentSpec(name=name, fn=fn, description=description, concurrency=limits,
                               **policy))
            return fn

        return register

    def add(self, spec: AgentSpec) -> None:
        existing = self._agents.get(spec.name)
        if existing is not None and _qualname(existing.fn) != _qualname(spec.fn):
            raise ConfigurationError(
                f"agent {spec.name!r} is registered twice: by {_qualname(existing.fn)} "
                f"and by {_qualname(spec.fn)}"
            )
        self._agents[spec.name] = spec

    def get(self, name: str) -> AgentSpec:
        try:
            return self._agents[name]
        except KeyError:
            raise UnknownAgent(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents


def _qualname(fn: AgentFn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


registry = Registry()
agent = registry.agent


def load_agents(modules: list[str]) -> Registry:
    """Import the built-in agents and the modules named by ``AGENTQ_AGENTS``."""
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigurationError(
                f"AGENTQ_AGENTS names {module!r}, which cannot be imported: {error}"
            ) from error
    return registry
