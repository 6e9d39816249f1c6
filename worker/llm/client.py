"""``ctx.llm``: chat completions against any OpenAI-compatible endpoint (OpenAI, vLLM,
Ollama, LiteLLM, ...), with no SDK.

Each call is a durable step, so a later attempt of the run gets the answer back instead of
paying for it again. With ``stream=True`` the text is published as it is written (token
frames: ``worker.llm.stream``, ``worker.base.tokens``) and the step stores the whole message
once, as the call made without it would. 429 and 5xx answers and connection errors (a
stream cut off midway included) are retried within the attempt
(``AGENTQ_LLM_MAX_RETRIES`` times, waiting what ``Retry-After`` asks, else backoff with full
jitter), never past the attempt's timeout; then ``LLMUnavailable`` (retryable) is
raised, and the run is retried by its policy. Other 4xx answers fail the run: a retry would
not help. Before each call the tenant's daily token budget is checked; each call's tokens
and latency are stored with its step, summed on the run and the tenant's day, logged and
counted.

The HTTP client is aiohttp on the worker's event loop (``Endpoint``: one session and one
connection pool per process, for sync and async agents alike). Measured at 2,000 calls at
once to an endpoint answering after 10 s (2 cores): aiohttp 11.8 s, httpx's AsyncClient
115 s (its pool's bookkeeping grows with the connections in use: encode/httpx#3215), raw
asyncio sockets 10.9 s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.trace import SpanKind

from worker.base import retry, tracing
from worker.base.errors import ConfigurationError, LLMError, RetryableError
from worker.base.metrics import Metrics
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.llm import stream
from worker.llm.limits import Limits, LLMRateLimited, cost_of, estimate_tokens
from worker.llm.stream import OnText, Streamed, TokenSink
from worker.runs import spend
from worker.runs.steps import AsyncStepRunner, StepRunner, Usage

OPENAI = "https://api.openai.com/v1"
_MAX_WAIT_S = 60.0  # the longest pause between two tries of one call
_POLL_S = 0.25  # how often a sync agent's wait for its call looks at the cancel flag
_RETRIED = frozenset({429, 500, 502, 503, 504})
_CALL_MARGIN_S = 5.0  # a call waits for its rate limit only if this much time is left after


class LLMUnavailable(RetryableError):
    """The endpoint kept answering 429 or 5xx, or could not be reached: try again later."""


class Endpoint:
    """The endpoint as this process calls it: one aiohttp session on the worker's loop."""

    @classmethod
    def of(cls, rt: Runtime) -> Endpoint:
        return rt.own("llm_endpoint", lambda: cls(
            rt.settings, metrics=rt.metrics,
            limits=Limits(rt.settings.llm_limits, rt.bus) if rt.settings.llm_limits else None))

    def __init__(self, settings: Settings, *, metrics: Metrics,
                 limits: Limits | None = None) -> None:
        self.pid = os.getpid()
        self._settings = settings
        self._metrics = metrics
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None
        self.url = settings.llm_base_url.rstrip("/") + "/chat/completions"

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:  # on the loop: made in a coroutine
            headers = {"User-Agent": "agentq"}
            if self._settings.llm_api_key:
                headers["Authorization"] = f"Bearer {self._settings.llm_api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        return self._session

    async def post(self, body: dict[str, Any], *, time_left: Callable[[], float],
                   log: logging.LoggerAdapter[logging.Logger],
                   streamed: Callable[[int], OnText] | None = None) -> Streamed:
        """The endpoint's answer (parsed JSON), retrying 429, 5xx and connection errors
        within what is left of the attempt. With ``streamed``, the request asks for a
        stream and each try's text goes where ``streamed(try number)`` says as it comes.
        Each try first takes its share of the model's rate limit, if it has one."""
        settings = self._settings
        if settings.llm_base_url.rstrip("/") == OPENAI and not settings.llm_api_key:
            raise ConfigurationError("ctx.llm needs AGENTQ_LLM_API_KEY for OpenAI, or "
                                     "AGENTQ_LLM_BASE_URL naming another endpoint")
        tries = settings.llm_max_retries + 1
        for number in range(1, tries + 1):
            wait: float | None
            taken = await self._room(body, time_left, log)
            try:
                on_text = streamed(number) if streamed is not None else None
                status, answer, retry_after = await self._once(body, time_left(), on_text)
            except (aiohttp.ClientError, TimeoutError) as error:
                problem, wait = f"{type(error).__name__}: {error}", None
            else:
                if status < 300:
                    assert isinstance(answer, Streamed)
                    await self._settle(body, answer, taken)
                    return answer
                if self._limits is not None:  # refused: it used none of the tokens taken
                    await self._limits.settle(str(body["model"]), taken=taken, used=0)
                if status not in _RETRIED:
                    raise LLMError(f"the LLM endpoint answered {status}: {str(answer)[:300]}")
                problem, wait = f"the LLM endpoint answered {status}", retry_after
            if wait is None:
                wait = retry.backoff_s(number, base_s=0.5, max_s=20.0)
            wait = min(wait, _MAX_WAIT_S)
            if number == tries or wait >= time_left() - 1:
                raise LLMUnavailable(problem, delay_s=wait)  # the run's policy takes it
            log.warning("llm call failed, trying again",
                        extra={"error": problem, "retry_in_s": round(wait, 2)})
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _room(self, body: dict[str, Any], time_left: Callable[[], float],
                    log: logging.LoggerAdapter[logging.Logger]) -> int:
        """Wait for room under the model's rate limit (``worker.llm.limits``) while the
        attempt has time for it, else raise ``LLMRateLimited``; the tokens taken."""
        if self._limits is None:
            return 0
        model, cost = str(body["model"]), cost_of(body)
        limit = self._limits.key_of(model) or "-"
        waited = False
        while True:
            wait, taken = await self._limits.acquire(model, cost)
            if not wait:
                return taken
            # The woken do not all come back at once: up to a fifth more, at most a second.
            wait += random.uniform(0, min(1.0, wait / 5))
            if wait + _CALL_MARGIN_S >= time_left():  # no time to wait and then call
                self._metrics.inc("agentq_llm_rate_limited", limit=limit, outcome="deferred")
                raise LLMRateLimited(f"{model} is at its rate limit (AGENTQ_LLM_LIMITS); "
                                     f"room again in {wait:.1f} s, after this attempt's "
                                     "time", delay_s=wait + random.uniform(0, min(5.0, wait)))
            if not waited:
                self._metrics.inc("agentq_llm_rate_limited", limit=limit, outcome="waited")
                log.info("llm call waits for its rate limit",
                         extra={"model": model, "wait_s": round(wait, 3)})
            waited = True
            await asyncio.sleep(wait)

    async def _settle(self, body: dict[str, Any], answer: Streamed, taken: int) -> None:
        usage = answer.answer.get("usage") if isinstance(answer.answer, dict) else None
        if self._limits is not None and isinstance(usage, dict):
            used = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens")
                                                              or 0)
            await self._limits.settle(str(body["model"]), taken=taken, used=used)

    async def _once(self, body: dict[str, Any], time_left_s: float,
                    on_text: OnText | None) -> tuple[int, Streamed | str, float | None]:
        timeout = aiohttp.ClientTimeout(total=max(0.1, min(self._settings.llm_timeout_s,
                                                           time_left_s)), connect=10.0)
        began = time.monotonic()
        async with self._client().post(self.url, json=body, timeout=timeout) as response:
            if response.status >= 300:
                retry_after = retry.parse_retry_after(response.headers.get("Retry-After", ""))
                return response.status, await response.text(), retry_after
            if on_text is not None:
                return response.status, await stream.read(response, on_text, began=began), None
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                raise LLMError("the LLM endpoint answered with something other than "
                               "JSON") from None
            return response.status, Streamed(answer, None, 0), None


class _Calls:
    """What sync and async ``ctx.llm`` share: the request, the answer, the accounting."""

    def __init__(self, rt: Runtime, *, tenant_id: str, agent: str,
                 log: logging.LoggerAdapter[logging.Logger],
                 time_left: Callable[[], float], tokens: TokenSink | None = None) -> None:
        self._rt = rt
        self._tenant_id = tenant_id
        self._agent = agent
        self._log = log
        self._time_left = time_left
        self._tokens = tokens
        self._numbers = itertools.count(1)

    def _request(self, messages: list[dict[str, Any]], model: str | None, name: str | None,
                 params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if "stream" in params or "stream_options" in params:
            raise TypeError("ctx.llm.chat streams with its own stream=True argument")
        step = name or f"llm:{next(self._numbers)}"
        body = {"model": model or self._rt.settings.llm_model, "messages": messages, **params}
        return step, body

    def _check_budget(self) -> None:
        with self._rt.db.autocommit() as session:
            spend.check_budget(session, tenant_id=self._tenant_id,
                               budget=self._rt.settings.tenant_daily_tokens)

    async def _post(self, body: dict[str, Any], step: str, streamed: bool,
                    within: str | None = None) -> dict[str, Any]:
        """The call (streamed if asked: the body then asks for it, usage included), its
        answer accounted for; its span a child of the current one, or of ``within``."""
        tokens = self._tokens if streamed else None
        if tokens is not None:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with tracing.span(f"chat {body['model']}", within=within, kind=SpanKind.CLIENT,
                          attributes=_request_attributes(body, self._rt.settings)) as span:
            began = time.monotonic()
            try:
                answer = await Endpoint.of(self._rt).post(
                    body, time_left=self._time_left, log=self._log,
                    streamed=functools.partial(tokens.begin, step) if tokens else None)
            finally:
                if tokens is not None:
                    await asyncio.to_thread(tokens.end, step)
            result = self._account(answer, body, round((time.monotonic() - began) * 1000))
            span.set_attributes({
                "gen_ai.response.model": result["model"],
                "gen_ai.response.finish_reasons": [str(result["finish_reason"])],
                "gen_ai.usage.input_tokens": result["usage"]["input_tokens"],
                "gen_ai.usage.output_tokens": result["usage"]["output_tokens"]})
            return result

    def _account(self, streamed: Streamed, body: dict[str, Any],
                 latency_ms: int) -> dict[str, Any]:
        result = _result(streamed.answer, body["model"], latency_ms)
        usage = result["usage"]
        estimated = bool(body.get("stream")) and not streamed.answer.get("usage")
        if estimated:  # an endpoint that ignored include_usage: the budget still counts
            usage.update(input_tokens=estimate_tokens(json.dumps(body["messages"])),
                         output_tokens=estimate_tokens(json.dumps(result["message"])))
        labels = {"agent": self._agent, "model": result["model"]}
        metrics = self._rt.metrics
        metrics.inc("agentq_llm_calls", **labels)
        metrics.inc("agentq_llm_tokens", usage["input_tokens"], kind="input", **labels)
        metrics.inc("agentq_llm_tokens", usage["output_tokens"], kind="output", **labels)
        metrics.observe("agentq_llm_call_seconds", latency_ms / 1000, **labels)
        extra: dict[str, Any] = {"model": result["model"], "latency_ms": latency_ms, **usage}
        if body.get("stream"):
            extra.update(streamed=True, chunks=streamed.chunks, usage_estimated=estimated)
            if streamed.first_text_s is not None:
                metrics.observe("agentq_llm_time_to_first_token_seconds",
                                streamed.first_text_s, **labels)
                extra["first_token_ms"] = round(streamed.first_text_s * 1000)
        self._log.info("llm call", extra=extra)
        return result


class LLM(_Calls):
    """What a sync agent calls as ``ctx.llm``: the call is made on the worker's loop, and
    this thread waits for it (looking at the cancel flag)."""

    def __init__(self, rt: Runtime, *, steps: StepRunner, loop: asyncio.AbstractEventLoop,
                 tenant_id: str, agent: str, log: logging.LoggerAdapter[logging.Logger],
                 time_left: Callable[[], float], cancelled: Callable[[], bool],
                 tokens: TokenSink | None = None) -> None:
        super().__init__(rt, tenant_id=tenant_id, agent=agent, log=log, time_left=time_left,
                         tokens=tokens)
        self._steps = steps
        self._loop = loop
        self._cancelled = cancelled

    def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
             name: str | None = None, stream: bool = False, **params: Any) -> dict[str, Any]:
        """One chat completion, as a durable step named ``name`` (default ``llm:1``,
        ``llm:2``, ... in call order). Returns ``{content, message, model, finish_reason,
        usage: {input_tokens, output_tokens}, latency_ms}``; ``params`` (temperature,
        max_tokens, tools, ...) go into the request as they are. With ``stream=True`` the
        text reaches the run's token listeners as it is written; the result is the same."""
        step, body = self._request(messages, model, name, params)
        return dict(self._steps.run(step, functools.partial(self._call, step=step,
                                                            streamed=stream),
                                    (body,), {}, usage_of=_usage))

    def _call(self, body: dict[str, Any], *, step: str, streamed: bool) -> dict[str, Any]:
        self._check_budget()
        future = asyncio.run_coroutine_threadsafe(  # on the loop: the step's span named
            self._post(body, step, streamed, within=tracing.traceparent()), self._loop)
        try:
            while True:
                try:
                    return future.result(timeout=_POLL_S)
                except concurrent.futures.TimeoutError:
                    if self._cancelled():
                        raise
        except BaseException:  # a cancel, or a time limit raised into this thread
            future.cancel()
            raise


class AsyncLLM(_Calls):
    """What an async agent awaits as ``ctx.llm``."""

    def __init__(self, rt: Runtime, *, steps: AsyncStepRunner,
                 offload: Callable[[Callable[[], Any]], Awaitable[Any]], tenant_id: str,
                 agent: str, log: logging.LoggerAdapter[logging.Logger],
                 time_left: Callable[[], float], tokens: TokenSink | None = None) -> None:
        super().__init__(rt, tenant_id=tenant_id, agent=agent, log=log, time_left=time_left,
                         tokens=tokens)
        self._steps = steps
        self._offload = offload

    async def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
                   name: str | None = None, stream: bool = False,
                   **params: Any) -> dict[str, Any]:
        """As ``LLM.chat``, awaited."""
        step, body = self._request(messages, model, name, params)

        async def call(body: dict[str, Any]) -> dict[str, Any]:
            if self._rt.settings.tenant_daily_tokens > 0:  # else no budget: nothing to read
                await self._offload(self._check_budget)
            return await self._post(body, step, stream)

        return dict(await self._steps.run(step, call, (body,), {}, usage_of=_usage))


def _request_attributes(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The GenAI semantic conventions' attributes of a chat request (no content)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": body["model"],
        "server.address": urlsplit(settings.llm_base_url).hostname or ""}
    for field, name in (("max_tokens", "gen_ai.request.max_tokens"),
                        ("temperature", "gen_ai.request.temperature"),
                        ("top_p", "gen_ai.request.top_p")):
        if isinstance(body.get(field), int | float):
            attributes[name] = body[field]
    return attributes


def _result(answer: Any, model: str, latency_ms: int) -> dict[str, Any]:
    try:
        choice = answer["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise LLMError("the LLM endpoint's answer has no choices[0].message") from None
    usage = answer.get("usage") or {}
    return {
        "content": message.get("content"),
        "message": message,
        "model": answer.get("model") or model,
        "finish_reason": choice.get("finish_reason"),
        "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0),
                  "output_tokens": int(usage.get("completion_tokens") or 0)},
        "latency_ms": latency_ms,
    }


def _usage(result: Any) -> Usage:
    return Usage(result["model"], result["usage"]["input_tokens"],
                 result["usage"]["output_tokens"], result["latency_ms"])
