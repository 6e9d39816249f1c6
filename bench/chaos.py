"""Chaos: runs flow through 3 workers while one of them is SIGKILLed every few seconds.

    python bench/chaos.py [--runs 1000] [--workers 3] [--kill-every 3]

Each run's agent first records an effect row (run id, attempt) in a table of the
benchmark's own, outside agentq's lease, then works for a few milliseconds. The benchmark
starts its own PostgreSQL and Redis, a beat process and the workers; it submits the runs,
kills a random worker (and its pool children) every ``--kill-every`` seconds and starts it
again, and waits for every run to end. It prints, beside a baseline round with no kills:

- lost: runs not terminal by the deadline (must be 0);
- finished twice: runs with more than one terminal transition (must be 0);
- re-executions: effect rows beyond one per run (at-least-once execution shows here);
- time to drain.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import column, func, select, table

from bench.cluster import FAST, Cluster
from bench.report import Figure
from worker.base.models import TERMINAL_STATUSES, Run, RunEvent
from worker.base.runtime import Runtime
from worker.runs.submission import RunRequest, submit

EFFECTS = table("bench_effects", column("run_id"), column("attempt"))


@dataclass
class Round:
    name: str
    submitted: int = 0
    succeeded: int = 0
    dead_lettered: int = 0
    failed: int = 0
    lost: int = 0
    finished_twice: int = 0
    re_executions: int = 0
    kills: int = 0
    drain_s: float = 0.0


def play(cluster: Cluster, *, name: str, runs: int, work_ms: int, kill_every: float | None,
         deadline_s: float) -> Round:
    rt = cluster.runtime
    tenant_id, _ = cluster.tenant_key(f"chaos-{name}")
    result = Round(name=name)
    started = time.monotonic()
    next_kill = started + (kill_every or 0)
    ids = []
    for _ in range(runs):
        request = RunRequest(agent="bench.effect", input={"ms": work_ms}, max_attempts=10)
        ids.append(submit(rt, tenant_id=tenant_id, request=request).id)
        if kill_every and time.monotonic() >= next_kill:
            cluster.kill_worker()
            result.kills += 1
            next_kill = time.monotonic() + kill_every
    result.submitted = len(ids)
    while time.monotonic() - started < deadline_s:
        if _unfinished(rt, tenant_id) == 0:
            break
        if kill_every and time.monotonic() >= next_kill:
            cluster.kill_worker()
            result.kills += 1
            next_kill = time.monotonic() + kill_every
        time.sleep(0.2)
    result.drain_s = time.monotonic() - started
    _tally(rt, tenant_id, ids, result)
    return result


def _unfinished(rt: Runtime, tenant_id: str) -> int:
    with rt.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Run).where(
            Run.tenant_id == tenant_id, Run.status.not_in(list(TERMINAL_STATUSES)))) or 0)


def _tally(rt: Runtime, tenant_id: str, ids: list[str], result: Round) -> None:
    with rt.db.transaction() as session:
        statuses = dict(session.execute(
            select(Run.status, func.count()).where(Run.tenant_id == tenant_id)
            .group_by(Run.status)).all())
        terminal_counts = session.execute(
            select(func.count()).select_from(RunEvent).join(Run, Run.id == RunEvent.run_id)
            .where(Run.tenant_id == tenant_id, RunEvent.type == "status",
                   RunEvent.data["status"].astext.in_([s.value for s in TERMINAL_STATUSES]))
            .group_by(RunEvent.run_id)).scalars().all()
        effects, distinct = session.execute(
            select(func.count(), func.count(func.distinct(EFFECTS.c.run_id)))
            .select_from(EFFECTS).where(EFFECTS.c.run_id.in_(ids))).one()
    result.succeeded = statuses.get("succeeded", 0)
    result.dead_lettered = statuses.get("dead_lettered", 0)
    result.failed = statuses.get("failed", 0)
    result.lost = sum(n for status, n in statuses.items() if status not in TERMINAL_STATUSES)
    result.finished_twice = sum(1 for n in terminal_counts if n > 1)
    result.re_executions = effects - distinct


def report(rounds: list[Round]) -> None:
    fields = ("submitted", "succeeded", "dead_lettered", "failed", "lost", "finished_twice",
              "re_executions", "kills", "drain_s")
    print(f"{'':16}" + "".join(f"{r.name:>14}" for r in rounds))
    for field in fields:
        cells = "".join(f"{getattr(r, field):>14.1f}" if field == "drain_s"
                        else f"{getattr(r, field):>14}" for r in rounds)
        print(f"{field:16}{cells}")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50,
                        help="each worker's slots: runs it holds at once (a kill takes them all)")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--work-ms", type=int, default=50, help="each run's work")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per round")
    parser.add_argument("--no-baseline", action="store_true", help="skip the round without kills")
    return parser


def rounds(args: argparse.Namespace) -> list[Round]:
    played = []
    with tempfile.TemporaryDirectory(prefix="agentq-chaos-") as tmp:
        cluster = Cluster(Path(tmp), workers=args.workers, concurrency=args.concurrency)
        try:
            if not args.no_baseline:
                played.append(play(cluster, name="no kills", runs=args.runs,
                                   work_ms=args.work_ms, kill_every=None,
                                   deadline_s=args.deadline))
            played.append(play(cluster, name="kill -9", runs=args.runs, work_ms=args.work_ms,
                               kill_every=args.kill_every, deadline_s=args.deadline))
        finally:
            cluster.close()
    return played


def figures(quick: bool) -> list[Figure]:
    args = parser().parse_args(["--runs", "300"] if quick else [])
    calm, chaos = rounds(args)
    return [
        Figure(f"chaos: runs lost, of {args.runs}, kill -9 every {args.kill_every:g} s",
               chaos.lost, "runs", None, "== 0"),
        Figure("chaos: runs finished twice", chaos.finished_twice, "runs", None, "== 0"),
        Figure("chaos: re-executions (at-least-once)", chaos.re_executions, "runs",
               calm.re_executions),
        Figure("chaos: time to drain (vs no kills)", chaos.drain_s, "s", calm.drain_s),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    played = rounds(args)
    print(f"chaos: {args.runs} runs, {args.workers} workers x {args.concurrency}, "
          f"a worker SIGKILLed every {args.kill_every:g} s, lease timeout "
          f"{FAST['AGENTQ_LEASE_TIMEOUT_S']} s")
    report(played)
    chaos = played[-1]
    ok = chaos.lost == 0 and chaos.finished_twice == 0
    print("OK: 0 lost, 0 finished twice" if ok else "FAILED: runs lost or finished twice")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
