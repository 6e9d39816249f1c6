"""Forking a run from a step (``POST /v1/runs/{id}/fork``): the fork reuses the steps
recorded before that step and makes only the LLM calls from it on, counted on the local
OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

from tests.conftest import ApiClient, StartWorker
from tests.harness import FakeLLM, wait_for
from worker.base.models import new_id


def fork(api: ApiClient, run_id: str, **body: Any) -> dict[str, Any]:
    response = api.post(f"/v1/runs/{run_id}/fork", json=body)
    assert response.status_code == 202, response.get_json()
    made: dict[str, Any] = response.get_json()
    assert response.headers["Location"] == f"/v1/runs/{made['id']}"
    return made


def steps(api: ApiClient, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's steps by name, in the order they finished."""
    return {step["name"]: step
            for step in api.get(f"/v1/runs/{run_id}/steps").get_json()["items"]}


def progress(api: ApiClient, run_id: str) -> list[dict[str, Any]]:
    items = api.get(f"/v1/runs/{run_id}/events").get_json()["items"]
    return [item["data"] for item in items if item["type"] == "progress"]


def calls(fake_llm: FakeLLM, tag: str) -> dict[int, int]:
    """How many times the LLM was asked each of test.llm.four's prompts."""
    return {n: len(fake_llm.calls_for(f"{tag}:{n}")) for n in range(1, 5)}


def finished_four(api: ApiClient, tag: str) -> dict[str, Any]:
    run = api.wait(api.submit("test.llm.four", {"tag": tag})["id"])
    assert run["status"] == "succeeded", run
    return run


def test_a_fork_from_llm_3_makes_only_calls_3_and_4_again(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    # Given a run that made its four LLM calls
    crash_worker()
    tag = new_id("tag")
    original = finished_four(api, tag)
    # When it is forked from llm:3
    made = fork(api, original["id"], from_step="llm:3")
    assert made["status"] == "queued" and made["id"] != original["id"]
    assert made["forked_from"] == {"run_id": original["id"], "step": "llm:3"}
    done = api.wait(made["id"])
    # Then the fork ran from llm:3 on: two more calls, the first two reused as they were
    assert done["status"] == "succeeded", done
    assert done["result"] == original["result"]
    assert done["input"] == original["input"] and done["agent"] == "test.llm.four"
    assert calls(fake_llm, tag) == {1: 1, 2: 1, 3: 2, 4: 2}
    before, after = steps(api, original["id"]), steps(api, made["id"])
    assert list(after) == ["llm:1", "llm:2", "llm:3", "llm:4"]
    for name in ("llm:1", "llm:2"):
        assert after[name]["attempt"] == 0  # reused: none of the fork's attempts ran it
        assert {k: after[name][k] for k in ("result", "usage", "duration_ms", "finished_at")} \
            == {k: before[name][k] for k in ("result", "usage", "duration_ms", "finished_at")}
    assert after["llm:3"]["attempt"] == after["llm:4"]["attempt"] == 1
    assert api.run(made["id"])["forked_from"] == {"run_id": original["id"], "step": "llm:3"}
    assert api.run(original["id"])["forked_from"] is None
    # Its usage is what it spent; the reused calls are not billed to the tenant again
    assert done["usage"] == {"llm_calls": 2, "input_tokens": 20, "output_tokens": 10}
    assert api.get("/v1/usage").get_json()["llm_calls"] == 6
    # And its events say it is a fork, before any step of its own started
    events = progress(api, made["id"])
    assert events[0]["phase"] == "forked"
    assert events[0]["forked_from"] == made["forked_from"]
    assert events[0]["steps"] == ["llm:1", "llm:2"]
    started = [e["step"] for e in events if e.get("phase") == "step.started"]
    assert started == ["llm:3", "llm:4"]


def test_a_fork_of_a_fork_reuses_what_the_first_fork_made(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    crash_worker()
    tag = new_id("tag")
    original = finished_four(api, tag)
    first = api.wait(fork(api, original["id"], from_step="llm:3")["id"])
    second = api.wait(fork(api, first["id"], from_step="llm:4")["id"])
    assert second["status"] == "succeeded", second
    assert second["forked_from"] == {"run_id": first["id"], "step": "llm:4"}
    assert calls(fake_llm, tag) == {1: 1, 2: 1, 3: 2, 4: 3}
    theirs, ours = steps(api, first["id"]), steps(api, second["id"])
    assert [ours[name]["result"] for name in ("llm:1", "llm:2", "llm:3")] == \
        [theirs[name]["result"] for name in ("llm:1", "llm:2", "llm:3")]
    assert [step["attempt"] for step in ours.values()] == [0, 0, 0, 1]


def test_a_fork_with_a_new_input_reuses_the_steps_that_input_leaves_alone(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    # Given a run that took notes on a topic, then wrote in a plain style
    crash_worker()
    topic = new_id("topic")
    original = api.wait(api.submit("test.llm.revise", {"topic": topic})["id"])
    assert original["status"] == "succeeded", original
    # When it is forked from its first call in that style, with a better style
    made = fork(api, original["id"], from_step="llm:3", input={"topic": topic, "style": "bold"})
    done = api.wait(made["id"])
    # Then only the calls in the new style were made; the notes were reused
    assert done["status"] == "succeeded", done
    assert done["input"] == {"topic": topic, "style": "bold"}
    assert done["result"] == [f"echo: {topic}:notes:1", f"echo: {topic}:notes:2",
                              f"echo: {topic}:bold:3", f"echo: {topic}:bold:4"]
    asked = {prompt: len(fake_llm.calls_for(f"{topic}:{prompt}"))
             for prompt in ("notes:1", "notes:2", "plain:3", "plain:4", "bold:3", "bold:4")}
    assert asked == dict.fromkeys(asked, 1)
    assert api.run(original["id"])["input"] == {"topic": topic}  # the original is untouched


def test_a_new_input_that_changes_a_reused_step_fails_the_fork_before_any_call(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    # Given a run whose every call's prompt comes from its input
    crash_worker()
    tag, other = new_id("tag"), new_id("tag")
    original = finished_four(api, tag)
    # When it is forked from llm:3 with an input that changes llm:1's prompt too
    done = api.wait(fork(api, original["id"], from_step="llm:3", input={"tag": other})["id"])
    # Then the fork refuses llm:1's stored answer for another prompt, and asks nothing
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "StepMismatch"
    assert "'llm:1'" in done["error"]["message"]
    assert calls(fake_llm, other) == {1: 0, 2: 0, 3: 0, 4: 0}
    assert calls(fake_llm, tag) == {1: 1, 2: 1, 3: 1, 4: 1}


def test_a_run_still_going_can_be_forked_from_a_step_it_recorded(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    # Given a run whose third call is in flight
    tag = new_id("tag")
    fake_llm.hold(f"{tag}:3")
    crash_worker(concurrency=2)
    original = api.submit("test.llm.four", {"tag": tag})
    wait_for(lambda: fake_llm.calls_for(f"{tag}:3"), timeout=30, what="the third call")
    assert api.run(original["id"])["status"] == "running"
    # When it is forked from llm:2, the last step it finished
    made = fork(api, original["id"], from_step="llm:2")
    fake_llm.release()
    # Then both finish, and the fork made the calls from llm:2 on
    assert api.wait(original["id"])["status"] == "succeeded"
    assert api.wait(made["id"])["status"] == "succeeded"
    assert calls(fake_llm, tag) == {1: 1, 2: 2, 3: 2, 4: 2}
    assert [step["attempt"] for step in steps(api, made["id"]).values()] == [0, 1, 1, 1]


def test_an_unknown_step_is_a_422_naming_the_runs_steps(
        api: ApiClient, other_api: ApiClient, fake_llm: FakeLLM,
        crash_worker: StartWorker) -> None:
    crash_worker()
    run_id = finished_four(api, new_id("tag"))["id"]
    # An unknown step: 422, listing the steps there are; nothing is created
    response = api.post(f"/v1/runs/{run_id}/fork", json={"from_step": "llm:9"})
    assert response.status_code == 422
    assert response.get_json()["errors"] == [{
        "field": "from_step", "message": f"run {run_id} has no step 'llm:9'; its steps: "
                                         "'llm:1', 'llm:2', 'llm:3', 'llm:4'"}]
    # A bad body: 422 too
    assert api.post(f"/v1/runs/{run_id}/fork", json={}).status_code == 422
    refused = api.post(f"/v1/runs/{run_id}/fork", json={"from_step": "llm:2", "agent": "echo"})
    assert refused.status_code == 422
    assert refused.get_json()["errors"][0]["field"] == "agent"
    # Another tenant's run, or no run: 404, even for a step it has
    assert other_api.post(f"/v1/runs/{run_id}/fork", json={"from_step": "llm:2"}) \
        .status_code == 404
    assert api.post("/v1/runs/run_nope/fork", json={"from_step": "llm:2"}).status_code == 404
    assert api.get("/v1/runs").get_json()["items"][0]["id"] == run_id  # no fork was made


def test_the_same_idempotency_key_answers_with_the_same_fork(
        api: ApiClient, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    crash_worker()
    run_id = finished_four(api, new_id("tag"))["id"]
    headers = {"Idempotency-Key": new_id("key")}
    first = api.post(f"/v1/runs/{run_id}/fork", json={"from_step": "llm:4"}, headers=headers)
    again = api.post(f"/v1/runs/{run_id}/fork", json={"from_step": "llm:4"}, headers=headers)
    assert first.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    assert api.wait(first.get_json()["id"])["status"] == "succeeded"
    other = api.post(f"/v1/runs/{run_id}/fork", json={"from_step": "llm:3"}, headers=headers)
    assert other.status_code == 422  # the same key with another body
