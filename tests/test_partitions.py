"""Partitions: a link between one process and Postgres or Redis hangs (no reset), then heals.

Each test puts a ``Link`` (tests.partition) between a process of its own and the session's
Postgres or Redis, cuts it, and checks what the process promises while it hangs and after
the heal: a bounded, truthful answer; every run ending once; no event seq doubled or
skipped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from psycopg import sql
from simple_websocket import Client as WsClient
from sqlalchemy import func, select

from agentq import migrate
from tests.agents import CRASH_QUEUE
from tests.conftest import ApiClient, Services, StartWorker, Tenant
from tests.harness import ApiServer, Worker, sse_events, wait_for
from tests.partition import Link
from tests.test_websocket import Socket, ws_url
from worker.access import keys
from worker.app import build_runtime
from worker.base.models import TERMINAL_STATUSES, Run, RunAttempt, RunEvent, new_id
from worker.base.queues import MAINTENANCE_QUEUE
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.runs import dispatch, sweeper

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

# The cut API's bound on every call to a dependency (AGENTQ_DEPENDENCY_TIMEOUT_S): an answer
# comes within it and a little more (the request's own work, a loaded machine).
_BOUND_S = 3.0
_SLACK_S = 2.5


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


@pytest.fixture
def pg_link(services: Services) -> Iterator[Link]:
    with Link(_port(services.database_url)) as link:
        yield link


@pytest.fixture
def redis_link(services: Services) -> Iterator[Link]:
    with Link(_port(services.redis_url)) as link:
        yield link


def _api(env: dict[str, str], services: Services, name: str, **overrides: str) -> ApiServer:
    server = ApiServer(env={**env, "AGENTQ_DEPENDENCY_TIMEOUT_S": str(_BOUND_S), **overrides},
                       log=services.root / f"{name}.log")
    server.start()
    server.wait_ready()
    return server


def _api_through(link: Link, env: dict[str, str], services: Services, name: str,
                 variable: str, url: str, **overrides: str) -> Iterator[ApiServer]:
    server = _api(env, services, name, **{variable: link.url(url)}, **overrides)
    yield server
    link.heal()
    server.stop()


@pytest.fixture
def api_cut_from_pg(env: dict[str, str], services: Services,
                    pg_link: Link) -> Iterator[ApiServer]:
    yield from _api_through(pg_link, env, services, "api-pg-link", "DATABASE_URL",
                            services.database_url)


@pytest.fixture
def api_cut_from_redis(env: dict[str, str], services: Services,
                       redis_link: Link) -> Iterator[ApiServer]:
    yield from _api_through(redis_link, env, services, "api-redis-link", "REDIS_URL",
                            services.redis_url)


@pytest.fixture
def feed_api_cut_from_redis(env: dict[str, str], services: Services,
                            redis_link: Link) -> Iterator[ApiServer]:
    """An API cut from Redis whose streams send keep-alives every 15 s: a stream that waited
    for its live feed would be 15 s late."""
    yield from _api_through(redis_link, env, services, "api-feed-link", "REDIS_URL",
                            services.redis_url, AGENTQ_STREAM_KEEPALIVE_S="15")


def _release(services: Services, run_id: str) -> None:
    """Let a ``test.block`` run finish."""
    redis.Redis.from_url(services.redis_url).set(f"test:release:{run_id}", 1, ex=60)


def _client(server: ApiServer, tenant: Tenant) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30,
                        headers={"Authorization": f"Bearer {tenant.key}"})


def _timed(call: object, *args: object, **kwargs: object) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = call(*args, **kwargs)  # type: ignore[operator]
    return response, time.monotonic() - began


def _submit(client: httpx.Client, **fields: object) -> tuple[httpx.Response, float]:
    return _timed(client.post, "/v1/runs", json={"agent": "echo", "input": {"n": 1}, **fields})


def assert_ledger(runtime: Runtime, run_ids: list[str]) -> None:
    """Each run succeeded once, on one attempt, and its events' seqs run 1..n."""
    with runtime.db.autocommit() as session:
        runs = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(run_ids)))}
        tries = dict(session.execute(
            select(RunAttempt.run_id, func.count()).where(RunAttempt.run_id.in_(run_ids))
            .group_by(RunAttempt.run_id)).all())
        seqs: dict[str, list[int]] = {}
        for run_id, seq in session.execute(
                select(RunEvent.run_id, RunEvent.seq).where(RunEvent.run_id.in_(run_ids))
                .order_by(RunEvent.run_id, RunEvent.seq)):
            seqs.setdefault(run_id, []).append(seq)
    assert sorted(runs) == sorted(run_ids)
    assert {run.status for run in runs.values()} == {"succeeded"}, {
        run_id: run.status for run_id, run in runs.items()}
    assert set(tries.values()) == {1}, tries
    for run_id, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), (run_id, got)


def _wait_succeeded(runtime: Runtime, run_ids: list[str], timeout: float = 60) -> None:
    def ended() -> bool:
        with runtime.db.autocommit() as session:
            return session.scalar(select(func.count()).select_from(Run).where(
                Run.id.in_(run_ids), Run.status == "succeeded")) == len(run_ids)

    wait_for(ended, timeout=timeout, what="the runs to succeed")


def test_the_api_cut_from_postgres_answers_503_within_the_bound_and_recovers(
        api_cut_from_pg: ApiServer, pg_link: Link, tenant: Tenant, runtime: Runtime) -> None:
    _check_an_api_cut_from_postgres(api_cut_from_pg, pg_link, tenant.key, runtime)


def _check_an_api_cut_from_postgres(server: ApiServer, pg_link: Link, key: str,
                                    runtime: Runtime, **fields: object) -> None:
    """503 problem+json within the bound while cut, runs taken again after the heal; each
    run submitted with ``fields`` (the agent and input) ends once."""
    with httpx.Client(base_url=server.url, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        before, _ = _submit(client, **fields)
        assert before.status_code == 202, before.text
        pg_link.cut()
        for _ in range(3):  # the first finds its connection hung; the next ones too
            response, took = _submit(client, **fields)
            assert response.status_code == 503, response.text
            assert took < _BOUND_S + _SLACK_S, took
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["retry-after"]) >= 1
        health, took = _timed(client.get, "/health")
        assert health.status_code == 503 and took < _BOUND_S + _SLACK_S, (health.text, took)
        assert health.json()["checks"]["database"]["ok"] is False, health.json()
        pg_link.heal()
        after: list[str] = []

        def accepted() -> bool:
            response, _ = _submit(client, **fields)
            if response.status_code == 202:
                after.append(response.json()["id"])
            return bool(after)

        wait_for(accepted, timeout=_BOUND_S * 4, what="the API to take runs after the heal")
    _wait_succeeded(runtime, [before.json()["id"], *after])
    assert_ledger(runtime, [before.json()["id"], *after])


def test_the_api_cut_from_redis_accepts_runs_at_once_and_the_sweeper_starts_them(
        api_cut_from_redis: ApiServer, redis_link: Link, tenant: Tenant,
        runtime: Runtime) -> None:
    with _client(api_cut_from_redis, tenant) as client:
        redis_link.cut()
        accepted = []
        for _ in range(3):
            response, took = _submit(client)
            assert response.status_code == 202, response.text
            assert took < _BOUND_S + _SLACK_S, took
            accepted.append(response.json()["id"])
        health, took = _timed(client.get, "/health")
        assert health.status_code == 503 and took < 2 * _BOUND_S + _SLACK_S, (health.text, took)
        assert health.json()["checks"]["broker"]["ok"] is False, health.json()
        # Committed before the publish: the session worker's sweeper publishes them
        _wait_succeeded(runtime, accepted)
        redis_link.heal()
        response, _ = _submit(client)
        assert response.status_code == 202
    _wait_succeeded(runtime, [*accepted, response.json()["id"]])
    assert_ledger(runtime, [*accepted, response.json()["id"]])


def test_a_worker_cut_from_postgres_mid_run_loses_its_runs_to_another_and_rejoins(
        api: ApiClient, crash_worker: StartWorker, pg_link: Link, services: Services,
        runtime: Runtime) -> None:
    cut = crash_worker(4, DATABASE_URL=pg_link.url(services.database_url),
                       AGENTQ_DEPENDENCY_TIMEOUT_S=str(_BOUND_S))
    ids = [api.submit("test.crash.sleep", {"seconds": 6, "later_s": 0.2})["id"]
           for _ in range(3)]
    for run_id in ids:
        api.wait(run_id, statuses={"running"})
        assert _worker(runtime, run_id).startswith(f"{cut.name}@")
    pg_link.cut()  # before the other worker starts: that can take longer than the runs' 6 s
    other = crash_worker(4)
    # Its leases lapse (AGENTQ_LEASE_TIMEOUT_S, 3 s): the sweeper re-queues the runs, the
    # other worker finishes them, and whatever the cut worker writes later is refused
    done = [api.wait(run_id, timeout=60) for run_id in ids]
    assert [run["status"] for run in done] == ["succeeded"] * 3, done
    workers = [_worker(runtime, run_id) for run_id in ids]
    assert all(worker.startswith(f"{other.name}@") for worker in workers), workers
    pg_link.heal()
    other.stop(timeout=10)
    later = [api.submit("test.crash.sleep", {"seconds": 0.1})["id"] for _ in range(3)]
    rejoined = [api.wait(run_id, timeout=30) for run_id in later]  # the cut worker's alone
    assert [run["status"] for run in rejoined] == ["succeeded"] * 3, rejoined
    assert all(_worker(runtime, run_id).startswith(f"{cut.name}@") for run_id in later)
    # The cut worker's outcomes, written after the heal, were refused by the lease
    wait_for(lambda: cut.output().count("stale attempt's outcome refused") >= len(ids),
             timeout=60, what="the cut worker's late outcomes to be refused")
    assert_lost_and_finished_elsewhere(runtime, ids)


def assert_lost_and_finished_elsewhere(runtime: Runtime, run_ids: list[str]) -> None:
    """Each run's first attempt was ended by the sweeper (crashed), never by its cut worker's
    late record, and a second one succeeded; each ended once, its events' seqs 1..n."""
    with runtime.db.autocommit() as session:
        ended = session.execute(select(RunAttempt.run_id, RunAttempt.outcome).where(
            RunAttempt.run_id.in_(run_ids)).order_by(RunAttempt.run_id, RunAttempt.attempt)).all()
    by_run: dict[str, list[str]] = {}
    for run_id, outcome in ended:
        by_run.setdefault(run_id, []).append(str(outcome))
    assert all(outcomes == ["crashed", "succeeded"] for outcomes in by_run.values()), by_run
    for run_id in run_ids:
        assert_ledger_once(runtime, run_id)


def _worker(runtime: Runtime, run_id: str) -> str:
    """The worker that holds (or last held) the run."""
    with runtime.db.autocommit() as session:
        return str(session.scalar(select(Run.worker).where(Run.id == run_id)))


def _read_stream(server: ApiServer, tenant: Tenant, run_id: str,
                 into: list[tuple[float, dict[str, str]]]) -> None:
    """Read the run's SSE stream to its end, noting when each message came."""
    with _client(server, tenant) as client, client.stream(
            "GET", f"/v1/runs/{run_id}/events",
            headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        for message in sse_events(response.iter_lines()):
            into.append((time.monotonic(), message))


def test_a_stream_whose_api_is_cut_from_redis_goes_on_from_postgres_and_heals(
        feed_api_cut_from_redis: ApiServer, services: Services, redis_link: Link,
        api: ApiClient, tenant: Tenant) -> None:
    for cut in (True, False):  # during a cut, then after the heal
        run_id = api.submit("test.block")["id"]
        got: list[tuple[float, dict[str, str]]] = []
        reader = threading.Thread(target=_read_stream,
                                  args=(feed_api_cut_from_redis, tenant, run_id, got))
        reader.start()
        wait_for(lambda got=got: any(  # type: ignore[misc]
            m.get("event") == "status" and '"running"' in m["data"] for _, m in got),
            timeout=30, what="the running event")
        if cut:  # the hub's ping goes unanswered within the bound: the stream polls
            redis_link.cut()
            wait_for(lambda got=got: any(  # type: ignore[misc]
                "live feed unavailable" in m.get("comment", "") for _, m in got),
                timeout=4 * _BOUND_S + 5, what="the stream to say it polls")
        released = time.monotonic()
        _release(services, run_id)
        reader.join(timeout=40)
        assert not reader.is_alive(), "the stream did not end"
        frames = [(at, m) for at, m in got if "event" in m]
        assert [int(m["id"]) for _, m in frames] == list(range(1, len(frames) + 1))
        assert '"succeeded"' in frames[-1][1]["data"]
        late = frames[-1][0] - released
        assert late < 3.0, (cut, late)  # cut: read from Postgres within a second or so
        if cut:
            redis_link.heal()


def test_a_stream_whose_api_is_cut_from_postgres_ends_with_an_error_and_resumes_exactly(
        api_cut_from_pg: ApiServer, pg_link: Link, api: ApiClient, tenant: Tenant,
        services: Services) -> None:
    run_id = api.submit("test.block")["id"]
    got: list[tuple[float, dict[str, str]]] = []
    reader = threading.Thread(target=_read_stream, args=(api_cut_from_pg, tenant, run_id, got))
    reader.start()
    wait_for(lambda: any(m.get("event") == "status" and '"running"' in m["data"]
                         for _, m in got), timeout=30, what="the running event")
    pg_link.cut()
    reader.join(timeout=4 * _BOUND_S + 10)  # its read of the log after a quiet second fails
    assert not reader.is_alive(), "the stream did not end"
    ending = [m for _, m in got if m.get("event") == "unavailable"]
    assert ending and "id" not in ending[0], got
    seen = [int(m["id"]) for _, m in got if "id" in m]
    pg_link.heal()
    _release(services, run_id)
    with _client(api_cut_from_pg, tenant) as client:

        def resumed() -> list[dict[str, str]]:
            with client.stream("GET", f"/v1/runs/{run_id}/events", headers={
                    "Accept": "text/event-stream", "Last-Event-ID": str(seen[-1])}) as response:
                if response.status_code != 200:
                    return []
                return [m for m in sse_events(response.iter_lines()) if "event" in m]

        rest = wait_for(resumed, timeout=4 * _BOUND_S, what="a stream after the heal")
    ids = seen + [int(m["id"]) for m in rest]
    assert ids == list(range(1, len(ids) + 1)), ids  # nothing missed, nothing twice
    assert '"succeeded"' in rest[-1]["data"]


def test_a_worker_cut_from_redis_and_its_broker_finishes_what_it_holds_and_takes_more_after(
        api: ApiClient, crash_worker: StartWorker, redis_link: Link, services: Services,
        runtime: Runtime) -> None:
    cut = crash_worker(4, REDIS_URL=redis_link.url(services.redis_url),
                       AGENTQ_DEPENDENCY_TIMEOUT_S=str(_BOUND_S))
    held = [api.submit("test.crash.sleep", {"seconds": 4})["id"] for _ in range(3)]
    for run_id in held:
        api.wait(run_id, statuses={"running"})
    redis_link.cut()
    # Leases, outcomes and events go to Postgres: the runs end while the broker is cut off
    done = [api.wait(run_id, timeout=30) for run_id in held]
    assert [run["status"] for run in done] == ["succeeded"] * 3, done
    redis_link.heal()
    later = [api.submit("test.crash.sleep", {"seconds": 0.1})["id"] for _ in range(3)]
    after = [api.wait(run_id, timeout=60) for run_id in later]  # only it serves the queue
    assert [run["status"] for run in after] == ["succeeded"] * 3, after
    assert all(_worker(runtime, run_id).startswith(f"{cut.name}@") for run_id in later)
    assert_ledger(runtime, [*held, *later])


def test_two_sweepers_either_side_of_a_cut_requeue_a_dead_workers_run_once(
        api: ApiClient, crash_worker: StartWorker, pg_link: Link, services: Services,
        settings: Settings, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    # Sweeper "near" reaches Postgres through the link and sees leases stale after 1 s,
    # before the session's sweeper (3 s): it takes the dead worker's run first, and its link
    # is cut while it holds the run's row, re-queued but not yet committed
    bound = 1.5  # Postgres ends its idle transaction after 6 x this bound
    near = build_runtime(settings.model_copy(update={
        "database_url": pg_link.url(services.database_url),
        "dependency_timeout_s": bound, "lease_timeout_s": 1.0}))
    publish_all = dispatch.publish_all

    def publish_then_cut(rt: Runtime, jobs: list[dispatch.Dispatch], *,
                         reason: str) -> list[str]:
        sent = publish_all(rt, jobs, reason=reason)  # its message reaches the broker
        if rt is near and jobs:
            pg_link.cut()
        return sent

    monkeypatch.setattr(dispatch, "publish_all", publish_then_cut)
    dead = crash_worker(1)
    run_id = api.submit("test.crash.sleep", {"seconds": 60, "later_s": 0.2})["id"]
    api.wait(run_id, statuses={"running"})
    crash_worker(1)  # takes whichever message claims the run (started first: ready in time)
    dead.signal(signal.SIGKILL)
    failed: list[float] = []

    def near_sweeps() -> bool:
        began = time.monotonic()
        try:
            recovered = sweeper.recover_stale_attempts(near)
        except Exception:  # its commit cannot reach Postgres: a bounded error, not a hang
            failed.append(time.monotonic() - began)
            return True
        assert recovered == 0, "the near sweeper committed across a cut link"
        return False

    wait_for(near_sweeps, timeout=15, what="the near sweeper to take the run")
    assert pg_link.is_cut and failed[0] < 2 * bound + _SLACK_S, failed
    # Postgres ends the near sweeper's session when it has idled in its transaction for
    # 6 x the bound; the session's sweeper then re-queues the run, once
    done = api.wait(run_id, timeout=60)
    assert done["status"] == "succeeded", done
    tries = api.get(f"/v1/runs/{run_id}/attempts").get_json()["items"]
    assert [t["outcome"] for t in tries] == ["crashed", "succeeded"], tries
    assert_ledger_once(runtime, run_id)
    pg_link.heal()
    # After the heal the near sweeper sweeps again (its dead connection replaced), and finds
    # nothing left to do
    wait_for(lambda: _sweeps_cleanly(near), timeout=4 * _BOUND_S,
             what="the near sweeper to sweep again after the heal")
    near.db.dispose()


def _sweeps_cleanly(rt: Runtime) -> bool:
    try:
        return sweeper.recover_stale_attempts(rt) == 0
    except Exception:
        return False


def assert_ledger_once(runtime: Runtime, run_id: str) -> None:
    """The run ended once and its events' seqs run 1..n."""
    with runtime.db.autocommit() as session:
        events = session.execute(select(RunEvent.seq, RunEvent.type, RunEvent.data).where(
            RunEvent.run_id == run_id).order_by(RunEvent.seq)).all()
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1)), events
    ended = [data["status"] for _, kind, data in events
             if kind == "status" and data["status"] in {s.value for s in TERMINAL_STATUSES}]
    assert ended == ["succeeded"], events


def _socket(server: ApiServer, tenant: Tenant) -> Socket:
    return Socket(WsClient.connect(ws_url(server),
                                   headers={"Authorization": f"Bearer {tenant.key}"}))


def _frames_until(ws: Socket, done: Callable[[dict[str, Any]], bool],
                  timeout: float) -> list[tuple[float, dict[str, Any]]]:
    """Frames received (with when) up to the first that is ``done``."""
    got: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while not got or not done(got[-1][1]):
        left = deadline - time.monotonic()
        assert left > 0, f"no such frame within {timeout} s: {got}"
        got.append((time.monotonic(), ws.receive(timeout=left)))
    return got


def _is_status(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: (frame["type"] == "event" and frame["event"] == "status"
                          and frame["data"]["status"] == status)


def test_a_websocket_whose_api_is_cut_from_redis_goes_on_from_postgres_and_heals(
        feed_api_cut_from_redis: ApiServer, services: Services, redis_link: Link,
        api: ApiClient, tenant: Tenant) -> None:
    ws = _socket(feed_api_cut_from_redis, tenant)
    try:
        for cut in (True, False):  # during a cut, then after the heal
            run_id = api.submit("test.block")["id"]
            ws.send({"type": "subscribe", "run_id": run_id, "after": 0})
            got = _frames_until(ws, _is_status("running"), timeout=30)
            if cut:
                redis_link.cut()
                got += _frames_until(ws, lambda f: f.get("code") == "live_feed_unavailable",
                                     timeout=4 * _BOUND_S + 5)
            released = time.monotonic()
            _release(services, run_id)
            got += _frames_until(ws, _is_status("succeeded"), timeout=30)
            events = [frame for _, frame in got if frame["type"] == "event"]
            assert [frame["seq"] for frame in events] == list(range(1, len(events) + 1))
            assert got[-1][0] - released < 3.0, cut  # cut: read from Postgres each second
            if cut:
                redis_link.heal()
    finally:
        ws.client.close()


def test_a_websocket_whose_api_is_cut_from_postgres_says_so_and_resubscribes_exactly(
        api_cut_from_pg: ApiServer, pg_link: Link, api: ApiClient, tenant: Tenant,
        services: Services) -> None:
    run_id = api.submit("test.block")["id"]
    ws = _socket(api_cut_from_pg, tenant)
    try:
        ws.send({"type": "subscribe", "run_id": run_id, "after": 0})
        got = _frames_until(ws, _is_status("running"), timeout=30)
        pg_link.cut()
        got += _frames_until(ws, lambda f: f["type"] == "error", timeout=4 * _BOUND_S + 10)
        failed = got[-1][1]
        assert (failed["code"], failed["reason"], failed["run_id"]) == (
            "follow_failed", "database_unavailable", run_id), failed
        seen = [frame["seq"] for _, frame in got if frame["type"] == "event"]
        pg_link.heal()
        _release(services, run_id)

        def resubscribed() -> list[dict[str, Any]]:
            ws.send({"type": "subscribe", "run_id": run_id, "after": seen[-1]})
            frames = [f for _, f in _frames_until(
                ws, lambda f: f["type"] == "error" or _is_status("succeeded")(f), timeout=30)]
            return [] if frames[-1]["type"] == "error" else frames

        rest = wait_for(resubscribed, timeout=4 * _BOUND_S, what="a subscription after the heal")
        seqs = seen + [frame["seq"] for frame in rest if frame["type"] == "event"]
        assert seqs == list(range(1, len(seqs) + 1)), seqs  # nothing missed, nothing twice
    finally:
        ws.client.close()


@dataclass
class RabbitStack:
    """An agentq of its own on RabbitMQ: a database of its own (so the session's sweeper, on
    Redis, never publishes its runs), a beat and sweeper on a direct link to the broker, and
    the API and a worker whose links to the broker go through ``link``."""

    runtime: Runtime
    api: ApiServer
    worker: Worker
    sweeper: Worker
    link: Link
    key: str
    env: dict[str, str]  # a process's on this stack, its links to everything direct


@pytest.fixture
def rabbit(env: dict[str, str], services: Services, settings: Settings,
           amqp_url: str) -> Iterator[RabbitStack]:
    database_url = _database_of_its_own(services.database_url, f"agentq_amqp_{new_id('t')[-8:]}")
    rt = build_runtime(settings.model_copy(update={"database_url": database_url,
                                                   "broker_url": amqp_url}))
    with rt.db.transaction() as session:
        key = keys.create_key(session, tenant=keys.ensure_tenant(session, name="amqp"))
    on_amqp = {**env, "DATABASE_URL": database_url, "BROKER_URL": amqp_url,
               "AGENTQ_DEPENDENCY_TIMEOUT_S": str(_BOUND_S)}
    with Link(_port(amqp_url)) as link, contextlib.ExitStack() as stack:
        sweeper_process = Worker(env=on_amqp, log=services.root / "amqp-sweeper.log",
                                 name="amqp-sweeper", beat=True, queues=MAINTENANCE_QUEUE)
        cut = {**on_amqp, "BROKER_URL": link.url(amqp_url)}
        worker = Worker(env=cut, log=services.root / "amqp-worker.log", name="amqp-worker",
                        concurrency=4, queues=CRASH_QUEUE)
        for process in (sweeper_process, worker):
            process.start()
            stack.callback(process.stop, timeout=10)
            process.wait_ready(rt.celery)
        api = _api(cut, services, "amqp-api")
        stack.callback(api.stop)
        stack.callback(link.heal)
        yield RabbitStack(rt, api, worker, sweeper_process, link, key, on_amqp)
    rt.db.dispose()


def _database_of_its_own(database_url: str, name: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    migrate.upgrade(url)
    return url


def test_on_rabbitmq_a_worker_and_the_api_cut_from_the_broker_stay_truthful_and_reconnect(
        rabbit: RabbitStack) -> None:
    headers = {"Authorization": f"Bearer {rabbit.key}"}
    with httpx.Client(base_url=rabbit.api.url, timeout=30, headers=headers) as client:

        def submit(seconds: float) -> tuple[str, float]:
            response, took = _timed(client.post, "/v1/runs", json={
                "agent": "test.crash.sleep", "input": {"seconds": seconds}})
            assert response.status_code == 202, response.text
            return response.json()["id"], took

        held = [submit(4)[0] for _ in range(3)]
        wait_for(lambda: _statuses(rabbit.runtime, held) == {"running"}, timeout=30,
                 what="the worker to take the runs")
        rabbit.link.cut()
        # The worker's runs go on: leases, outcomes and events go to Postgres
        _wait_succeeded(rabbit.runtime, held, timeout=30)
        # The API commits each run and answers within the bound; the publish is left to the
        # sweeper, whose link to the broker is whole
        during = [submit(0.1) for _ in range(3)]
        assert all(took < _BOUND_S + _SLACK_S for _, took in during), during
        # Publisher confirms: the API's publishes into the hung link did not count, and the
        # sweeper published the runs instead
        wait_for(lambda: _dispatched_by_sweeper(rabbit.sweeper, [i for i, _ in during]),
                 timeout=30, what="the sweeper to publish the runs the API could not")
        rabbit.link.heal()
        # The cut worker, the only one on the queue, reconnects and takes them
        later = [run_id for run_id, _ in during] + [submit(0.1)[0]]
        _wait_succeeded(rabbit.runtime, later, timeout=60)
    assert_ledger(rabbit.runtime, [*held, *later])


def _dispatched_by_sweeper(sweeper_process: Worker, run_ids: list[str]) -> bool:
    lines = [line for line in sweeper_process.output().splitlines()
             if "run dispatched by the sweeper" in line]
    return all(any(run_id in line for line in lines) for run_id in run_ids)


def _statuses(rt: Runtime, run_ids: list[str]) -> set[str]:
    with rt.db.autocommit() as session:
        return set(session.scalars(select(Run.status).where(Run.id.in_(run_ids))))


def test_on_rabbitmq_a_worker_cut_from_postgres_loses_its_runs_to_another_and_rejoins(
        rabbit: RabbitStack, services: Services) -> None:
    rabbit.worker.stop(timeout=10)  # the runs go to the worker cut from Postgres alone
    database_url = rabbit.env["DATABASE_URL"]
    started: list[Worker] = []

    def start(name: str, **overrides: str) -> Worker:
        process = Worker(env={**rabbit.env, **overrides}, log=services.root / f"{name}.log",
                         name=name, concurrency=4, queues=CRASH_QUEUE)
        process.start()
        started.append(process)
        process.wait_ready(rabbit.runtime.celery)
        return process

    headers = {"Authorization": f"Bearer {rabbit.key}"}
    with Link(_port(database_url)) as pg_link, httpx.Client(
            base_url=rabbit.api.url, timeout=30, headers=headers) as client:

        def submit(**input: float) -> str:
            response = client.post("/v1/runs", json={"agent": "test.crash.sleep",
                                                     "input": input})
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        try:
            cut = start("amqp-pg-cut", DATABASE_URL=pg_link.url(database_url))
            ids = [submit(seconds=6, later_s=0.2) for _ in range(3)]
            wait_for(lambda: _statuses(rabbit.runtime, ids) == {"running"}, timeout=30,
                     what="the cut worker to take the runs")
            pg_link.cut()  # before the other starts: that can take longer than the runs' 6 s
            other = start("amqp-pg-other")
            # Its leases lapse; the sweeper re-queues the runs and the other worker takes
            # them from RabbitMQ (the cut worker still holds the first messages, unacked)
            _wait_succeeded(rabbit.runtime, ids, timeout=60)
            workers = [_worker(rabbit.runtime, run_id) for run_id in ids]
            assert all(worker.startswith(f"{other.name}@") for worker in workers), workers
            pg_link.heal()
            other.stop(timeout=10)
            later = [submit(seconds=0.1) for _ in range(3)]
            _wait_succeeded(rabbit.runtime, later, timeout=60)  # the cut worker's alone
            assert all(_worker(rabbit.runtime, run_id).startswith(f"{cut.name}@")
                       for run_id in later)
            wait_for(lambda: cut.output().count("stale attempt's outcome refused") >= len(ids),
                     timeout=60, what="the cut worker's late outcomes to be refused")
        finally:
            for process in started:
                process.stop(timeout=10)
    assert_lost_and_finished_elsewhere(rabbit.runtime, ids)
    assert_ledger(rabbit.runtime, later)


def test_on_rabbitmq_the_api_cut_from_postgres_answers_503_within_the_bound_and_recovers(
        rabbit: RabbitStack, services: Services) -> None:
    database_url = rabbit.env["DATABASE_URL"]
    with Link(_port(database_url)) as pg_link:
        server = _api(rabbit.env, services, "amqp-api-pg-link",
                      DATABASE_URL=pg_link.url(database_url))
        try:
            _check_an_api_cut_from_postgres(server, pg_link, rabbit.key, rabbit.runtime,
                                            agent="test.crash.sleep", input={"seconds": 0.1})
        finally:
            pg_link.heal()
            server.stop()


def test_on_rabbitmq_the_api_and_a_worker_cut_from_redis_go_on_through_the_broker(
        rabbit: RabbitStack, services: Services) -> None:
    # Redis is only the events' bus here: runs are published to RabbitMQ, at once
    redis_url = rabbit.env["REDIS_URL"]
    with Link(_port(redis_url)) as redis_link:
        through = {"REDIS_URL": redis_link.url(redis_url)}
        rabbit.worker.stop(timeout=10)
        worker = Worker(env={**rabbit.env, **through}, log=services.root / "amqp-redis-cut.log",
                        name="amqp-redis-cut", concurrency=4, queues=CRASH_QUEUE)
        worker.start()
        server = _api(rabbit.env, services, "amqp-api-redis-link", **through)
        try:
            worker.wait_ready(rabbit.runtime.celery)
            with httpx.Client(base_url=server.url, timeout=30,
                              headers={"Authorization": f"Bearer {rabbit.key}"}) as client:
                held = [_submit(client, agent="test.crash.sleep", input={"seconds": 3})[0]
                        .json()["id"] for _ in range(2)]
                wait_for(lambda: _statuses(rabbit.runtime, held) == {"running"}, timeout=30,
                         what="the worker to take the runs")
                redis_link.cut()
                during = []
                for _ in range(3):
                    response, took = _submit(client, agent="test.crash.sleep",
                                             input={"seconds": 0.1})
                    assert response.status_code == 202 and took < _BOUND_S + _SLACK_S, (
                        response.text, took)
                    during.append(response.json()["id"])
                # Everything the runs need is in Postgres and RabbitMQ: they end in the cut
                _wait_succeeded(rabbit.runtime, [*held, *during], timeout=30)
                redis_link.heal()
                after = _submit(client, agent="test.crash.sleep", input={"seconds": 0.1})[0]
                assert after.status_code == 202, after.text
            _wait_succeeded(rabbit.runtime, [after.json()["id"]], timeout=30)
        finally:
            redis_link.heal()
            server.stop()
            worker.stop(timeout=10)
    assert_ledger(rabbit.runtime, [*held, *during, after.json()["id"]])
