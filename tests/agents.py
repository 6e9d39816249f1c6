"""Agents the tests register through AGENTQ_AGENTS=tests.agents, as a user's module would."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import httpx
from celery.exceptions import SoftTimeLimitExceeded

from worker.agents import ChildFailed, Limit, agent
from worker.agents.context import AsyncRunContext, RunContext
from worker.base.errors import FatalError, RetryableError, WaitTimeout
from worker.base.queues import CPU_QUEUE


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


# Agents for reliability tests. Those on CRASH_QUEUE run only on workers a test starts
# for them (``-Q test.crash``), so killing those workers never touches the session's worker.
CRASH_QUEUE = "test.crash"


@agent("test.crash.sleep", queue=CRASH_QUEUE)
def crash_sleep(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``seconds`` on the crash queue (``later_s`` on later attempts)."""
    seconds = input.get("seconds", 3) if ctx.attempt == 1 else input.get("later_s", 0.2)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return {"attempt": ctx.attempt}


@agent("test.poison", queue=CRASH_QUEUE, max_attempts=3)
def poison(ctx: RunContext, input: dict[str, Any]) -> None:
    """Kill the process running it, every time."""
    os._exit(1)


@agent("test.timeout", timeout_s=1, max_attempts=2)
def too_slow(ctx: RunContext, input: dict[str, Any]) -> None:
    """Report progress, then outlast the time limit (working in short steps, so the time
    limit raised into its thread reaches it at once)."""
    ctx.emit("working", f"attempt {ctx.attempt} started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)


@agent("test.stubborn", timeout_s=1, max_attempts=1)
def stubborn(ctx: RunContext, input: dict[str, Any]) -> None:
    """Ignore the soft time limit, so only the hard limit can stop it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue


@agent("test.retry_later")
def retry_later(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """Ask for a retry after ``delay_s`` (default 0.3 s) on the first attempt."""
    if ctx.attempt == 1:
        raise RetryableError("the upstream is busy", delay_s=float(input.get("delay_s", 0.3)))
    return {"attempt": ctx.attempt}


@agent("test.http")
def http_status(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """Fail the first attempt as an HTTP call answered ``status`` would (via httpx)."""
    if ctx.attempt == 1:
        request = httpx.Request("POST", "https://llm.example/v1/chat/completions")
        response = httpx.Response(int(input["status"]), request=request)
        response.raise_for_status()
    return {"attempt": ctx.attempt}


@agent("test.steps")
def steps(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """Emit ``count`` events ``pause_s`` apart; fail the first attempt halfway if asked."""
    count, pause = int(input.get("count", 4)), float(input.get("pause_s", 0.2))
    for i in range(count):
        ctx.emit("step", f"attempt {ctx.attempt} step {i + 1}", index=i)
        time.sleep(pause)
        if input.get("fail_first") and ctx.attempt == 1 and i == count // 2:
            raise RetryableError("halfway failure")
    return {"steps": count}


@agent("test.deaf")
def deaf(ctx: RunContext, input: dict[str, Any]) -> None:
    """Sleep without ever looking at ctx.cancelled."""
    ctx.emit("working", "not listening")
    time.sleep(30)


@agent("test.stubborn_cancel")
def stubborn_cancel(ctx: RunContext, input: dict[str, Any]) -> None:
    """Ignore ctx.cancelled and swallow the Cancelled raised into it."""
    ctx.emit("working", "not stopping")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except Exception:  # noqa: S112 - the point of this agent
            continue


@agent("test.parked", queue="test.nobody")
def parked(ctx: RunContext, input: dict[str, Any]) -> None:
    """On a queue no worker consumes: it stays queued."""


@agent("test.block")
def block(ctx: RunContext, input: Any) -> dict[str, str]:
    """Wait (up to 30 s) until the test sets the Redis key test:release:<run id>."""
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not client.exists(f"test:release:{ctx.run_id}"):
        time.sleep(0.05)
    return {"released": "yes", "text": str((input or {}).get("text", ""))}


ORDER_QUEUE = "test.order"


@agent("test.chat")
def chat(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Remember each message in the session's history; return the history."""
    history = ctx.session.setdefault("history", [])
    history.append(input.get("message"))
    time.sleep(float(input.get("pause_s", 0)))
    return {"history": list(history), "tenant": ctx.tenant_id}


@agent("test.ordered", queue=ORDER_QUEUE)
def ordered(ctx: RunContext, input: dict[str, Any]) -> dict[str, float]:
    """Work ``seconds``; report when it started and ended (wall clock)."""
    began = time.time()
    time.sleep(float(input.get("seconds", 0.3)))
    return {"began": began, "ended": time.time()}


CAPPED_QUEUE = "test.capped"


@agent("test.capped", queue=CAPPED_QUEUE)
def capped(ctx: RunContext, input: dict[str, Any]) -> dict[str, float]:
    """Work ``seconds`` on the capped workers' queue; report when."""
    began = time.time()
    time.sleep(float(input.get("seconds", 0.5)))
    return {"began": began, "ended": time.time()}


SCALE_QUEUE = "test.scale"


@agent("test.scaled", queue=SCALE_QUEUE)
def scaled(ctx: RunContext, input: dict[str, Any]) -> dict[str, str]:
    """Sleep ``seconds`` on the scaling test's queue."""
    time.sleep(float(input.get("seconds", 1)))
    return {"done": "yes"}


@agent("test.durable", max_attempts=3, backoff_base_s=0.1, backoff_max_s=0.2)
def stepped(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Step "a" works; step "b" fails on the first attempt; each attempt notes its keys."""
    ctx.emit("keys", "this attempt's idempotency key", key=ctx.idempotency_key("charge"))
    a = ctx.step("a", lambda x: {"x": x + 1, "attempt": ctx.attempt}, input.get("x", 1))

    def b() -> str:
        if ctx.attempt == 1:
            raise RetryableError("b fails the first time")
        return "b done"

    return {"a": a, "b": ctx.step("b", b)}


@agent("test.durable.mismatch")
def mismatched(ctx: RunContext, input: dict[str, Any]) -> None:
    """Reuse one step name with other arguments (a loop that forgot to number its steps)."""
    for i in range(2):
        ctx.step("search", lambda query: query.upper(), f"query {i}")


@agent("test.llm.four", queue=CRASH_QUEUE, max_attempts=2)
def four_calls(ctx: RunContext, input: dict[str, Any]) -> list[str | None]:
    """Four LLM calls, with prompts ``<tag>:1`` to ``<tag>:4``."""
    return [ctx.llm.chat([{"role": "user", "content": f"{input['tag']}:{n}"}])["content"]
            for n in range(1, 5)]


@agent("test.unstorable")
def unstorable(ctx: RunContext, input: dict[str, Any]) -> Any:
    """Return (or emit, or keep in its session, or take from a step) what Postgres's jsonb
    cannot store: NaN, or the character U+0000."""
    value: Any = float("nan") if input.get("kind") == "nan" else "nul \x00 here"
    where = input.get("where", "result")
    if where == "emit":
        try:
            ctx.emit("bad", "an unstorable event", value=value)
        except ValueError as error:
            return {"emit_refused": str(error)}
    if where == "step":
        try:
            ctx.step("bad", lambda: {"value": value})
        except TypeError as error:
            return {"step_refused": str(error)}
    if where == "session":
        ctx.session["value"] = value
        return {"ok": True}
    return {"value": value}


@agent("test.cancelled_then_failing", max_attempts=3)
def cancelled_then_failing(ctx: RunContext, input: dict[str, Any]) -> None:
    """Be asked to stop (in Postgres only, as when the bus's notice is lost), then fail in
    a way that would earn a retry."""
    import psycopg

    url = os.environ["DATABASE_URL"].replace("+psycopg", "")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE runs SET cancel_requested_at = now() WHERE id = %s", (ctx.run_id,))
    raise RetryableError("the upstream is busy")


# Async agents: run on the worker's event loop (worker.execution.engine).
INFLIGHT_QUEUE = "test.inflight"


@agent("test.async.steps", max_attempts=3, backoff_base_s=0.1, backoff_max_s=0.2)
async def async_steps(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """An awaited emit, an async step "a", a plain step "b" failing the first attempt, and
    (given ``prompt``) an awaited LLM call."""
    await ctx.emit("started", f"attempt {ctx.attempt}")

    async def a(x: int) -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"x": x + 1, "attempt": ctx.attempt}

    def b() -> str:
        if ctx.attempt == 1:
            raise RetryableError("b fails the first time")
        return "b done"

    out: dict[str, Any] = {"a": await ctx.step("a", a, input.get("x", 1)),
                           "b": await ctx.step("b", b)}
    if input.get("prompt"):
        answer = await ctx.llm.chat([{"role": "user", "content": input["prompt"]}])
        out["llm"] = answer["content"]
    return out


@agent("test.async.sleep", queue=INFLIGHT_QUEUE)
async def async_sleep(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Wait ``seconds`` on the loop; report when (wall clock) and in which process."""
    began = time.time()
    await asyncio.sleep(float(input.get("seconds", 1)))
    return {"began": began, "ended": time.time(), "pid": os.getpid()}


@agent("test.async.deaf")
async def async_deaf(ctx: AsyncRunContext, input: dict[str, Any]) -> None:
    """Await without ever looking at ctx.cancelled."""
    await ctx.emit("working", "not listening")
    await asyncio.sleep(30)


async def _swallow_cancels(seconds: float) -> None:
    """Await for ``seconds``, swallowing every CancelledError (a cancel, a time limit)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            continue


@agent("test.async.stubborn")
async def async_stubborn(ctx: AsyncRunContext, input: dict[str, Any]) -> None:
    """Swallow every CancelledError, so only giving up on it ends its attempt."""
    await ctx.emit("working", "not stopping")
    await _swallow_cancels(30)


@agent("test.async.timeout", timeout_s=1, max_attempts=2)
async def async_too_slow(ctx: AsyncRunContext, input: dict[str, Any]) -> None:
    """Report progress, outlast the time limit, and report again as the limit reaches it."""
    await ctx.emit("working", f"attempt {ctx.attempt} started")
    try:
        await asyncio.sleep(30)
    finally:
        await ctx.emit("cleanup", f"attempt {ctx.attempt} stopped")


@agent("test.async.stubborn_timeout", timeout_s=1, max_attempts=1)
async def async_stubborn_timeout(ctx: AsyncRunContext, input: dict[str, Any]) -> None:
    """Ignore the time limit (swallow the CancelledError), so only the hard limit ends it."""
    await _swallow_cancels(30)


@agent("test.async.llm.four", queue=CRASH_QUEUE, max_attempts=2)
async def async_four_calls(ctx: AsyncRunContext, input: dict[str, Any]) -> list[str | None]:
    """Four awaited LLM calls, with prompts ``<tag>:1`` to ``<tag>:4``."""
    return [(await ctx.llm.chat([{"role": "user", "content": f"{input['tag']}:{n}"}]))
            ["content"] for n in range(1, 5)]


@agent("test.async.block", queue=CRASH_QUEUE)
async def async_block(ctx: AsyncRunContext, input: Any) -> dict[str, float]:
    """Await (up to 60 s) the Redis key test:release:<run id>; report when it began."""
    import redis.asyncio

    began = time.time()
    client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not await client.exists(
                f"test:release:{ctx.run_id}"):
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    return {"began": began}


@agent("test.cpu", queue=CPU_QUEUE)
def cpu_bound(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Burn the CPU ``seconds``, on the cpu queue's prefork worker; say in which process."""
    deadline, spins = time.monotonic() + float(input.get("seconds", 0.2)), 0
    while time.monotonic() < deadline:
        spins += 1
    return {"pid": os.getpid(), "spins": spins}


@agent("test.brief", queue=CRASH_QUEUE, timeout_s=1, max_attempts=1)
def brief(ctx: RunContext, input: dict[str, Any]) -> dict[str, float]:
    """Work 0.6 s of a 1 s limit; say how much of it was left."""
    time.sleep(0.6)
    return {"time_left": ctx.time_left()}


@agent("test.cpu.stubborn", queue=CPU_QUEUE, timeout_s=1, max_attempts=1)
def cpu_stubborn(ctx: RunContext, input: dict[str, Any]) -> None:
    """On the cpu queue: say which process runs it, then ignore the time limit for 60 s."""
    ctx.emit("working", "ignoring my limits", pid=os.getpid())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue


# Waits (tests/test_waits.py): agents that stop at ctx.wait_for and ctx.sleep.

@agent("test.wait", max_attempts=1)
def wait(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """A step, then wait at ``name`` (with ``schema`` if given); the step must not repeat."""
    before = ctx.step("before", lambda: {"attempt": ctx.attempt})
    try:
        data = ctx.wait_for(input.get("name", "answer"), timeout_s=input.get("timeout_s", 60),
                            schema=input.get("schema"), prompt=input.get("prompt"))
    except WaitTimeout as error:
        if input.get("catch", True):
            return {"timed_out": str(error), "before": before, "attempt": ctx.attempt}
        raise
    ctx.emit("resumed", "the agent's next line")
    return {"data": data, "before": before, "attempt": ctx.attempt}


@agent("test.async.wait", max_attempts=1)
async def async_wait(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """As test.wait, async: two waits one after the other."""
    first = await ctx.wait_for("first", timeout_s=60)
    second = await ctx.wait_for("second", timeout_s=60)
    return {"first": first, "second": second, "attempt": ctx.attempt}


@agent("test.sleep.durable", max_attempts=1)
def sleep_durable(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``seconds`` holding no slot (ctx.sleep), then say how long it was."""
    began = ctx.step("began", time.time)
    ctx.sleep("nap", float(input.get("seconds", 1)))
    return {"slept_s": time.time() - began, "attempt": ctx.attempt}


@agent("test.wait.crash", queue=CRASH_QUEUE, max_attempts=1)
def wait_crash(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """test.wait on the crash queue (its worker is killed while the run waits)."""
    data = ctx.wait_for("answer", timeout_s=120)
    return {"data": data, "attempt": ctx.attempt}


@agent("test.stream", max_attempts=2)
def stream(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """A streamed LLM call per prompt, from a plain ``def`` agent."""
    return {"answers": [ctx.llm.chat([{"role": "user", "content": prompt}], stream=True)
                        for prompt in input["prompts"]]}


@agent("test.limited", queue=CRASH_QUEUE, max_attempts=1,
       concurrency=Limit(key="input.customer", max=2))
async def limited(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """At most two at once per customer; says when it ran."""
    started = time.time()
    await asyncio.sleep(input.get("pause_s", 0.3))
    return {"customer": input.get("customer"), "start": started, "end": time.time()}


@agent("test.latest", queue=CRASH_QUEUE, max_attempts=1,
       concurrency=Limit(key="input.customer", max=1, strategy="keep_latest"))
async def latest(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """One at a time per customer; a newer submission replaces those not started."""
    await asyncio.sleep(input.get("pause_s", 0.5))
    return {"n": input.get("n")}


@agent("test.newest", queue=CRASH_QUEUE, max_attempts=1,
       concurrency=Limit(key="input.customer", max=1, strategy="cancel_in_progress"))
async def newest(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """One at a time per customer; a newer submission cancels the one going."""
    for _ in range(100):
        if ctx.cancelled:
            break
        await asyncio.sleep(0.05)
    return {"n": input.get("n")}


@agent("test.llm.rated", queue=CRASH_QUEUE, timeout_s=10, max_attempts=1)
async def rated(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """One LLM call of ``input.model`` (whose AGENTQ_LLM_LIMITS a test sets): one attempt
    only, so a deferred attempt that counted would dead-letter the run."""
    answer = await ctx.llm.chat([{"role": "user", "content": input["ask"]}],
                                model=input["model"])
    return {"content": answer["content"]}


# Child runs (ctx.start, ctx.gather, ctx.map): parents and children on the crash queue.
@agent("test.child.echo", queue=CRASH_QUEUE)
async def child_echo(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Work ``pause_s`` (a cancel reaches it at once, at its await), then echo ``x``."""
    await asyncio.sleep(float(input.get("pause_s", 0)))
    return {"echo": input.get("x"), "attempt": ctx.attempt}


@agent("test.child.fail", queue=CRASH_QUEUE, max_attempts=1)
def child_fail(ctx: RunContext, input: dict[str, Any]) -> None:
    raise FatalError("the child gives up")


@agent("test.parent.map", queue=CRASH_QUEUE)
def parent_map(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """``n`` echo children each working ``pause_s`` (or one per ``pauses``)."""
    pauses = input.get("pauses") or [input.get("pause_s", 0)] * input["n"]
    inputs = [{"x": i, "pause_s": pause} for i, pause in enumerate(pauses)]
    results = ctx.map("test.child.echo", inputs, max_concurrency=input.get("max_concurrency"),
                      timeout_s=input.get("timeout_s", 3600))
    return {"echoes": [result["echo"] for result in results]}


@agent("test.parent.async_map", queue=CRASH_QUEUE)
async def parent_async_map(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    inputs = [{"x": i, "pause_s": input.get("pause_s", 0)} for i in range(input["n"])]
    results = await ctx.map("test.child.echo", inputs,
                            max_concurrency=input.get("max_concurrency"))
    return {"echoes": [result["echo"] for result in results]}


@agent("test.parent.catch", queue=CRASH_QUEUE)
async def parent_catch(ctx: AsyncRunContext, input: dict[str, Any]) -> dict[str, Any]:
    failing = await ctx.start("test.child.fail", {})
    fine = await ctx.start("test.child.echo", {"x": "fine"})
    try:
        await failing.result()
    except ChildFailed as failed:
        return {"caught": failed.child_id, "status": failed.status,
                "error": failed.error, "fine": (await fine.result())["echo"]}
    return {"caught": None}


@agent("test.parent.kill", queue=CRASH_QUEUE)
def parent_kill(ctx: RunContext, input: dict[str, Any]) -> dict[str, Any]:
    """Starts its child, and its first attempt's worker dies right after."""
    child = ctx.start("test.child.echo", {"x": "once"}, name="only")
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"child": child.id, "echo": child.result()["echo"]}


@agent("test.parent.tree", queue=CRASH_QUEUE)
def parent_tree(ctx: RunContext, input: dict[str, Any]) -> Any:
    """Two children that wait until cancelled: one detached, one not."""
    kept = ctx.start("test.child.echo", {"pause_s": 60}, name="kept", detach=True)
    gone = ctx.start("test.child.echo", {"pause_s": 60}, name="gone")
    return ctx.gather([kept, gone])


@agent("test.parent.pair", queue=CRASH_QUEUE)
def parent_pair(ctx: RunContext, input: dict[str, Any]) -> Any:
    """Two children that work until cancelled, gathered."""
    return ctx.gather([ctx.start("test.child.echo", {"pause_s": 60}, name=name)
                       for name in ("a", "b")])


@agent("test.recursive", queue=CRASH_QUEUE)
def recursive(ctx: RunContext, input: dict[str, Any]) -> Any:
    """Starts itself, and waits for itself: a tree that would never end."""
    return ctx.start("test.recursive", {}).result()


@agent("test.llm.revise", queue=CRASH_QUEUE, max_attempts=1)
def revise(ctx: RunContext, input: dict[str, Any]) -> list[str | None]:
    """Two LLM calls on the topic (``<topic>:notes:1``, ``:2``), then two in the style asked
    (``<topic>:<style>:3``, ``:4``): a fork with another style redoes only those."""
    topic, style = input["topic"], input.get("style", "plain")
    prompts = [f"{topic}:notes:1", f"{topic}:notes:2", f"{topic}:{style}:3", f"{topic}:{style}:4"]
    return [ctx.llm.chat([{"role": "user", "content": prompt}])["content"] for prompt in prompts]
