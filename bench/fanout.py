"""Fan-out: one parent starting 1,000 children, beside 1,000 runs submitted one by one.

    python bench/fanout.py [--children 1000]

Starts its own cluster (one worker process with the default engine, beat, one gunicorn API).
Baseline: ``--children`` ``bench.noop`` runs sent to ``POST /v1/runs`` from 16 client
threads; the figure is from the first POST to the last run's end. agentq: one
``bench.fanout`` run, which does ``ctx.map("bench.noop", ...)`` over as many inputs (all at
once) and waits for them as a run ``waiting``; the figure is from its POST to its end.
Target: the parent within 1.3x of the independent submissions. Each figure is the median
of 3 rounds, interleaved (one cluster; a fresh tenant each round). And a batch: the same runs
as the items of one ``POST /v1/runs/batch``, from the POST to the batch's ``completed_at``
(its last run's end counted down by each end), beside the same baseline; target 1.3x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, select

from bench.cluster import Cluster
from bench.report import Figure, table
from tests.harness import ApiServer, Worker, wait_for
from worker.agents import agent
from worker.agents.context import RunContext
from worker.base.models import Run, RunEvent, RunStatus

CLIENTS = 16
SLOTS = 100  # the worker's engine: runs at once (its default is 2,000)


@agent("bench.fanout", timeout_s=600)
def fanout(ctx: RunContext, input: Any) -> dict[str, int]:
    """``bench.noop`` children, one per input, all at once; how many ended."""
    results = ctx.map("bench.noop", [{"i": i} for i in range(int(input["n"]))])
    return {"children": len(results)}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=1000)
    return parser


def _cluster(root: Path) -> Cluster:
    cluster = Cluster(root, workers=0, beat=True, api=False)
    cluster.env["AGENTQ_AGENTS"] = "bench.agents,bench.fanout"
    worker = Worker(env=cluster.env, log=root / "worker0.log", name="bench0", concurrency=SLOTS)
    worker.start()
    cluster.workers.append(worker)
    worker.wait_ready(cluster.runtime.celery)
    cluster.api = ApiServer(env=cluster.env, log=root / "api.log")
    cluster.api.start()
    cluster.api.wait_ready()
    return cluster


def _ended(cluster: Cluster, tenant_id: str) -> int:
    with cluster.runtime.db.autocommit() as session:
        return int(session.scalar(select(func.count()).select_from(Run).where(
            Run.tenant_id == tenant_id, Run.status == RunStatus.SUCCEEDED)) or 0)


def independent(cluster: Cluster, url: str, count: int) -> float:
    """Seconds from the first POST of ``count`` runs to the last one's end."""
    tenant_id, key = cluster.tenant_key("independent")
    headers = {"Authorization": f"Bearer {key}"}
    began = time.monotonic()
    with httpx.Client(base_url=url, headers=headers, timeout=30,
                      limits=httpx.Limits(max_connections=CLIENTS)) as client, \
            ThreadPoolExecutor(CLIENTS) as pool:
        for response in pool.map(lambda i: client.post("/v1/runs", json={
                "agent": "bench.noop", "input": {"i": i}}), range(count)):
            assert response.status_code == 202, response.text
    wait_for(lambda: _ended(cluster, tenant_id) >= count, timeout=600, interval=0.05,
             what=f"{count} runs to end")
    return time.monotonic() - began


def parent(cluster: Cluster, url: str, count: int) -> float:
    """Seconds from the parent's POST to its end."""
    _, key = cluster.tenant_key("fanout")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as client:
        began = time.monotonic()
        response = client.post("/v1/runs", json={"agent": "bench.fanout",
                                                 "input": {"n": count}})
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]

        def done() -> dict[str, Any] | None:
            run: dict[str, Any] = client.get(f"/v1/runs/{run_id}").json()
            if RunStatus(run["status"]).is_terminal:
                return run
            return None

        run = wait_for(done, timeout=600, interval=0.05, what="the parent to end")
    assert run["status"] == "succeeded", run
    assert run["result"] == {"children": count}, run["result"]
    took = time.monotonic() - began
    _phases(cluster, run_id)
    return took


def batched(cluster: Cluster, url: str, count: int) -> float:
    """Seconds from one ``POST /v1/runs/batch`` of ``count`` runs to the batch's end."""
    _, key = cluster.tenant_key("batched")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as client:
        began = time.monotonic()
        response = client.post("/v1/runs/batch", json={"items": [
            {"agent": "bench.noop", "input": {"i": i}} for i in range(count)]})
        assert response.status_code == 202, response.text
        batch_id = response.json()["id"]
        batch = wait_for(lambda: (b := client.get(f"/v1/batches/{batch_id}").json())
                         ["completed_at"] and b, timeout=600, interval=0.05,
                         what="the batch to complete")
    assert batch["counts"] == {"succeeded": count}, batch
    return time.monotonic() - began


def _phases(cluster: Cluster, run_id: str) -> None:
    """Where the parent's time went, from its event log."""
    with cluster.runtime.db.autocommit() as session:
        rows = session.execute(select(RunEvent.type, RunEvent.data, RunEvent.at)
                               .where(RunEvent.run_id == run_id).order_by(RunEvent.seq)).all()
    began = rows[0].at
    def at(row: Any) -> str:
        return f"{(row.at - began).total_seconds():.2f}s"
    started = [r for r in rows if r.data.get("phase") == "child.started"]
    finished = [r for r in rows if r.data.get("phase") == "child.finished"]
    attempts = [r for r in rows if r.type == "status" and r.data.get("status") == "running"]
    print(f"  parent: {len(attempts)} attempts; children started {at(started[0])}..."
          f"{at(started[-1])}; ended {at(finished[0])}...{at(finished[-1])}; "
          f"parent ended {at(rows[-1])}; attempts at "
          f"{', '.join(at(r) for r in attempts[:12])}", file=sys.stderr)


ROUNDS = 3  # interleaved rounds of each; the figures are their medians


def measure(count: int, rounds: int = ROUNDS) -> tuple[float, float, float]:
    """The parent's seconds, the batch's, and the baseline's: each the median of ``rounds``
    rounds, interleaved (baseline, parent, batch, baseline, ...), so that a machine that
    slows down or speeds up meanwhile weighs on all three alike."""
    taken: dict[str, list[float]] = {"parent": [], "batch": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="agentq-fanout-") as tmp:
        cluster = _cluster(Path(tmp))
        try:
            assert cluster.api is not None
            url = cluster.api.url
            independent(cluster, url, 50)  # warm up: pools, imports
            for _ in range(rounds):
                taken["baseline"].append(independent(cluster, url, count))
                taken["parent"].append(parent(cluster, url, count))
                taken["batch"].append(batched(cluster, url, count))
        finally:
            cluster.close()
    print("  rounds (s): " + "; ".join(f"{name} {', '.join(f'{t:.1f}' for t in times)}"
                                       for name, times in taken.items()), file=sys.stderr)
    return (statistics.median(taken["parent"]), statistics.median(taken["batch"]),
            statistics.median(taken["baseline"]))


def _rows(count: int, fanned: float, drained: float, baseline: float) -> list[Figure]:
    return [Figure(f"fan-out: parent -> {count:,} children ended", fanned, "s", baseline,
                   "<= 1.3x"),
            Figure(f"batch: {count:,} runs, POST -> batch completed", drained, "s", baseline,
                   "<= 1.3x")]


def figures(quick: bool) -> list[Figure]:
    count = 300 if quick else 1000
    return _rows(count, *measure(count, rounds=1 if quick else ROUNDS))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rows = _rows(args.children, *measure(args.children))
    print(f"fan-out: one parent mapping over {args.children:,} bench.noop children, and a "
          f"batch of as many; baseline: as many POST /v1/runs from {CLIENTS} threads, first "
          "POST -> last end")
    print(table(rows))
    return 0 if all(figure.met is not False for figure in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
