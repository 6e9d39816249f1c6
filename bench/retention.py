"""Retention: submit latency while a million old events are purged, beside without.

    python bench/retention.py [--events 1000000] [--runs 20000] [--flat-batches 500,100,2000]

Starts its own cluster (the API under gunicorn with 2 workers, one worker process running
what is submitted; no beat: this process purges) and seeds, in bulk SQL, ``--runs`` runs
that ended 40 days ago with ``--events`` events among them, an attempt and a delivered
webhook (with its attempt) each. A process of its own submits ``bench.noop`` runs through
``POST /v1/runs`` at a steady ``--rate`` (runs flowing, well under the API's capacity)
while this one purges with ``worker.runs.retention.purge``, in slices of purging with
pauses as long between them: requests due during a slice make the figure, those due in
the pauses around them the baseline, measured in the same run. Latency is from when a
request was due to its answer (no coordinated omission). Each purge gets a fresh seed:

- as the sweeper purges: ``SWEEP_BATCHES`` batches of ``BATCH`` runs every 5 s (the
  default ``AGENTQ_SWEEP_INTERVAL_S``), in 20 s slices (``--sweeps``: other sizes too);
  the first has the target;
- flat out, as ``agentq runs purge`` does, batch after batch, in 10 s slices, once for each
  ``--flat-batches`` size: what a batch costs, and how fast a backlog goes.

Beside them, for the choice between deleting and dropping partitions: the time to detach
and drop a partition holding as many events.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psycopg

from bench.cluster import Cluster
from bench.report import Figure, table
from bench.stream import percentile
from worker.runs import retention

KEEP = timedelta(days=30)
WARMUP_S = 3.0
SEED = """
INSERT INTO runs (id, tenant_id, agent, status, input, result, attempt, max_attempts,
                  timeout_s, metadata, queue, priority, lease_epoch, last_seq, created_at,
                  started_at, finished_at)
SELECT 'run_old_' || %(tag)s || '_' || n, %(tenant)s, 'bench.noop', 'succeeded',
       '{"question": "what did we ship last month?"}', '{"answer": "many things"}', 1, 3,
       60, '{}', 'runs.normal', 'normal', 1, %(per_run)s,
       now() - interval '40 days' + n * interval '10 ms',
       now() - interval '40 days' + n * interval '10 ms',
       now() - interval '40 days' + n * interval '10 ms' + interval '30 s'
FROM generate_series(1, %(runs)s) AS n;
INSERT INTO run_events (run_id, seq, type, data, at)
SELECT r.id, s, 'progress',
       jsonb_build_object('phase', 'querying', 'message', 'step ' || s || ' of the run'),
       r.started_at + s * interval '100 ms'
FROM runs r CROSS JOIN generate_series(1, %(per_run)s) AS s
WHERE r.tenant_id = %(tenant)s;
INSERT INTO run_attempts (run_id, attempt, lease_epoch, worker, started_at, finished_at,
                          outcome)
SELECT id, 1, 1, 'bench0', started_at, finished_at, 'succeeded' FROM runs
WHERE tenant_id = %(tenant)s;
INSERT INTO deliveries (id, tenant_id, run_id, url, event_type, payload, status, attempts,
                        created_at, delivered_at, last_status_code)
SELECT 'dlv_' || id, tenant_id, id, 'https://example.com/hook', 'run.succeeded',
       '{"type": "run.succeeded"}', 'delivered', 1, finished_at, finished_at, 200 FROM runs
WHERE tenant_id = %(tenant)s;
INSERT INTO delivery_attempts (delivery_id, attempt, started_at, latency_ms, status_code)
SELECT 'dlv_' || id, 1, finished_at, 42, 200 FROM runs
WHERE tenant_id = %(tenant)s;
"""


@dataclass
class Purged:
    """What one purge did: its active slices (wall clock), each call's time, the rows."""

    batch: int
    slices: list[tuple[float, float]] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)  # each purge() call's
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(retention.TABLES, 0))

    @property
    def active_s(self) -> float:
        return sum(end - start for start, end in self.slices)

    def during(self, sent: float) -> bool:
        return any(start <= sent < end for start, end in self.slices)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20_000, help="the old runs they belong to")
    parser.add_argument("--sweeps", default=f"{retention.BATCH}x{retention.SWEEP_BATCHES}",
                        help="RUNSxBATCHES: purges as the sweeper does, BATCHES batches of "
                             "RUNS runs every 5 s (the first: the target)")
    parser.add_argument("--flat-batches", default=f"{retention.BATCH},100,2000",
                        help="runs per transaction of each flat-out purge ('': none)")
    parser.add_argument("--rate", type=float, default=40.0, help="submissions per second")
    parser.add_argument("--connections", type=int, default=8)
    return parser


def seed(database_url: str, *, tenant_id: str, tag: str, runs: int, events: int) -> float:
    """The old runs and all that is theirs; seconds it took."""
    began = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        params = {"tag": tag, "tenant": tenant_id, "runs": runs,
                  "per_run": max(1, events // runs)}
        for statement in SEED.split(";")[:-1]:  # each on its own: they have parameters
            conn.execute(statement, params)
        conn.execute("VACUUM ANALYZE runs, run_events, run_attempts, deliveries, "
                     "delivery_attempts")
    return time.monotonic() - began


def load(url: str, key: str, rate: float, connections: int, stop: Event,
         out: Any) -> None:
    """In a process of its own: POST /v1/runs every 1/rate s until ``stop``; send ``out``
    each request's (due time, ms from due to answer, ok)."""
    out.send(asyncio.run(_paced(url, key, rate, connections, stop)))


async def _paced(url: str, key: str, rate: float, connections: int,
                 stop: Event) -> list[tuple[float, float, bool]]:
    samples: list[tuple[float, float, bool]] = []
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def one(due: float) -> None:
            try:
                response = await client.post("/v1/runs", json={"agent": "bench.noop"})
                ok = response.status_code == 202
            except httpx.TransportError:
                ok = False
            samples.append((due, (time.time() - due) * 1000, ok))

        tasks: set[asyncio.Task[None]] = set()
        start, sent = time.time(), 0
        while not stop.is_set():
            due = start + sent / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            sent += 1
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return samples


@dataclass(frozen=True)
class Pace:
    """How a purge goes: ``max_batches`` batches of ``batch`` runs every ``every_s`` (0:
    one after another), in slices of ``slice_s`` with as long a pause before each."""

    name: str
    batch: int
    max_batches: int
    every_s: float
    slice_s: float


def sweeper(batch: int, batches: int) -> Pace:
    return Pace(f"as the sweeper ({batches} a sweep)", batch, batches, 5.0, 20.0)


def flat_out(batch: int) -> Pace:
    return Pace("flat out", batch, 1, 0.0, 10.0)


def purge_in_slices(cluster: Cluster, pace: Pace) -> Purged:
    """Purge everything older than KEEP at ``pace``, in slices with pauses."""
    purged = Purged(pace.batch)
    done = False
    while not done:
        time.sleep(pace.slice_s)  # a pause: the baseline's requests
        began = time.time()
        while not done and time.time() - began < pace.slice_s:
            started = time.perf_counter()
            counts = retention.purge(cluster.runtime.db, older_than=KEEP, batch=pace.batch,
                                     max_batches=pace.max_batches)
            took = time.perf_counter() - started
            purged.call_ms.append(took * 1000)
            for name, rows in counts.items():
                purged.counts[name] += rows
            done = counts["runs"] < pace.batch * pace.max_batches
            time.sleep(max(0.0, pace.every_s - took))
        purged.slices.append((began, time.time()))
    time.sleep(pace.slice_s)  # the last pause
    return purged


@dataclass(frozen=True)
class Round:
    pace: Pace
    purged: Purged
    during: list[float]
    quiet: list[float]
    errors: int
    seed_s: float


def one_round(cluster: Cluster, args: argparse.Namespace, pace: Pace, tag: str) -> Round:
    assert cluster.api is not None
    tenant_id, key = cluster.tenant_key(f"retention{tag}")
    seed_s = seed(cluster.env["DATABASE_URL"], tenant_id=tenant_id, tag=tag,
                  runs=args.runs, events=args.events)
    context = multiprocessing.get_context("spawn")
    stop, (receive, send) = context.Event(), context.Pipe(duplex=False)
    child = context.Process(target=load, args=(cluster.api.url, key, args.rate,
                                               args.connections, stop, send))
    child.start()
    send.close()  # the child's end only: its death ends recv() below
    try:
        time.sleep(WARMUP_S)
        if not child.is_alive():
            raise RuntimeError(f"the load process ended (exit {child.exitcode})")
        purged = purge_in_slices(cluster, pace)
    finally:
        stop.set()
        samples = receive.recv()
        child.join(timeout=60)
    began = samples[0][0] + WARMUP_S if samples else 0.0
    kept = [(due, ms, ok) for due, ms, ok in samples if due >= began]
    return Round(pace, purged, during=[ms for due, ms, _ in kept if purged.during(due)],
                 quiet=[ms for due, ms, _ in kept if not purged.during(due)],
                 errors=sum(not ok for _, _, ok in kept), seed_s=seed_s)


def partition_drop_ms(database_url: str, events: int) -> float:
    """Detach (concurrently) and drop a partition of ``events`` events, in ms."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_events (LIKE run_events INCLUDING DEFAULTS, "
                     "PRIMARY KEY (run_id, seq, at)) PARTITION BY RANGE (at)")
        conn.execute("CREATE TABLE bench_events_old PARTITION OF bench_events "
                     "FOR VALUES FROM (MINVALUE) TO ('2000-01-01')")
        conn.execute("CREATE TABLE bench_events_new PARTITION OF bench_events "
                     "FOR VALUES FROM ('2000-01-01') TO (MAXVALUE)")
        conn.execute("INSERT INTO bench_events (run_id, seq, type, data, at) "
                     "SELECT 'run_p_' || n / 50, n %% 50, 'progress', '{}', "
                     "'1999-01-01'::timestamptz + n * interval '1 ms' "
                     "FROM generate_series(1, %s) AS n", (events,))
        began = time.perf_counter()
        conn.execute("ALTER TABLE bench_events DETACH PARTITION bench_events_old CONCURRENTLY")
        conn.execute("DROP TABLE bench_events_old")
        elapsed = (time.perf_counter() - began) * 1000
        conn.execute("DROP TABLE bench_events")
    return elapsed


def measure(args: argparse.Namespace) -> tuple[list[Round], float]:
    paces = [sweeper(*(int(n) for n in spec.split("x")))
             for spec in args.sweeps.split(",") if spec.strip()]
    paces += [flat_out(int(size)) for size in args.flat_batches.split(",") if size.strip()]
    with tempfile.TemporaryDirectory(prefix="agentq-retention-") as tmp:
        cluster = Cluster(Path(tmp), workers=1, beat=False, api=True,
                          api_args=("--workers", "2"))
        try:
            rounds = [one_round(cluster, args, pace, tag=str(index))
                      for index, pace in enumerate(paces)]
            drop_ms = partition_drop_ms(cluster.env["DATABASE_URL"], args.events)
        finally:
            cluster.close()
    return rounds, drop_ms


def _figures(args: argparse.Namespace) -> list[Figure]:
    rounds, drop_ms = measure(args)
    for done in rounds:
        if done.errors:
            raise AssertionError(f"{done.errors} submissions failed during the purge")
        if done.purged.counts["run_events"] < args.events:
            raise AssertionError(f"only {done.purged.counts['run_events']} events purged")
    figures = []
    for index, done in enumerate(rounds):
        pace, purged = done.pace, done.purged
        how = f"{pace.name}, batch {pace.batch}"
        call = "sweep" if pace.every_s else "batch"
        figures += [
            Figure(f"retention: submit p99 while purging {how}", percentile(done.during, 0.99),
                   "ms", percentile(done.quiet, 0.99), "<= 1.2x" if index == 0 else ""),
            Figure(f"retention: submit p50 while purging {how}", percentile(done.during, 0.5),
                   "ms", percentile(done.quiet, 0.5)),
            Figure(f"retention: events deleted per second {how}",
                   purged.counts["run_events"] / purged.active_s, "events/s"),
            Figure(f"retention: longest {call}, {how}", max(purged.call_ms), "ms"),
        ]
    figures.append(Figure(f"retention: detach + drop a {args.events:,}-event partition",
                          drop_ms, "ms"))
    return figures


def figures(quick: bool) -> list[Figure]:
    return _figures(parser().parse_args(["--events", "200000", "--runs", "4000",
                                         "--flat-batches", str(retention.BATCH)]
                                        if quick else []))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    began = time.monotonic()
    rows = _figures(args)
    print(f"retention: {args.events:,} events on {args.runs:,} runs ended 40 days ago, "
          f"purged in slices while {args.rate:g} runs/s are submitted; baseline: the same "
          f"submissions in the pauses between; {time.monotonic() - began:.0f} s")
    print(table(rows))
    return 0 if all(figure.met is not False for figure in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
