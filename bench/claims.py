"""Claims: runs started per second with 1,000 distinct concurrency keys, beside none.

    python bench/claims.py [--runs 2000] [--keys 1000] [--rounds 1]

Starts its own cluster (Postgres, Redis, beat for the sweeper; one worker process with the
slots of ``bench/throughput.py``'s) and measures the same ``--runs`` no-op runs twice, with
a concurrency key and, as the baseline, without one, the two in turn:

1. backlog: the runs submitted while no worker runs, then one worker process started to
   drain them: runs started per second, from the first claim to the last (``started_at``).
2. live: the runs submitted at full speed (``submit`` in this process, 8 threads) to a
   running worker process: runs started per second, from the first submission to the last
   claim, and submit -> start p50/p99 (``created_at`` -> ``started_at``, Postgres's clock).

The keyed runs hold ``--keys`` distinct keys, an equal share of the runs each (2 by
default), in a shuffled order; half the keys take ``bench.keyed1`` (``Limit(max=1)``), half
``bench.keyed2`` (``max=2``). The baseline's runs are of the same agents, with an input
that lacks the limit's field (so no key).
Both agents are ``async def`` no-ops, so a run is claimed as soon as its message arrives
(a sync agent's claim waits for a thread) and the figures are the claim path's.

``bench.keyed1`` and ``bench.keyed2`` are registered here: the cluster's processes load
this module too (``AGENTQ_AGENTS=bench.agents,bench.claims``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select

from bench.cluster import Cluster
from bench.report import Figure, table
from bench.stream import percentile
from tests.harness import Worker, wait_for
from worker.agents import Limit, agent
from worker.agents.context import AsyncRunContext
from worker.base.models import Run, RunStatus
from worker.runs.submission import RunRequest, submit

SLOTS = 500  # as bench/throughput.py's worker process
SUBMITTERS = 8
DRAIN_TIMEOUT_S = 120
WARMUP = 200  # runs through the live worker first: pooled connections, first-use imports


@agent("bench.keyed1", concurrency=Limit(key="input.k", max=1))
async def keyed1(ctx: AsyncRunContext, input: Any) -> None:
    """Do nothing, at most one at a time per ``input.k``."""


@agent("bench.keyed2", concurrency=Limit(key="input.k", max=2))
async def keyed2(ctx: AsyncRunContext, input: Any) -> None:
    """Do nothing, at most two at a time per ``input.k``."""


@dataclass(frozen=True)
class Timing:
    """One run's times, from Postgres: submitted, first claimed, ended."""

    created: datetime
    started: datetime
    finished: datetime


def requests(runs: int, keys: int, *, keyed: bool, seed: int) -> list[RunRequest]:
    """``runs`` requests over ``keys`` keys (half of max 1, half of max 2), shuffled; without
    ``keyed``, the same runs with the key's field renamed (no limit applies)."""
    name = "k" if keyed else "unkeyed"
    chosen = [RunRequest(agent="bench.keyed1" if n % keys < keys // 2 else "bench.keyed2",
                         input={name: f"key-{n % keys}"}) for n in range(runs)]
    random.Random(seed).shuffle(chosen)
    return chosen


def _submit_all(cluster: Cluster, tenant_id: str, chosen: list[RunRequest]) -> None:
    rt = cluster.runtime
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        list(pool.map(lambda request: submit(rt, tenant_id=tenant_id, request=request),
                      chosen))


def _timings(cluster: Cluster, tenant_id: str) -> list[Timing]:
    with cluster.runtime.db.transaction() as session:
        rows = session.execute(select(Run.created_at, Run.started_at, Run.finished_at)
                               .where(Run.tenant_id == tenant_id)).all()
    return [Timing(created, started, finished) for created, started, finished in rows
            if started is not None and finished is not None]


def _finished(cluster: Cluster, tenant_id: str) -> int:
    with cluster.runtime.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Run).where(
            Run.tenant_id == tenant_id, Run.status == RunStatus.SUCCEEDED)) or 0)


def _drained(cluster: Cluster, tenant_id: str, runs: int) -> list[Timing]:
    wait_for(lambda: _finished(cluster, tenant_id) >= runs, timeout=DRAIN_TIMEOUT_S,
             interval=0.1, what=f"{runs} runs to succeed")
    return _timings(cluster, tenant_id)


def _worker(cluster: Cluster, name: str) -> Worker:
    worker = Worker(env=cluster.env, log=cluster.root / f"{name}.log", name=name,
                    concurrency=SLOTS)
    worker.start()
    cluster.processes.append(worker)
    return worker


def _rate(timings: list[Timing], since: datetime) -> float:
    """Runs started per second from ``since`` to the last start."""
    span = (max(t.started for t in timings) - since).total_seconds()
    return (len(timings) - 1) / max(span, 1e-3)


def backlog(cluster: Cluster, chosen: list[RunRequest], name: str) -> float:
    """Runs started per second by a new worker process draining ``chosen``, from its
    first claim to its last."""
    tenant_id, _ = cluster.tenant_key(name)
    _submit_all(cluster, tenant_id, chosen)
    worker = _worker(cluster, name)
    try:
        timings = _drained(cluster, tenant_id, len(chosen))
    finally:
        worker.stop(timeout=10)
        cluster.processes.remove(worker)
    return _rate(timings, min(t.started for t in timings))


def live(cluster: Cluster, chosen: list[RunRequest], name: str) -> tuple[float, list[float]]:
    """Runs started per second while ``chosen`` are submitted to the running worker
    process, from the first submission to the last claim; and each run's submit -> start
    in milliseconds."""
    tenant_id, _ = cluster.tenant_key(name)
    _submit_all(cluster, tenant_id, chosen)
    timings = _drained(cluster, tenant_id, len(chosen))
    latencies = [(t.started - t.created).total_seconds() * 1000 for t in timings]
    return _rate(timings, min(t.created for t in timings)), latencies


@dataclass
class Measured:
    """One mode's figures, a value per round (latencies: every run of every round)."""

    backlog_per_s: list[float] = field(default_factory=list)
    live_per_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


MODES = {"none": False, "keyed": True}


def measure(args: argparse.Namespace) -> dict[str, Measured]:
    measured = {mode: Measured() for mode in MODES}

    def chosen(mode: str, number: int) -> list[RunRequest]:
        return requests(args.runs, args.keys, keyed=MODES[mode], seed=number)

    with tempfile.TemporaryDirectory(prefix="agentq-claims-") as tmp:
        # beat for the sweeper: a keyed run can be left queued with no message (its
        # successor's dropped), and only the sweeper publishes it again.
        cluster = Cluster(Path(tmp), workers=0, beat=True, api=False)
        cluster.env["AGENTQ_AGENTS"] = "bench.agents,bench.claims"
        try:
            worker = _worker(cluster, "live")
            worker.wait_ready(cluster.runtime.celery)
            live(cluster, requests(WARMUP, WARMUP // 2, keyed=True, seed=-1), "warmup")
            # The modes in turn, each round's order the last one's reversed (and the backlogs'
            # the live rounds' reversed), so that a drift in what else the machine does
            # weighs on both alike.
            orders = [list(MODES)[::1 if number % 2 == 0 else -1]
                      for number in range(args.rounds)]
            for number, order in enumerate(orders):
                for mode in order:
                    rate, latencies = live(cluster, chosen(mode, number),
                                           f"live-{mode}-{number}")
                    measured[mode].live_per_s.append(rate)
                    measured[mode].latencies_ms += latencies
            worker.stop(timeout=10)
            cluster.processes.remove(worker)
            for number, order in enumerate(orders):
                for mode in reversed(order):
                    measured[mode].backlog_per_s.append(
                        backlog(cluster, chosen(mode, number), f"backlog-{mode}-{number}"))
        finally:
            cluster.close()
    return measured


def _figures(args: argparse.Namespace) -> list[Figure]:
    measured = measure(args)
    keyed, none = measured["keyed"], measured["none"]
    keys = f"{args.keys:,} keys"
    return [
        Figure(f"claims: backlog, started/s, {keys}", statistics.mean(keyed.backlog_per_s),
               "runs/s", statistics.mean(none.backlog_per_s), ">= 0.5x"),
        Figure(f"claims: live, started/s, {keys}", statistics.mean(keyed.live_per_s),
               "runs/s", statistics.mean(none.live_per_s), ">= 0.5x"),
        Figure(f"claims: live, submit -> start p50, {keys}",
               percentile(keyed.latencies_ms, 0.5), "ms", percentile(none.latencies_ms, 0.5)),
        Figure(f"claims: live, submit -> start p99, {keys}",
               percentile(keyed.latencies_ms, 0.99), "ms",
               percentile(none.latencies_ms, 0.99)),
    ]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs in each round and mode")
    parser.add_argument("--keys", type=int, default=1000, help="distinct concurrency keys")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each mode")
    return parser


def figures(quick: bool) -> list[Figure]:
    return _figures(parser().parse_args(["--runs", "1000", "--keys", "500"] if quick else []))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    began = time.monotonic()
    rows = _figures(args)
    print(f"claims: {args.runs:,} no-op runs over {args.keys:,} concurrency keys (max 1 or 2) "
          f"beside the same runs with none, {args.rounds} round(s), one worker process "
          f"({SLOTS} slots); {time.monotonic() - began:.0f} s")
    print(table(rows))
    return 0 if all(figure.met is not False for figure in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
