"""Batches: 1,000 runs in one ``POST /v1/runs/batch``, beside 1,000 ``POST /v1/runs``.

    python bench/batch.py [--quick]

Starts its own cluster (one gunicorn API, Postgres, Redis; no worker: the figure is the
submission, each run stored, published and answered with its id). Baseline: ``--runs``
``echo`` runs sent to ``POST /v1/runs`` from 16 client threads; agentq: the same runs as
the items of one ``POST /v1/runs/batch``. Each figure is runs submitted per second, the
median of 5 rounds (3 with ``--quick``; a fresh tenant each), plain and with an idempotency key per
run (the ``Idempotency-Key`` header for the baseline). Target: the batch 5x faster.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.cluster import Cluster
from bench.report import Figure, table

CLIENTS = 16


def items(count: int, *, keyed: bool, round_: int) -> list[dict[str, Any]]:
    return [{"agent": "echo", "input": {"i": i},
             **({"idempotency_key": f"r{round_}-{i}"} if keyed else {})} for i in range(count)]


def singles(client: httpx.Client, runs: list[dict[str, Any]]) -> None:
    def post(item: dict[str, Any]) -> None:
        key = item.pop("idempotency_key", None)
        headers = {"Idempotency-Key": key} if key else {}
        response = client.post("/v1/runs", json=item, headers=headers)
        assert response.status_code == 202, response.text

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(post, runs))


def batch(client: httpx.Client, runs: list[dict[str, Any]]) -> None:
    response = client.post("/v1/runs/batch", json={"items": runs})
    assert response.status_code == 202, response.text
    assert len(response.json()["runs"]) == len(runs)


def rate(cluster: Cluster, submit: Callable[[httpx.Client, list[dict[str, Any]]], None],
         *, runs: int, rounds: int, keyed: bool) -> float:
    """Runs submitted per second, the median of ``rounds`` (after one to warm up)."""
    assert cluster.api is not None
    rates = []
    for round_ in range(rounds + 1):
        _, key = cluster.tenant_key("batch")
        with httpx.Client(base_url=cluster.api.url, timeout=60,
                          headers={"Authorization": f"Bearer {key}"},
                          limits=httpx.Limits(max_connections=CLIENTS)) as client:
            client.get("/v1/runs?limit=1")  # the connection and the key's cache, warm
            given = items(runs if round_ else 50, keyed=keyed, round_=round_)
            began = time.perf_counter()
            submit(client, given)
            if round_:
                rates.append(runs / (time.perf_counter() - began))
    return statistics.median(rates)


def figures(quick: bool) -> list[Figure]:
    runs, rounds = 1000, 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="agentq-batch-") as tmp:
        cluster = Cluster(Path(tmp), workers=0, beat=False, api=True)
        try:
            measured = {(keyed, name): rate(cluster, submit, runs=runs, rounds=rounds,
                                            keyed=keyed)
                        for keyed in (False, True)
                        for name, submit in (("single", singles), ("batch", batch))}
        finally:
            cluster.close()
    return [
        Figure(f"batch: {runs:,} runs in one POST /v1/runs/batch", measured[False, "batch"],
               "runs/s", measured[False, "single"], ">= 5x"),
        Figure(f"batch: {runs:,} keyed runs in one POST", measured[True, "batch"], "runs/s",
               measured[True, "single"], ">= 5x"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    args = parser.parse_args(argv)
    print(table(figures(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
