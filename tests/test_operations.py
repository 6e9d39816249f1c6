"""Operations: workers scale out, Flower sees them, the CLI tells a run's story."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from agentq.embedded import free_port
from tests.agents import SCALE_QUEUE
from tests.conftest import ApiClient, Services
from tests.harness import BIN, ROOT, Process, Worker, wait_for
from worker.base.runtime import Runtime

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.slow]


@pytest.fixture
def three_workers(env: dict[str, str], services: Services,
                  runtime: Runtime) -> Iterator[list[Worker]]:
    workers = [Worker(env=env, log=services.root / f"scale{i}.log", name=f"scale{i}",
                      concurrency=2, queues=SCALE_QUEUE) for i in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.wait_ready(runtime.celery)
    yield workers
    for process in workers:
        process.stop(timeout=5)


def test_three_workers_share_the_load(api: ApiClient, three_workers: list[Worker]) -> None:
    started = time.monotonic()
    ids = [api.submit("test.scaled", {"seconds": 1})["id"] for _ in range(30)]
    for run_id in ids:
        assert api.wait(run_id, timeout=60)["status"] == "succeeded"
    elapsed = time.monotonic() - started
    spread = Counter(api.get(f"/v1/runs/{run_id}/attempts").get_json()["items"][0]["worker"]
                     .split("@")[0] for run_id in ids)
    assert set(spread) == {"scale0", "scale1", "scale2"}, spread
    assert elapsed < 9, f"30 one-second runs took {elapsed:.1f} s on 3 workers (serial: 30 s)"


@pytest.fixture
def flower(env: dict[str, str], services: Services) -> Iterator[str]:
    port = free_port()
    process = Process([str(BIN / "celery"), "-A", "worker", "flower", f"--port={port}",
                       "--address=127.0.0.1", "--basic-auth=ops:secret-pass"],
                      env=env, log=services.root / "flower.log")
    process.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthcheck", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, interval=0.2, what="Flower")
    yield url
    process.stop(timeout=10)


def test_flower_shows_the_workers_and_the_queues(api: ApiClient, flower: str) -> None:
    auth = ("ops", "secret-pass")
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    workers = httpx.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=30).json()
    assert any(name.startswith("w-session@") for name in workers)
    # The queues the workers consume, with their depths (a run's own story is agentq's:
    # its task only hands it to the engine, so it sends Flower no task events)
    lengths = httpx.get(f"{flower}/api/queues/length", auth=auth, timeout=30).json()
    names = {queue["name"] for queue in lengths["active_queues"]}
    assert {"runs.normal", "runs.high", "maintenance"} <= names


def agentq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentq"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_runs_show_tells_the_whole_story(env: dict[str, str], api: ApiClient) -> None:
    run = api.submit("flaky", {"failures": 1})
    api.wait(run["id"])
    story = agentq(env, "runs", "show", run["id"])
    assert story.returncode == 0, story.stderr
    for expected in (run["id"], "flaky", "succeeded", "attempt 1", "failed", "attempt 2",
                     "RetryableError", "retrying"):
        assert expected in story.stdout, expected
    as_json = json.loads(agentq(env, "runs", "show", run["id"], "--json").stdout)
    assert as_json["run"]["status"] == "succeeded"
    assert [a["outcome"] for a in as_json["attempts"]] == ["failed", "succeeded"]
    assert as_json["events"][0]["data"]["status"] == "queued"
    assert agentq(env, "runs", "show", "run_nope").returncode == 1


def test_runs_list_cancel_and_replay(env: dict[str, str], api: ApiClient) -> None:
    parked = api.submit("test.parked")
    failed = api.wait(api.submit("test.fail")["id"])
    listed = json.loads(agentq(env, "runs", "list", "--tenant", api.tenant.name,
                               "--json").stdout)
    assert {item["id"] for item in listed} >= {parked["id"], failed["id"]}
    assert parked["id"] in agentq(env, "runs", "list", "--status", "queued").stdout
    assert agentq(env, "runs", "cancel", parked["id"]).returncode == 0
    assert api.run(parked["id"])["status"] == "cancelled"
    assert agentq(env, "runs", "cancel", failed["id"]).returncode == 1  # ended otherwise
    assert agentq(env, "runs", "replay", failed["id"]).returncode == 0
    assert api.wait(failed["id"], statuses={"failed"})["attempt"] == 2


def test_every_command_explains_itself(env: dict[str, str]) -> None:
    for command in (["--help"], ["dev", "--help"], ["keys", "--help"], ["runs", "--help"],
                    ["runs", "show", "--help"], ["dlq", "--help"], ["migrate", "--help"],
                    ["worker", "--help"]):
        result = agentq(env, *command)
        assert result.returncode == 0 and "Usage:" in result.stdout, command
    assert agentq(env, "runs", "frobnicate").returncode == 2
