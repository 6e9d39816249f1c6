"""Durable steps and LLM calls: a retried or recovered run does not pay for its calls twice.

LLM calls go to an OpenAI-compatible server the tests run on loopback (``FakeLLM``): it
answers ``echo: <prompt>`` with 10 input and 5 output tokens, and can be scripted to fail
or to hold a call while a worker is killed.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest

from tests.conftest import LLM_KEY, ApiClient, StartWorker
from tests.harness import FakeLLM, wait_for
from worker.base.models import new_id

pytestmark = pytest.mark.usefixtures("worker")


def events(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/runs/{run_id}/events").get_json()["items"]
    return items


def phases(api: ApiClient, run_id: str, phase: str) -> Counter[str]:
    """How many times each step reported ``phase`` (step.started, step.finished, ...)."""
    return Counter(e["data"]["step"] for e in events(api, run_id)
                   if e["type"] == "progress" and e["data"].get("phase") == phase)


def steps(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get(f"/v1/runs/{run_id}/steps").get_json()["items"]
    return items


def test_a_finished_step_is_not_run_again_and_a_failed_one_is(api: ApiClient) -> None:
    run = api.wait(api.submit("test.durable", {"x": 41})["id"])
    assert run["status"] == "succeeded" and run["attempt"] == 2
    # "a" ran on attempt 1 only; attempt 2 got its stored result back
    assert run["result"] == {"a": {"x": 42, "attempt": 1}, "b": "b done"}
    assert phases(api, run["id"], "step.started") == {"a": 1, "b": 2}
    assert phases(api, run["id"], "step.finished") == {"a": 1, "b": 1}
    assert phases(api, run["id"], "step.failed") == {"b": 1}
    resumed = [e["data"] for e in events(api, run["id"])
               if e["data"].get("phase") == "step.resumed"]
    assert [r["steps"] for r in resumed] == [["a"]]
    assert [(s["name"], s["attempt"]) for s in steps(api, run["id"])] == [("a", 1), ("b", 2)]


def test_the_idempotency_key_is_the_same_on_every_attempt(api: ApiClient) -> None:
    run = api.wait(api.submit("test.durable")["id"])
    keys = [e["data"]["key"] for e in events(api, run["id"]) if e["data"].get("phase") == "keys"]
    assert len(keys) == 2 and keys[0] == keys[1] and run["id"] in keys[0]
    other = api.wait(api.submit("test.durable")["id"])
    assert other["id"] not in keys[0]


def test_a_step_name_reused_with_other_arguments_fails_the_run_saying_how_to_fix_it(
        api: ApiClient) -> None:
    run = api.wait(api.submit("test.durable.mismatch")["id"])
    assert run["status"] == "failed" and run["attempt"] == 1
    assert run["error"]["type"] == "StepMismatch"
    assert "'search'" in run["error"]["message"] and "search:{i}" in run["error"]["message"]


def test_steps_of_another_tenants_run_are_not_found(api: ApiClient, other_api: ApiClient
                                                     ) -> None:
    run = api.wait(api.submit("test.durable")["id"])
    assert other_api.get(f"/v1/runs/{run['id']}/steps").status_code == 404


def test_llm_chat_answers_counts_its_usage_and_sends_the_key(api: ApiClient,
                                                             fake_llm: FakeLLM) -> None:
    prompt = new_id("prompt")
    run = api.wait(api.submit("llm.chat", {
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": prompt}], "temperature": 0.2})["id"])
    assert run["status"] == "succeeded", run
    assert run["result"]["content"] == f"echo: {prompt}"
    assert run["result"]["usage"] == {"input_tokens": 10, "output_tokens": 5}
    assert run["usage"] == {"llm_calls": 1, "input_tokens": 10, "output_tokens": 5}
    [call] = fake_llm.calls_for(prompt)
    assert call.authorization == f"Bearer {LLM_KEY}"
    assert call.body["temperature"] == 0.2 and call.body["model"] == "gpt-4o-mini"
    [step] = steps(api, run["id"])
    assert step["name"] == "chat" and step["usage"]["input_tokens"] == 10
    usage = api.get("/v1/usage").get_json()  # a tenant of its own: this run only
    assert (usage["llm_calls"], usage["input_tokens"], usage["output_tokens"]) == (1, 10, 5)
    assert usage["daily_token_budget"] is None and len(usage["days"]) == 7
    wait_for(lambda: 'agentq_llm_calls_total{agent="llm.chat"' in
             api.client.get("/metrics").get_data(as_text=True), timeout=10,
             what="the LLM call in /metrics")


def test_429_and_500_are_retried_within_the_attempt_honouring_retry_after(
        api: ApiClient, fake_llm: FakeLLM) -> None:
    prompt = new_id("prompt")
    fake_llm.script(prompt, [(429, {"Retry-After": "1"}), 500])
    run = api.wait(api.submit("llm.chat", {"messages": [{"role": "user",
                                                        "content": prompt}]})["id"])
    assert run["status"] == "succeeded" and run["attempt"] == 1
    calls = fake_llm.calls_for(prompt)
    assert len(calls) == 3
    assert calls[1].at - calls[0].at >= 0.95  # Retry-After: 1 was honoured
    assert run["usage"]["llm_calls"] == 1  # failed calls cost nothing


def test_a_refused_request_fails_the_run_with_what_the_endpoint_said(
        api: ApiClient, fake_llm: FakeLLM) -> None:
    prompt = new_id("prompt")
    fake_llm.script(prompt, [400])
    run = api.wait(api.submit("llm.chat", {"messages": [{"role": "user",
                                                        "content": prompt}]})["id"])
    assert run["status"] == "failed" and run["error"]["type"] == "LLMError"
    assert "400" in run["error"]["message"] and len(fake_llm.calls_for(prompt)) == 1


def test_bad_chat_input_is_refused_before_anything_is_queued(api: ApiClient) -> None:
    response = api.post("/v1/runs", json={"agent": "llm.chat", "input": {"messages": []}})
    assert response.status_code == 422
    assert any(e["field"].startswith("input.messages") for e in response.get_json()["errors"])


FOUR_CALLS = pytest.mark.parametrize("agent", ["test.llm.four", "test.async.llm.four"],
                                     ids=["sync agent", "async agent"])


@FOUR_CALLS
def test_a_run_killed_after_two_of_four_calls_makes_only_the_two_missing_calls(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker, agent: str) -> None:
    tag = new_id("tag")
    fake_llm.hold(f"{tag}:3")  # the third call is in flight when the worker dies
    a = crash_worker()
    run = api.submit(agent, {"tag": tag})
    wait_for(lambda: fake_llm.calls_for(f"{tag}:3"), timeout=30, what="the third call")
    b = crash_worker()
    a.signal(signal.SIGKILL)
    fake_llm.release()
    done = api.wait(run["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["result"] == [f"echo: {tag}:{n}" for n in range(1, 5)]
    received = {n: len(fake_llm.calls_for(f"{tag}:{n}")) for n in range(1, 5)}
    assert received == {1: 1, 2: 1, 3: 2, 4: 1}  # 3 again (its answer died with A), then 4
    assert done["usage"] == {"llm_calls": 4, "input_tokens": 40, "output_tokens": 20}
    assert [(s["name"], s["attempt"]) for s in steps(api, run["id"])] == [
        ("llm:1", 1), ("llm:2", 1), ("llm:3", 2), ("llm:4", 2)]
    assert phases(api, run["id"], "step.started") == {"llm:1": 1, "llm:2": 1, "llm:3": 2,
                                                      "llm:4": 1}
    assert set(phases(api, run["id"], "step.finished").values()) == {1}
    tries = api.get(f"/v1/runs/{run['id']}/attempts").get_json()["items"]
    assert [t["outcome"] for t in tries] == ["crashed", "succeeded"]
    assert tries[1]["worker"].startswith(f"{b.name}@")


@FOUR_CALLS
def test_the_daily_token_budget_stops_a_run(api: ApiClient, fake_llm: FakeLLM,
                                            crash_worker: StartWorker, agent: str) -> None:
    crash_worker(AGENTQ_TENANT_DAILY_TOKENS="30")  # two calls of 15 tokens
    tag = new_id("tag")
    run = api.wait(api.submit(agent, {"tag": tag})["id"])
    assert run["status"] == "failed" and run["error"]["type"] == "BudgetExceeded"
    assert "30 of 30 tokens" in run["error"]["message"]
    assert "AGENTQ_TENANT_DAILY_TOKENS" in run["error"]["message"]
    assert [len(fake_llm.calls_for(f"{tag}:{n}")) for n in range(1, 5)] == [1, 1, 0, 0]
    usage = api.get("/v1/usage").get_json()
    assert (usage["llm_calls"], usage["input_tokens"] + usage["output_tokens"]) == (2, 30)


def test_demo_research_runs_as_steps(api: ApiClient) -> None:
    run = api.wait(api.submit("demo.research", {
        "question": "Why is the sky blue and why are sunsets red?", "phase_s": 0})["id"])
    assert run["status"] == "succeeded" and run["result"]["citations"]
    names = [s["name"] for s in steps(api, run["id"])]
    assert names == ["parse", "query:1", "query:2", "evaluate:1"]
