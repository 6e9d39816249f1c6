"""Waits: from a waitpoint's completion to the agent's next line, on an idle worker.

    python bench/waits.py [--runs 150] [--waiting 1000] [--loaded-runs 100]

Starts its own cluster (one worker process with 2 slots, beat for the sweeper, one gunicorn
API) and, one run at a time, submits ``bench.wait``, which stops at ``ctx.wait_for`` (with a
schema): the run becomes ``waiting`` and gives its slot back. Then it sends
``POST /v1/runs/{id}/waitpoints/go``: the run is queued again, a new attempt claims it and
replays it to the wait, which returns the data at once; the agent's next line returns the
wall-clock time it ran. Figure: from the completion POST being sent to that line. Beside
it, measured in alternation on the same cluster, the baseline: ``POST /v1/runs`` of
``bench.stamp`` being sent -> its first line (as ``bench/dispatch.py``). Then the same
again while ``--waiting`` other runs of the tenant wait at the same time.

``bench.wait`` is registered here: the cluster's processes load this module too
(``AGENTQ_AGENTS=bench.agents,bench.waits``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, select

from bench.cluster import Cluster
from bench.report import Figure, table
from bench.stream import percentile
from tests.harness import ApiServer, Worker, wait_for
from worker.agents import agent
from worker.agents.context import RunContext
from worker.base.models import Run, RunStatus
from worker.runs.submission import RunRequest, submit

WAITPOINT = "go"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}
WARMUP = 5  # samples of each kind not counted: pooled connections, first-use imports
# After a run ends or suspends, a moment for its worker to finish the attempt (ack the
# message, free the slot), so that the next measurement starts on an idle worker: nothing
# reports that moment, so it is a pause, as in bench/dispatch.py.
SETTLE_S = 0.05


@agent("bench.wait", timeout_s=60)
def wait(ctx: RunContext, input: Any) -> dict[str, Any]:
    """Wait at ``go`` for data matching SCHEMA; return it with the wall-clock time of the
    line after ``wait_for``."""
    data = ctx.wait_for(WAITPOINT, timeout_s=600, schema=SCHEMA)
    return {"t": time.time(), "data": data}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150, help="samples on an idle worker")
    parser.add_argument("--waiting", type=int, default=1000,
                        help="other runs waiting during the second round (0: no round)")
    parser.add_argument("--loaded-runs", type=int, default=100,
                        help="samples of the second round")
    return parser


def _cluster(root: Path) -> Cluster:
    """Postgres, Redis and beat from Cluster; the worker and the API started here, with
    this module among their agents."""
    cluster = Cluster(root, workers=0, beat=True, api=False)
    cluster.env["AGENTQ_AGENTS"] = "bench.agents,bench.waits"
    worker = Worker(env=cluster.env, log=root / "worker0.log", name="bench0", concurrency=2)
    worker.start()
    cluster.workers.append(worker)
    worker.wait_ready(cluster.runtime.celery)
    cluster.api = ApiServer(env=cluster.env, log=root / "api.log")
    cluster.api.start()
    cluster.api.wait_ready()
    return cluster


def _reached(client: httpx.Client, run_id: str, status: RunStatus) -> dict[str, Any]:
    """The run once it is ``status``; fails at once if it ends otherwise."""

    def check() -> dict[str, Any] | None:
        run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] == status:
            return run
        if RunStatus(run["status"]).is_terminal:
            raise AssertionError(f"run {run_id} ended {run['status']}: {run.get('error')}")
        return None

    return wait_for(check, timeout=30, interval=0.005, what=f"run {run_id} to be {status}")


def _submitted(client: httpx.Client, agent: str) -> tuple[float, str]:
    """(wall-clock time just before the POST was sent, the run's id)."""
    sent = time.time()
    response = client.post("/v1/runs", json={"agent": agent, "input": {}})
    assert response.status_code == 202, response.text
    return sent, response.json()["id"]


def rounds(client: httpx.Client, samples: int) -> dict[str, list[float]]:
    """Milliseconds, in alternation: POST /v1/runs sent -> first line (``started``), and
    completion POST sent (``resumed``) or returned (``after_return``) -> next line."""
    started, resumed, after_return = [], [], []
    for number in range(samples + WARMUP):
        sent, run_id = _submitted(client, "bench.stamp")
        first = _reached(client, run_id, RunStatus.SUCCEEDED)["result"]["t"]
        time.sleep(SETTLE_S)

        _, run_id = _submitted(client, "bench.wait")
        _reached(client, run_id, RunStatus.WAITING)
        time.sleep(SETTLE_S)
        completed = time.time()
        answer = client.post(f"/v1/runs/{run_id}/waitpoints/{WAITPOINT}",
                             json={"data": {"n": number}})
        returned = time.time()
        assert answer.status_code == 202, answer.text
        result = _reached(client, run_id, RunStatus.SUCCEEDED)["result"]
        assert result["data"] == {"n": number}, result
        if number >= WARMUP:
            started.append((first - sent) * 1000)
            resumed.append((result["t"] - completed) * 1000)
            after_return.append(max(0.0, result["t"] - returned) * 1000)
        time.sleep(SETTLE_S)
    return {"started": started, "resumed": resumed, "after_return": after_return}


def _fill(cluster: Cluster, tenant_id: str, count: int) -> None:
    """``count`` more runs of the tenant waiting at their waitpoint."""
    rt = cluster.runtime

    def waiting() -> int:
        with rt.db.transaction() as session:
            return int(session.scalar(select(func.count()).select_from(Run).where(
                Run.tenant_id == tenant_id, Run.status == RunStatus.WAITING)) or 0)

    already = waiting()
    for _ in range(count):
        submit(rt, tenant_id=tenant_id, request=RunRequest(agent="bench.wait"))
    wait_for(lambda: waiting() >= already + count, timeout=300, interval=0.2,
             what=f"{count} runs to be waiting")


def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="agentq-waits-") as tmp:
        cluster = _cluster(Path(tmp))
        try:
            assert cluster.api is not None
            tenant_id, key = cluster.tenant_key("waits")
            client = httpx.Client(base_url=cluster.api.url, timeout=30,
                                  headers={"Authorization": f"Bearer {key}"})
            measured = {"idle": rounds(client, args.runs)}
            if args.waiting:
                _fill(cluster, tenant_id, args.waiting)
                measured["loaded"] = rounds(client, args.loaded_runs)
            client.close()
        finally:
            cluster.close()
    return measured


def _figures(args: argparse.Namespace) -> list[Figure]:
    measured = measure(args)
    idle = measured["idle"]
    figures = [
        Figure("waits: completed -> next line p50", percentile(idle["resumed"], 0.5), "ms",
               percentile(idle["started"], 0.5), "<= 50"),
        Figure("waits: completed -> next line p99", percentile(idle["resumed"], 0.99), "ms",
               percentile(idle["started"], 0.99)),
        Figure("waits: POST returned -> next line p50", percentile(idle["after_return"], 0.5),
               "ms"),
    ]
    if "loaded" in measured:
        loaded, others = measured["loaded"], f"{args.waiting:,}"
        figures += [
            Figure(f"waits: completed -> next line p50, {others} waiting",
                   percentile(loaded["resumed"], 0.5), "ms",
                   percentile(loaded["started"], 0.5), "<= 50"),
            Figure(f"waits: completed -> next line p99, {others} waiting",
                   percentile(loaded["resumed"], 0.99), "ms",
                   percentile(loaded["started"], 0.99)),
        ]
    return figures


def figures(quick: bool) -> list[Figure]:
    return _figures(parser().parse_args(["--runs", "50", "--loaded-runs", "30"]
                                        if quick else []))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    began = time.monotonic()
    rows = _figures(args)
    loaded = f", then {args.loaded_runs} with {args.waiting:,} others waiting" \
        if args.waiting else ""
    print(f"waits: {args.runs} runs on an idle worker{loaded}; baseline: POST /v1/runs "
          f"sent -> first line; {time.monotonic() - began:.0f} s")
    print(table(rows))
    return 0 if all(figure.met is not False for figure in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
