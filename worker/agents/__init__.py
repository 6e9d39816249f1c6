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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from worker.base.errors import ConfigurationError, UnknownAgent

# fn(ctx, input): ctx is a RunContext, or an AsyncRunContext for an ``async def`` agent.
AgentFn = Callable[[Any, Any], Any]

BUILTIN_MODULES = ("worker.agents.builtin", "worker.agents.research",
                   "worker.agents.llm_chat")


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

        def register(fn: AgentFn) -> AgentFn:
            description = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            self.add(AgentSpec(name=name, fn=fn, description=description, **policy))
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
