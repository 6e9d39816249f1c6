"""Partitions: runs flow while each link to Postgres or Redis in turn hangs, then heals.

    python bench/partition.py [--quick] [--logs DIR]

The benchmark starts its own PostgreSQL and Redis, beat, a sweeper (a worker on the
maintenance queue only) and, each through links of its own (``tests.partition.Link``: a
loopback proxy that, cut, forwards nothing and sends no reset), the API and one worker for
the run queues. That makes four links: API-Postgres, API-Redis, worker-Postgres and
worker-Redis (Redis is the broker too). Beat and the sweeper connect directly, so the repair
path is up while a link is cut.

A client submits ``bench.effect`` runs (1 s of work, so runs are in flight at every cut) over
HTTP at a steady rate, 200 per link's round, each with an Idempotency-Key. Whatever is not a
2xx (a 503, a 409, no answer within the client's 30 s) is tried again with the same key after
Retry-After, so the client gives up on nothing. Each link in turn: 10 s of flow, 30 s cut,
healed, 20 s more (``--quick``: 8 s, 10 s, 12 s); then 10 s more flow, and a wait for every
run to end. Figures:

- runs lost: runs not terminal by the deadline, runs answered 2xx but not stored, and
  submissions never accepted (must be 0);
- runs finished twice: runs with more than one terminal status event (must be 0);
- runs created twice: runs beyond one per accepted submission (must be 0);
- longest answer, per link: the longest request that overlapped the cut, answered or not
  (target <= 6 s: each call to a dependency is bounded by AGENTQ_DEPENDENCY_TIMEOUT_S, 5 s);
- heal -> full throughput, per link: seconds from the heal to the first run succeeding (by
  its ``finished_at``) from which the next 3 s see runs succeed at >= 80 % of the rate they
  did in the 8 s before the cut (``--quick``: 6 s; target <= 15 s). It includes a run's 1 s
  of work; if no such run comes before the next cut (or the end), the time to it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import func, select

from bench.chaos import Round, _tally, _unfinished
from bench.cluster import Cluster
from bench.report import Figure, table
from tests.harness import ApiServer, Process, Worker
from tests.partition import Link
from worker.base.models import Run
from worker.base.queues import MAINTENANCE_QUEUE, RUN_QUEUES
from worker.base.runtime import Runtime

LINKS = ("api-pg", "api-redis", "worker-pg", "worker-redis")
WINDOW_S, FULL, PRE_CUT_S = 3.0, 0.8, 8.0
ANSWER_TARGET_S, HEAL_TARGET_S = 6.0, 15.0
P = TypeVar("P", bound=Process)


@dataclass(frozen=True)
class Attempt:
    """One request of a submission: when it began (epoch s), how long it took, its status
    (None: no answer)."""

    began: float
    took: float
    status: int | None


@dataclass
class Submission:
    key: str
    run_ids: set[str] = field(default_factory=set)
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class Cut:
    """One link's round: when it was cut and healed (epoch s), and how far it was watched."""

    link: str
    cut_at: float
    heal_at: float
    pre_cut_s: float
    watched_until: float = 0.0

    @property
    def seconds(self) -> float:
        return self.heal_at - self.cut_at


class Client:
    """Submits runs over HTTP, each retried with its Idempotency-Key until it is accepted."""

    def __init__(self, url: str, token: str, *, work_ms: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"},
                                 limits=httpx.Limits(max_connections=None,
                                                     max_keepalive_connections=None))
        self.body = {"agent": "bench.effect", "input": {"ms": work_ms}, "max_attempts": 10}
        self.submissions: list[Submission] = []
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()  # pacing ends
        self.giving_up = threading.Event()  # retrying ends

    def pace(self, rate: float) -> None:
        """Start a submission every ``1 / rate`` s until ``stopping`` is set."""
        began = time.monotonic()
        while not self.stopping.is_set():
            submission = Submission(key=str(uuid.uuid4()))
            self.submissions.append(submission)
            thread = threading.Thread(target=self._submit, args=(submission,), daemon=True)
            thread.start()
            self.threads.append(thread)
            due = began + len(self.submissions) / rate
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def _submit(self, submission: Submission) -> None:
        while not self.giving_up.is_set():
            began, started = time.time(), time.monotonic()
            try:
                response = self.http.post("/v1/runs", json=self.body,
                                          headers={"Idempotency-Key": submission.key})
            except httpx.HTTPError:
                submission.attempts.append(Attempt(began, time.monotonic() - started, None))
                self.giving_up.wait(1.0)
                continue
            submission.attempts.append(Attempt(began, time.monotonic() - started,
                                               response.status_code))
            if response.is_success:
                submission.run_ids.add(response.json()["id"])
                return
            self.giving_up.wait(_retry_after(response))

    def close(self, timeout: float) -> None:
        """Stop pacing, let the submissions still retrying try until ``timeout``, then end."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.giving_up.set()
        for thread in self.threads:
            thread.join(35)
        self.http.close()


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(10.0, max(0.2, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


@dataclass
class Setup:
    cluster: Cluster
    links: dict[str, Link]
    api: ApiServer


@contextlib.contextmanager
def started(root: Path) -> Iterator[Setup]:
    """The cluster: beat and a sweeper direct, the API and the run worker through links."""
    cluster = Cluster(root, workers=0, beat=True)
    links: dict[str, Link] = {}
    try:
        pg, rd = cluster.postgres.port, cluster.redis.port
        assert pg is not None and rd is not None
        links = {name: Link(pg if name.endswith("pg") else rd) for name in LINKS}
        _keep(cluster, Worker(env=cluster.env, log=root / "sweeper.log", name="sweeper",
                              queues=MAINTENANCE_QUEUE)).wait_ready(cluster.runtime.celery)
        worker = Worker(env=_through(cluster, links, "worker"), log=root / "worker.log",
                        name="cut", concurrency=50, queues=",".join(RUN_QUEUES))
        _keep(cluster, worker).wait_ready(cluster.runtime.celery)
        api = ApiServer(env=_through(cluster, links, "api"), log=root / "api.log")
        _keep(cluster, api).wait_ready()
        yield Setup(cluster, links, api)
    finally:
        for link in links.values():
            link.heal()
        cluster.close()
        for link in links.values():
            link.close()


def _through(cluster: Cluster, links: dict[str, Link], process: str) -> dict[str, str]:
    env = cluster.env
    return {**env, "DATABASE_URL": links[f"{process}-pg"].url(env["DATABASE_URL"]),
            "REDIS_URL": links[f"{process}-redis"].url(env["REDIS_URL"])}


def _keep(cluster: Cluster, process: P) -> P:
    """Start ``process`` as one of the cluster's (stopped by its ``close``)."""
    process.start()
    cluster.processes.append(process)
    return process


@dataclass
class Result:
    cuts: list[Cut]
    submissions: list[Submission]
    tally: Round
    missing: int  # answered 2xx, not stored
    created: int  # runs stored for the tenant
    succeeded_at: list[float]  # epoch s, sorted


def play(setup: Setup, *, flow_s: float, cut_s: float, after_s: float,
         per_link: int, work_ms: int, deadline_s: float) -> Result:
    rt = setup.cluster.runtime
    tenant_id, token = setup.cluster.tenant_key("partition")
    client = Client(setup.api.url, token, work_ms=work_ms)
    pacer = threading.Thread(target=client.pace, args=(per_link / (flow_s + cut_s + after_s),),
                             daemon=True)
    pacer.start()
    cuts = [_cut(setup.links[name], name, flow_s=flow_s, cut_s=cut_s, after_s=after_s)
            for name in LINKS]
    time.sleep(flow_s)
    for cut, after in itertools.pairwise(cuts):
        cut.watched_until = after.cut_at
    cuts[-1].watched_until = time.time()
    client.close(timeout=deadline_s)
    pacer.join()
    _drain(rt, tenant_id, deadline_s)
    return _result(rt, tenant_id, cuts, client.submissions)


def _result(rt: Runtime, tenant_id: str, cuts: list[Cut],
            submissions: list[Submission]) -> Result:
    ids = sorted({run_id for s in submissions for run_id in s.run_ids})
    tally = Round(name="partition", submitted=len(submissions))
    _tally(rt, tenant_id, ids, tally)
    with rt.db.transaction() as session:
        stored = set(session.scalars(select(Run.id).where(Run.tenant_id == tenant_id)))
        succeeded_at = sorted(float(t) for t in session.scalars(
            select(func.extract("epoch", Run.finished_at))
            .where(Run.tenant_id == tenant_id, Run.status == "succeeded")))
    return Result(cuts, submissions, tally, missing=len(set(ids) - stored),
                  created=len(stored), succeeded_at=succeeded_at)


def _cut(link: Link, name: str, *, flow_s: float, cut_s: float, after_s: float) -> Cut:
    time.sleep(flow_s)
    print(f"partition: cutting {name}", file=sys.stderr, flush=True)
    cut_at = time.time()
    link.cut()
    time.sleep(cut_s)
    link.heal()
    heal_at = time.time()
    time.sleep(after_s)
    return Cut(name, cut_at, heal_at, pre_cut_s=min(PRE_CUT_S, flow_s - 2))


def _drain(rt: Runtime, tenant_id: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and _unfinished(rt, tenant_id):
        time.sleep(0.5)


def longest_answer(result: Result, cut: Cut) -> float:
    """The longest request that overlapped the cut, answered or not."""
    return max((a.took for s in result.submissions for a in s.attempts
                if a.began < cut.heal_at and a.began + a.took > cut.cut_at), default=0.0)


def statuses(result: Result, cut: Cut) -> Counter[int | None]:
    return Counter(a.status for s in result.submissions for a in s.attempts
                   if cut.cut_at <= a.began < cut.heal_at)


def _succeeded(result: Result, start: float, end: float) -> int:
    return (bisect_left(result.succeeded_at, end)
            - bisect_left(result.succeeded_at, start))


def pre_cut_rate(result: Result, cut: Cut) -> float:
    return _succeeded(result, cut.cut_at - cut.pre_cut_s, cut.cut_at) / cut.pre_cut_s


def heal_to_full(result: Result, cut: Cut) -> float:
    """Seconds from the heal to the first success after it from which the next WINDOW_S
    hold FULL of the pre-cut rate; if none before the next cut, the time to that cut."""
    full = FULL * pre_cut_rate(result, cut) * WINDOW_S
    first = bisect_left(result.succeeded_at, cut.heal_at)
    for start in result.succeeded_at[first:]:
        if start + WINDOW_S > cut.watched_until:
            break
        if _succeeded(result, start, start + WINDOW_S) >= full:
            return start - cut.heal_at
    return cut.watched_until - cut.heal_at


def lost(result: Result) -> int:
    never = sum(1 for s in result.submissions if not s.run_ids)
    return result.tally.lost + result.missing + never


def created_twice(result: Result) -> int:
    return result.created - sum(1 for s in result.submissions if s.run_ids)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 s flow, 10 s cut, 12 s after")
    parser.add_argument("--per-link", type=int, default=200, help="runs per link's round")
    parser.add_argument("--work-ms", type=int, default=1000, help="each run's work")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="seconds, after the last round, for every run to end")
    parser.add_argument("--logs", type=Path,
                        help="keep the cluster's logs here, and partition.json")
    return parser


def run(args: argparse.Namespace) -> Result:
    flow_s, cut_s, after_s = (8.0, 10.0, 12.0) if args.quick else (10.0, 30.0, 20.0)
    per_link = args.per_link // 2 if args.quick else args.per_link
    with contextlib.ExitStack() as stack:
        root = args.logs or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="agentq-partition-")))
        root.mkdir(parents=True, exist_ok=True)
        with started(root) as setup:
            result = play(setup, flow_s=flow_s, cut_s=cut_s, after_s=after_s,
                          per_link=per_link, work_ms=args.work_ms, deadline_s=args.deadline)
        if args.logs:  # every request and every success, to look into
            (root / "partition.json").write_text(json.dumps(dataclasses.asdict(result),
                                                            default=sorted))
    detail(result)
    return result


def detail(result: Result) -> None:
    """What each round saw, on stderr (the table has the figures)."""
    tally = result.tally
    print(f"partition: {tally.submitted} submitted, {tally.succeeded} succeeded, "
          f"{tally.dead_lettered} dead-lettered, {tally.failed} failed, {tally.lost} not "
          f"ended, {result.missing} missing, {tally.re_executions} re-executions",
          file=sys.stderr)
    for cut in result.cuts:
        answers = ", ".join(f"{status or 'none'}: {n}"
                            for status, n in sorted(statuses(result, cut).items(), key=str))
        print(f"  {cut.link} cut {cut.seconds:.0f} s: pre-cut "
              f"{pre_cut_rate(result, cut):.1f} runs/s, in the cut "
              f"{_succeeded(result, cut.cut_at, cut.heal_at) / cut.seconds:.1f}, "
              f"longest answer {longest_answer(result, cut):.1f} s, heal -> full "
              f"{heal_to_full(result, cut):.1f} s; answers begun in the cut: {answers}",
              file=sys.stderr)


def to_figures(result: Result) -> list[Figure]:
    n, cut_s = result.tally.submitted, round(result.cuts[0].seconds)
    rows = [
        Figure(f"partition: runs lost, of {n}, 4 links cut {cut_s:g} s", lost(result), "runs",
               None, "== 0"),
        Figure("partition: runs finished twice", result.tally.finished_twice, "runs", None,
               "== 0"),
        Figure("partition: runs created twice", created_twice(result), "runs", None, "== 0"),
    ]
    for cut in result.cuts:
        rows.append(Figure(f"partition {cut.link}: longest answer in cut",
                           longest_answer(result, cut), "s", None, f"<= {ANSWER_TARGET_S:g}"))
        rows.append(Figure(f"partition {cut.link}: heal -> full throughput",
                           heal_to_full(result, cut), "s", None, f"<= {HEAL_TARGET_S:g}"))
    return rows


def figures(quick: bool) -> list[Figure]:
    args = parser().parse_args(["--quick"] if quick else [])
    return to_figures(run(args))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rows = to_figures(run(args))
    print(table(rows))
    return 1 if any(row.met is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
