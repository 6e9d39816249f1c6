"""Memory: does a worker grow as it runs? RSS after a warm-up, and after many more runs.

    python bench/memory.py [--runs 10000]

Starts its own cluster (one worker process with 2 pool processes, no child recycling) and
runs ``bench.noop`` runs through it in batches: the worker's RSS (its main process and pool
children) after 500 warm-up runs, then after ``--runs`` more. A leak shows as growth; the
baseline is the warmed-up size. (The API's RSS with 1,000 open streams is measured by
``bench/stream.py``.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
from sqlalchemy import func, select

from bench.cluster import Cluster
from bench.report import Figure, table
from tests.harness import wait_for
from worker.base.models import Run, RunStatus
from worker.runs.submission import RunRequest, submit

WARM_UP = 500
BATCH = 500


def worker_rss_mb(cluster: Cluster) -> float:
    main = psutil.Process(cluster.workers[0].pid)
    return float(sum(p.memory_info().rss
                     for p in (main, *main.children(recursive=True)))) / 2**20


def measure(runs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="agentq-memory-") as tmp:
        cluster = Cluster(Path(tmp), workers=1, concurrency=500, beat=False)  # default slots
        try:
            rt = cluster.runtime
            tenant_id, _ = cluster.tenant_key("memory")
            done = 0

            def succeeded() -> int:
                with rt.db.autocommit() as session:
                    return int(session.scalar(select(func.count()).select_from(Run).where(
                        Run.tenant_id == tenant_id, Run.status == RunStatus.SUCCEEDED)) or 0)

            def through(count: int) -> None:
                nonlocal done
                for start in range(0, count, BATCH):
                    for _ in range(min(BATCH, count - start)):
                        submit(rt, tenant_id=tenant_id, request=RunRequest(agent="bench.noop"))
                    done += min(BATCH, count - start)
                    wait_for(lambda done=done: succeeded() >= done,  # type: ignore[misc]
                             timeout=300, interval=0.2, what="the batch to finish")

            through(WARM_UP)
            warm = worker_rss_mb(cluster)
            through(runs)
            after = worker_rss_mb(cluster)
        finally:
            cluster.close()
    return warm, after


def figures(quick: bool) -> list[Figure]:
    runs = 2000 if quick else 10_000
    warm, after = measure(runs)
    return [
        Figure(f"memory: worker RSS after {runs:,} runs (vs warm)", after, "MB", warm),
        Figure(f"memory: worker RSS growth over {runs:,} runs", (after / warm - 1) * 100, "%",
               None, "<= 10"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 runs instead of 10,000")
    args = parser.parse_args(argv)
    print(table(figures(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
