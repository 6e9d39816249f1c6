"""What an agent sees of its run: ``ctx``."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from worker.base.errors import Cancelled

T = TypeVar("T")


class Steps(Protocol):
    """What runs an agent's durable steps and waits (``worker.runs.steps.StepRunner``)."""

    def run(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> Any: ...

    def wait(self, name: str, *, kind: str, timeout_s: float, prompt: str | None = None,
             schema: Any = None) -> Any: ...


class AsyncSteps(Protocol):
    """What runs an async agent's durable steps (``worker.runs.steps.AsyncStepRunner``)."""

    async def run(self, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any: ...

    async def wait(self, name: str, *, kind: str, timeout_s: float,
                   prompt: str | None = None, schema: Any = None) -> Any: ...


class Tree(Protocol):
    """What starts a run's children and waits for them (``worker.runs.children``)."""

    def start(self, agent: str, input: Any, *, name: str | None, detach: bool,
              options: dict[str, Any]) -> Any: ...

    def gather(self, names: list[str], *, fail_fast: bool, timeout_s: float) -> list[Any]: ...

    def map(self, agent: str, inputs: list[Any], *, max_concurrency: int | None,
            prefix: str, fail_fast: bool, timeout_s: float,
            options: dict[str, Any]) -> list[Any]: ...


class AsyncTree(Protocol):
    """``Tree``, awaited."""

    async def start(self, agent: str, input: Any, *, name: str | None, detach: bool,
                    options: dict[str, Any]) -> Any: ...

    async def gather(self, names: list[str], *, fail_fast: bool,
                     timeout_s: float) -> list[Any]: ...

    async def map(self, agent: str, inputs: list[Any], *, max_concurrency: int | None,
                  prefix: str, fail_fast: bool, timeout_s: float,
                  options: dict[str, Any]) -> list[Any]: ...


CHILD_TIMEOUT_S = 24 * 3600.0  # how long a parent waits for its children, unless told


@dataclass(frozen=True)
class Child:
    """A child run (``ctx.start``): ``id``, its ``name`` under its parent, its ``agent``;
    ``result()`` waits for it (the run waits, holding no slot) and returns what it
    returned, or raises ``ChildFailed``."""

    id: str
    name: str
    agent: str
    _ctx: RunContext = field(repr=False, compare=False)

    def result(self, timeout_s: float = CHILD_TIMEOUT_S) -> Any:
        return self._ctx.gather([self], timeout_s=timeout_s)[0]


@dataclass(frozen=True)
class AsyncChild:
    """``Child`` of an async agent: ``await child.result()``."""

    id: str
    name: str
    agent: str
    _ctx: AsyncRunContext = field(repr=False, compare=False)

    async def result(self, timeout_s: float = CHILD_TIMEOUT_S) -> Any:
        return (await self._ctx.gather([self], timeout_s=timeout_s))[0]


def _as_model(schema: Any, data: Any) -> Any:
    """``wait_for``'s data, as the pydantic model given as its schema (if one was)."""
    if isinstance(schema, type) and hasattr(schema, "model_validate"):
        return schema.model_validate(data)
    return data


class AsyncChat(Protocol):
    """``ctx.llm`` of an async agent (``worker.llm.client.AsyncLLM``)."""

    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                   name: str | None = None, **params: Any) -> dict[str, Any]:
        """One chat completion, awaited, as a durable step (see ``Chat.chat``)."""
        ...


class Chat(Protocol):
    """``ctx.llm`` (``worker.llm.client.LLM``): chat completions, each a durable step."""

    def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
             name: str | None = None, **params: Any) -> dict[str, Any]:
        """One chat completion, as a durable step named ``name`` (default ``llm:1``,
        ``llm:2``, ... in call order). Returns ``{content, message, model, finish_reason,
        usage: {input_tokens, output_tokens}, latency_ms}``."""
        ...


def idempotency_key(run_id: str, name: str) -> str:
    """The same for every attempt of the run: pass it to APIs that deduplicate by key."""
    return f"agentq-{run_id}-{hashlib.sha256(name.encode()).hexdigest()[:24]}"


@dataclass
class _Context:
    """What sync and async agents' contexts share."""

    run_id: str
    tenant_id: str
    agent: str
    attempt: int
    max_attempts: int
    timeout_s: int
    session_id: str | None
    request_id: str | None
    log: logging.LoggerAdapter[logging.Logger]
    session: dict[str, Any]
    _is_cancelled: Callable[[], bool] = field(repr=False)
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    @property
    def cancelled(self) -> bool:
        """True once the run has been asked to stop (the request arrives within a second)."""
        return self._is_cancelled()

    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if the run has been asked to stop."""
        if self.cancelled:
            raise Cancelled(f"run {self.run_id} was cancelled")

    def time_left(self) -> float:
        """Seconds left before this attempt's timeout."""
        return max(0.0, self._deadline - time.monotonic())

    def idempotency_key(self, name: str) -> str:
        """A key that is the same for every attempt of this run: give it to APIs that
        deduplicate (Stripe's Idempotency-Key, an email provider's), so a step cut off
        mid-call does not act twice."""
        return idempotency_key(self.run_id, name)


@dataclass
class RunContext(_Context):
    """The handle a (sync) agent gets for one attempt of one run.

    ``emit`` appends a progress event to the run's log; ``cancelled`` says whether someone
    asked the run to stop; ``time_left()`` is what remains of the attempt's timeout;
    ``session`` is the conversation's state (a dict, saved when the attempt succeeds; without
    a session_id it is an empty dict that is not kept). ``step`` runs a function once per
    run and name, whatever the attempt; ``llm`` makes LLM calls, each a step.
    """

    _emit: Callable[[dict[str, Any]], int] = field(default=lambda data: 0, repr=False)
    _steps: Steps | None = field(default=None, repr=False)
    _llm: Chat | None = field(default=None, repr=False)
    _tree: Tree | None = field(default=None, repr=False)

    def emit(self, phase: str, message: str, **data: Any) -> int:
        """Append a ``progress`` event ``{phase, message, **data}``; return its ``seq``."""
        return self._emit({"phase": phase, "message": message, **data})

    def step(self, name: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` once for this run and ``name``: its JSON result is
        committed before this returns, and a later attempt (a retry, a crash recovery, a
        replay) gets it back without calling ``fn``. A step that raised is not kept and
        runs again. In a loop, number the names (``f"search:{i}"``); a name reused with
        other arguments raises ``StepMismatch``."""
        assert self._steps is not None, "steps need a worker's context"
        return self._steps.run(name, fn, args, kwargs)  # type: ignore[no-any-return]

    def wait_for(self, name: str, *, timeout_s: float, schema: Any = None,
                 prompt: str | None = None) -> Any:
        """Wait for a person or a system to send data, as long as ``timeout_s`` (hours or
        days are fine): the run becomes ``waiting`` and gives its worker slot back (this
        attempt ends here, and does not count toward ``max_attempts``). Once the waitpoint
        ``name`` is completed (``POST /v1/runs/{id}/waitpoints/{name}``, its signed URL, a
        Slack button), a new attempt replays the run's finished steps and gets the data
        from this call at once. ``schema`` (a JSON Schema, or a pydantic model class: the
        data comes back as the model) is what the data must match; ``prompt`` is shown to
        whoever answers. At the deadline this raises ``WaitTimeout`` (catch it to go on).

        Code before the call runs again on resume: keep what must not repeat in steps."""
        assert self._steps is not None, "waits need a worker's context"
        data = self._steps.wait(name, kind="wait", timeout_s=timeout_s, prompt=prompt,
                                schema=schema)
        return _as_model(schema, data)

    def sleep(self, name: str, seconds: float) -> None:
        """A durable timer: the run waits ``seconds`` holding no worker slot, and goes on
        here in a new attempt (as ``wait_for``, without data)."""
        assert self._steps is not None, "waits need a worker's context"
        self._steps.wait(name, kind="sleep", timeout_s=seconds)

    def start(self, agent: str, input: Any = None, *, name: str | None = None,
              detach: bool = False, **options: Any) -> Child:
        """Start a child run of ``agent`` (this run's tenant), once per run and ``name``
        (default ``<agent>:1``, ``<agent>:2``, ... in call order): a later attempt gets the
        same child back. ``options``: timeout_s, max_attempts, priority, metadata,
        session_id, concurrency_key, delay_s, start_at, ttl_s (else the agent's policy).
        ``detach=True``: not cancelled with this run."""
        assert self._tree is not None, "children need a worker's context"
        state = self._tree.start(agent, {} if input is None else input, name=name,
                                 detach=detach, options=options)
        return Child(state.id, state.name, state.agent, self)

    def gather(self, children: list[Child], *, fail_fast: bool = False,
               timeout_s: float = CHILD_TIMEOUT_S) -> list[Any]:
        """The children's results, in their order, once they all ended (this run waits
        meanwhile, holding no slot). A failed child raises ``ChildFailed`` (with
        ``fail_fast``, as soon as one fails); ``WaitTimeout`` after ``timeout_s``."""
        assert self._tree is not None, "children need a worker's context"
        return self._tree.gather([child.name for child in children], fail_fast=fail_fast,
                                 timeout_s=timeout_s)

    def map(self, agent: str, inputs: list[Any], *, max_concurrency: int | None = None,
            name: str = "map", fail_fast: bool = False, timeout_s: float = CHILD_TIMEOUT_S,
            **options: Any) -> list[Any]:
        """A child of ``agent`` per input (named ``<name>:<i>``), at most
        ``max_concurrency`` going at once (the next starts as one ends); their results in
        the inputs' order, as ``gather``."""
        assert self._tree is not None, "children need a worker's context"
        return self._tree.map(agent, list(inputs), max_concurrency=max_concurrency,
                              prefix=name, fail_fast=fail_fast, timeout_s=timeout_s,
                              options=options)

    @property
    def llm(self) -> Chat:
        """Chat completions against the configured endpoint, each call a durable step."""
        assert self._llm is not None, "ctx.llm needs a worker's context"
        return self._llm


@dataclass
class AsyncRunContext(_Context):
    """The handle an ``async def`` agent gets: as ``RunContext``, with ``emit``, ``step`` and
    ``llm.chat`` awaited. ``step`` takes a coroutine function (awaited) or a plain one (run
    in a thread, so it cannot stall the worker's loop). A cancel, or the attempt's timeout,
    reaches the agent as ``asyncio.CancelledError`` at the ``await`` it is in."""

    _emit: Callable[[dict[str, Any]], Awaitable[int]] | None = field(default=None, repr=False)
    _steps: AsyncSteps | None = field(default=None, repr=False)
    _llm: AsyncChat | None = field(default=None, repr=False)
    _tree: AsyncTree | None = field(default=None, repr=False)

    async def emit(self, phase: str, message: str, **data: Any) -> int:
        """Append a ``progress`` event ``{phase, message, **data}``; return its ``seq``."""
        assert self._emit is not None, "emit needs a worker's context"
        return await self._emit({"phase": phase, "message": message, **data})

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any,
                   **kwargs: Any) -> Any:
        """As ``RunContext.step``, awaited; ``fn`` may be a coroutine function."""
        assert self._steps is not None, "steps need a worker's context"
        return await self._steps.run(name, fn, args, kwargs)

    async def wait_for(self, name: str, *, timeout_s: float, schema: Any = None,
                       prompt: str | None = None) -> Any:
        """As ``RunContext.wait_for``, awaited."""
        assert self._steps is not None, "waits need a worker's context"
        data = await self._steps.wait(name, kind="wait", timeout_s=timeout_s, prompt=prompt,
                                      schema=schema)
        return _as_model(schema, data)

    async def sleep(self, name: str, seconds: float) -> None:
        """As ``RunContext.sleep``, awaited."""
        assert self._steps is not None, "waits need a worker's context"
        await self._steps.wait(name, kind="sleep", timeout_s=seconds)

    async def start(self, agent: str, input: Any = None, *, name: str | None = None,
                    detach: bool = False, **options: Any) -> AsyncChild:
        """As ``RunContext.start``, awaited."""
        assert self._tree is not None, "children need a worker's context"
        state = await self._tree.start(agent, {} if input is None else input, name=name,
                                       detach=detach, options=options)
        return AsyncChild(state.id, state.name, state.agent, self)

    async def gather(self, children: list[AsyncChild], *, fail_fast: bool = False,
                     timeout_s: float = CHILD_TIMEOUT_S) -> list[Any]:
        """As ``RunContext.gather``, awaited."""
        assert self._tree is not None, "children need a worker's context"
        return await self._tree.gather([child.name for child in children],
                                       fail_fast=fail_fast, timeout_s=timeout_s)

    async def map(self, agent: str, inputs: list[Any], *, max_concurrency: int | None = None,
                  name: str = "map", fail_fast: bool = False,
                  timeout_s: float = CHILD_TIMEOUT_S, **options: Any) -> list[Any]:
        """As ``RunContext.map``, awaited."""
        assert self._tree is not None, "children need a worker's context"
        return await self._tree.map(agent, list(inputs), max_concurrency=max_concurrency,
                                    prefix=name, fail_fast=fail_fast, timeout_s=timeout_s,
                                    options=options)

    @property
    def llm(self) -> AsyncChat:
        """Chat completions, awaited, each call a durable step."""
        assert self._llm is not None, "ctx.llm needs a worker's context"
        return self._llm
