"""``ctx.llm``: chat completions against any OpenAI-compatible endpoint (OpenAI, vLLM,
Ollama, LiteLLM, ...), with no SDK: httpx with explicit timeouts.

Each call is a durable step, so a later attempt of the run gets the answer back instead of
paying for it again. 429 and 5xx answers and connection errors are retried within the
attempt (``AGENTQ_LLM_MAX_RETRIES`` times, waiting what ``Retry-After`` asks, else backoff
with full jitter), never past the attempt's timeout; then the error is raised, and the run
is retried by its policy. Other 4xx answers fail the run: a retry would not help. Before
each call the tenant's daily token budget is checked; each call's tokens and latency are
stored with its step, summed on the run and the tenant's day, logged and counted.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from worker.base import retry
from worker.base.errors import ConfigurationError, LLMError
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.runs import spend
from worker.runs.steps import StepRunner, Usage

OPENAI = "https://api.openai.com/v1"
_MAX_WAIT_S = 60.0  # the longest pause between two tries of one call
_clients: dict[int, tuple[Settings, httpx.Client]] = {}


def http_client(settings: Settings) -> httpx.Client:
    """This process's client for the endpoint (connections are reused across calls)."""
    known = _clients.get(os.getpid())
    if known is None or known[0] is not settings:
        headers = {"User-Agent": "agentq"}
        if settings.llm_api_key:
            headers["Authorization"] = f"Bearer {settings.llm_api_key}"
        timeout = httpx.Timeout(settings.llm_timeout_s, connect=10.0, pool=10.0)
        client = httpx.Client(base_url=settings.llm_base_url.rstrip("/") + "/",
                              headers=headers, timeout=timeout, follow_redirects=False)
        known = _clients[os.getpid()] = (settings, client)
    return known[1]


class LLM:
    """What an agent calls as ``ctx.llm``."""

    def __init__(self, rt: Runtime, *, steps: StepRunner, tenant_id: str, agent: str,
                 log: logging.LoggerAdapter[logging.Logger],
                 time_left: Callable[[], float], cancelled: Callable[[], bool]) -> None:
        self._rt = rt
        self._steps = steps
        self._tenant_id = tenant_id
        self._agent = agent
        self._log = log
        self._time_left = time_left
        self._cancelled = cancelled
        self._numbers = itertools.count(1)

    def chat(self, messages: list[dict[str, Any]], *, model: str | None = None,
             name: str | None = None, **params: Any) -> dict[str, Any]:
        """One chat completion, as a durable step named ``name`` (default ``llm:1``,
        ``llm:2``, ... in call order). Returns ``{content, message, model, finish_reason,
        usage: {input_tokens, output_tokens}, latency_ms}``; ``params`` (temperature,
        max_tokens, tools, ...) go into the request as they are."""
        step = name or f"llm:{next(self._numbers)}"
        body = {"model": model or self._rt.settings.llm_model, "messages": messages, **params}
        return dict(self._steps.run(step, self._call, (body,), {}, usage_of=_usage))

    def _call(self, body: dict[str, Any]) -> dict[str, Any]:
        settings = self._rt.settings
        if settings.llm_base_url.rstrip("/") == OPENAI and not settings.llm_api_key:
            raise ConfigurationError("ctx.llm needs AGENTQ_LLM_API_KEY for OpenAI, or "
                                     "AGENTQ_LLM_BASE_URL naming another endpoint")
        with self._rt.db.autocommit() as session:
            spend.check_budget(session, tenant_id=self._tenant_id,
                               budget=settings.tenant_daily_tokens)
        began = time.monotonic()
        answer = self._post(body)
        latency_ms = round((time.monotonic() - began) * 1000)
        result = _result(answer, body["model"], latency_ms)
        usage = result["usage"]
        labels = {"agent": self._agent, "model": result["model"]}
        metrics = self._rt.metrics
        metrics.inc("agentq_llm_calls", **labels)
        metrics.inc("agentq_llm_tokens", usage["input_tokens"], kind="input", **labels)
        metrics.inc("agentq_llm_tokens", usage["output_tokens"], kind="output", **labels)
        metrics.observe("agentq_llm_call_seconds", latency_ms / 1000, **labels)
        self._log.info("llm call", extra={"model": result["model"], "latency_ms": latency_ms,
                                          **usage})
        return result

    def _post(self, body: dict[str, Any]) -> Any:
        client = http_client(self._rt.settings)
        tries = self._rt.settings.llm_max_retries + 1
        for number in range(1, tries + 1):
            error: Exception
            try:
                response = client.post("chat/completions", json=body)
            except httpx.TransportError as transport:
                error, wait = transport, None
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError:
                        raise LLMError("the LLM endpoint answered with something other than "
                                       "JSON") from None
                if response.status_code != 429 and response.status_code < 500:
                    raise LLMError(f"the LLM endpoint answered {response.status_code}: "
                                   f"{response.text[:300]}")
                error = httpx.HTTPStatusError(f"the LLM endpoint answered "
                                              f"{response.status_code}",
                                              request=response.request, response=response)
                wait = retry.retry_after_s(response)
            if wait is None:
                wait = retry.backoff_s(number, base_s=0.5, max_s=20.0)
            wait = min(wait, _MAX_WAIT_S)
            if number == tries or wait >= self._time_left() - 1:
                raise error  # the run's retry policy takes it from here
            self._log.warning("llm call failed, trying again",
                              extra={"error": str(error), "retry_in_s": round(wait, 2)})
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._cancelled():
            time.sleep(min(left, 0.1))


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
