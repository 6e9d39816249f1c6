"""AGENTQ_LLM_LIMITS on real workers and a real Redis: a model's requests a minute are never
exceeded across workers; a call over the limit waits within its attempt, or the attempt is
deferred (not counted) to when there is room."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import select

from tests.conftest import ApiClient, StartWorker
from tests.harness import FakeLLM, wait_for
from worker.base.bus import Bus
from worker.base.models import Run
from worker.base.runtime import Runtime
from worker.base.settings import LLMRate
from worker.llm.limits import Limits


def runs_of(runtime: Runtime, ids: list[str]) -> list[Run]:
    with runtime.db.autocommit() as session:
        return list(session.scalars(select(Run).where(Run.id.in_(ids))))


def test_sixty_requests_a_minute_across_three_workers_is_never_exceeded(
        api: ApiClient, runtime: Runtime, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    model = f"rpm-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        crash_worker(concurrency=25, AGENTQ_LLM_LIMITS=f"{model}=60rpm")
    ids = [api.submit("test.llm.rated", {"model": model, "ask": f"q{i}"})["id"]
           for i in range(75)]

    def settled() -> list[Run] | None:
        runs = runs_of(runtime, ids)
        return runs if all(r.status in ("succeeded", "retrying") for r in runs) else None

    runs = wait_for(settled, timeout=60, interval=0.2,
                    what="every run done or deferred")
    made = [call for call in fake_llm.calls if call.body.get("model") == model]
    assert len(made) == 60  # the limit, all of it, and not one more
    assert Counter(r.status for r in runs) == {"succeeded": 60, "retrying": 15}
    now = datetime.now(UTC)
    for run in (r for r in runs if r.status == "retrying"):
        assert run.error["type"] == "LLMRateLimited"
        assert (run.attempt, run.free_attempts, run.deferrals) == (1, 1, 1)  # not dead
        assert run.next_attempt_at is not None
        # when the window has room again, and a little jitter (up to 1 s, then 5 s)
        assert 0 < (run.next_attempt_at - now).total_seconds() <= 60 + 1 + 5 + 1
    for run in (r for r in runs if r.status == "retrying"):
        api.post(f"/v1/runs/{run.id}/cancel")


def test_a_call_over_the_limit_waits_within_its_attempt(
        api: ApiClient, runtime: Runtime, fake_llm: FakeLLM, crash_worker: StartWorker) -> None:
    model = f"rps-{uuid.uuid4().hex[:8]}"
    crash_worker(concurrency=12, AGENTQ_LLM_LIMITS=f"{model}=4rps")
    ids = [api.submit("test.llm.rated", {"model": model, "ask": f"w{i}"})["id"]
           for i in range(12)]
    done = [api.wait(run_id) for run_id in ids]
    assert {run["status"] for run in done} == {"succeeded"}
    assert {run["attempt"] for run in done} == {1}
    times = sorted(call.at for call in fake_llm.calls if call.body.get("model") == model)
    assert len(times) == 12
    assert times[-1] - times[0] > 1.8  # three windows of four: 0 s, 1 s, 2 s


def test_tokens_come_from_a_bucket_settled_by_the_real_usage(runtime: Runtime) -> None:
    model = f"tpm-{uuid.uuid4().hex[:8]}"
    limits = Limits({model: LLMRate(tokens=100)}, runtime.bus)

    async def go() -> None:
        assert await limits.acquire(model, 60) == (0.0, 60)
        wait, taken = await limits.acquire(model, 60)  # 40 left of 100 a minute: 20 short
        assert 11 < wait <= 12.1 and taken == 0
        await limits.settle(model, taken=60, used=10)  # 50 given back
        assert await limits.acquire(model, 60) == (0.0, 60)
        assert await limits.acquire("another-model", 10**9) == (0.0, 0)  # no limit

    asyncio.run(go())


def test_a_huge_request_takes_at_most_the_bucket_and_a_wait_at_most_two_windows(
        runtime: Runtime) -> None:
    """A request's max_tokens is the agent's to set (and so a tenant's): it must not put
    the model's limit out of reach for everyone."""
    limits = Limits({"*": LLMRate(tokens=300)}, runtime.bus)
    model = f"huge-{uuid.uuid4().hex[:8]}"  # shares "*" with every model not named

    async def go() -> None:
        assert await limits.acquire(model, 10**30) == (0.0, 300)  # the whole bucket
        await limits.settle(model, taken=300, used=10**30)  # the provider says more
        wait, _ = await limits.acquire("some-other-model", 50)
        assert 0 < wait <= 120  # the bucket's debt is bounded: a window's worth
        await limits.settle(model, taken=300, used=0)

    asyncio.run(go())


def test_the_limit_fails_open_when_redis_does_not_answer() -> None:
    limits = Limits({"*": LLMRate(requests=1)}, Bus("redis://127.0.0.1:1/0", timeout_s=0.5))
    began = time.monotonic()
    assert asyncio.run(limits.acquire("m", 1)) == (0.0, 0)  # unchecked, nothing taken
    assert time.monotonic() - began < 2
