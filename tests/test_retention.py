"""Retention: runs that ended long ago go with every row of theirs; dead letters, waiting
runs, young runs and runs whose webhook is still being delivered stay; what pointed at a
purged run (a session, an Idempotency-Key, an inbound event) goes on working.

Runs are made old by moving their times back in SQL, never by waiting.
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text

from tests.conftest import ApiClient, Tenant
from tests.harness import BIN, ROOT, ApiServer, Receiver, wait_for
from tests.test_inbound import GITHUB_SECRET, github, source
from tests.test_observe import _rows_read
from worker.base.models import Delivery, InboundEvent
from worker.base.runtime import Runtime
from worker.runs import retention

pytestmark = pytest.mark.usefixtures("worker")

WEEK = timedelta(days=7)
# The rows of each table that belong to the runs :ids.
OWNED = {
    "runs": "SELECT count(*) FROM runs WHERE id = ANY(:ids)",
    "run_events": "SELECT count(*) FROM run_events WHERE run_id = ANY(:ids)",
    "run_attempts": "SELECT count(*) FROM run_attempts WHERE run_id = ANY(:ids)",
    "run_steps": "SELECT count(*) FROM run_steps WHERE run_id = ANY(:ids)",
    "waitpoints": "SELECT count(*) FROM waitpoints WHERE run_id = ANY(:ids)",
    "deliveries": "SELECT count(*) FROM deliveries WHERE run_id = ANY(:ids)",
    "delivery_attempts": "SELECT count(*) FROM delivery_attempts a JOIN deliveries d "
                         "ON d.id = a.delivery_id WHERE d.run_id = ANY(:ids)",
}


def owned(runtime: Runtime, *run_ids: str) -> dict[str, int]:
    with runtime.db.transaction() as session:
        return {table: int(session.scalar(text(query), {"ids": list(run_ids)}) or 0)
                for table, query in OWNED.items()}


def age(runtime: Runtime, *run_ids: str, days: float = 10, discarded: bool = False) -> None:
    """Move the runs' times (and their keys') ``days`` back, as if that long had passed."""
    back = timedelta(days=days)
    with runtime.db.transaction() as session:
        session.execute(text(
            "UPDATE runs SET created_at = created_at - :back, finished_at = finished_at - :back,"
            " discarded_at = CASE WHEN :discarded THEN now() - :back END WHERE id = ANY(:ids)"),
            {"back": back, "ids": list(run_ids), "discarded": discarded})
        session.execute(text(
            "UPDATE idempotency_keys SET created_at = created_at - :back, "
            "expires_at = expires_at - :back WHERE run_id = ANY(:ids)"),
            {"back": back, "ids": list(run_ids)})


def purge(runtime: Runtime, older_than: timedelta = WEEK) -> dict[str, int]:
    return retention.purge(runtime.db, older_than=older_than, max_batches=1000)


def delivered(runtime: Runtime, run_id: str) -> None:
    def done() -> bool:
        with runtime.db.transaction() as session:
            statuses = session.scalars(select(Delivery.status).where(Delivery.run_id == run_id))
            return list(statuses) == ["delivered"]

    wait_for(done, timeout=30, what=f"run {run_id}'s webhook to be delivered")


def finished(api: ApiClient, agent: str, input: Any = None, **fields: Any) -> dict[str, Any]:
    return api.wait(api.submit(agent, input, **fields)["id"])


def hooked(api: ApiClient, receiver: Receiver, path: str) -> dict[str, Any]:
    """A run that ended and whose webhook (to the run's own URL) was sent."""
    assert api.post("/v1/webhook-secret").status_code in {201, 409}
    return finished(api, "echo", webhook_url=receiver.url + path)


def test_old_ended_runs_go_with_all_their_rows(api: ApiClient, runtime: Runtime,
                                               receiver: Receiver) -> None:
    # Given old runs that ended each way, with events, attempts, steps, a waitpoint and a
    # delivered webhook among them, and a young run
    sent = hooked(api, receiver, "/done")
    stepped = finished(api, "test.durable")
    failed = finished(api, "test.fail")
    waited = api.submit("test.wait", {})
    api.wait(waited["id"], statuses={"waiting"})
    answer = api.post(f"/v1/runs/{waited['id']}/waitpoints/answer", json={"data": {}})
    assert answer.status_code == 202, answer.get_json()
    waited = api.wait(waited["id"])
    cancelled = api.submit("test.parked")
    assert api.post(f"/v1/runs/{cancelled['id']}/cancel").status_code == 202
    young = finished(api, "echo")
    delivered(runtime, sent["id"])
    old = [run["id"] for run in (sent, stepped, failed, waited, cancelled)]
    assert [api.run(run_id)["status"] for run_id in old] == [
        "succeeded", "succeeded", "failed", "succeeded", "cancelled"]
    before = owned(runtime, *old)
    assert all(before.values()), before  # a row of each kind to delete
    age(runtime, *old)

    # When retention purges what ended more than a week ago
    counts = purge(runtime)

    # Then the old runs are gone with every row of theirs, counted; the young one stays
    assert owned(runtime, *old) == dict.fromkeys(OWNED, 0)
    assert all(counts[table] >= rows for table, rows in before.items()), (counts, before)
    assert api.get(f"/v1/runs/{sent['id']}").status_code == 404
    assert api.get(f"/v1/runs/{sent['id']}/events").status_code == 404
    assert api.run(young["id"])["status"] == "succeeded"
    assert owned(runtime, young["id"])["run_events"] > 0


def test_dead_letters_waiting_and_young_runs_stay(api: ApiClient, runtime: Runtime) -> None:
    # Given an old dead letter, an old run still waiting, and a run that ended yesterday
    dead = finished(api, "flaky", {"failures": 9}, max_attempts=1)
    assert dead["status"] == "dead_lettered"
    waiting = api.submit("test.wait", {})
    api.wait(waiting["id"], statuses={"waiting"})
    yesterday = finished(api, "echo")
    age(runtime, dead["id"], waiting["id"])
    age(runtime, yesterday["id"], days=1)
    kept = owned(runtime, dead["id"], waiting["id"], yesterday["id"])

    # When retention purges
    purge(runtime)

    # Then all three stay, with all their rows
    assert owned(runtime, dead["id"], waiting["id"], yesterday["id"]) == kept
    assert api.run(waiting["id"])["status"] == "waiting"
    assert api.get(f"/v1/runs/{waiting['id']}/waitpoints").get_json()["items"]

    # And once the dead letter has been dismissed (over a week ago), it goes too
    age(runtime, dead["id"], days=0, discarded=True)
    purge(runtime)
    assert owned(runtime, dead["id"])["runs"] == 1  # dismissed just now: kept a while
    age(runtime, dead["id"], days=8, discarded=True)
    purge(runtime)
    assert owned(runtime, dead["id"]) == dict.fromkeys(OWNED, 0)


def test_a_run_whose_webhook_is_not_yet_delivered_stays_until_it_is(
        api: ApiClient, runtime: Runtime, receiver: Receiver) -> None:
    # Given an old run whose delivery is still retrying (its receiver was down)
    run = hooked(api, receiver, "/later")
    delivered(runtime, run["id"])
    age(runtime, run["id"])
    with runtime.db.transaction() as session:
        session.execute(text("UPDATE deliveries SET status = 'retrying', "
                             "next_attempt_at = now() + interval '1 day' WHERE run_id = :id"),
                        {"id": run["id"]})

    # When retention purges, the run stays with its delivery
    purge(runtime)
    assert owned(runtime, run["id"])["deliveries"] == 1

    # Then once the delivery has ended (here: dead, its retries spent), the run goes
    with runtime.db.transaction() as session:
        session.execute(text("UPDATE deliveries SET status = 'dead', next_attempt_at = NULL "
                             "WHERE run_id = :id"), {"id": run["id"]})
    purge(runtime)
    assert owned(runtime, run["id"]) == dict.fromkeys(OWNED, 0)


def adopt(runtime: Runtime, child: str, *, parent: str, root: str) -> None:
    """Make ``child`` a child run of ``parent`` in ``root``'s tree."""
    with runtime.db.transaction() as session:
        session.execute(text("UPDATE runs SET parent_id = :parent, root_id = :root, "
                             "child_name = :child WHERE id = :child"),
                        {"parent": parent, "root": root, "child": child})


def test_a_child_run_stays_while_its_parent_or_root_does(api: ApiClient,
                                                         runtime: Runtime) -> None:
    # Given old ended children: one of a waiting parent, one (a grandchild) of an old
    # ended parent under a dead letter not dismissed, and a whole tree that ended long ago
    waiting = api.submit("test.wait", {})
    api.wait(waiting["id"], statuses={"waiting"})
    dead = finished(api, "flaky", {"failures": 9}, max_attempts=1)
    held, parent, grandchild, root, leaf = (finished(api, "echo")["id"] for _ in range(5))
    adopt(runtime, held, parent=waiting["id"], root=waiting["id"])
    adopt(runtime, parent, parent=dead["id"], root=dead["id"])
    adopt(runtime, grandchild, parent=parent, root=dead["id"])
    adopt(runtime, leaf, parent=root, root=root)
    age(runtime, held, parent, grandchild, root, leaf, dead["id"], waiting["id"])

    # When retention counts, then purges
    would = retention.purge(runtime.db, older_than=WEEK, max_batches=1000, dry_run=True)
    counts = purge(runtime)

    # Then the children of runs that stay are kept, and the old tree goes whole
    assert owned(runtime, held, parent, grandchild)["runs"] == 3
    assert owned(runtime, root, leaf)["runs"] == 0
    assert counts["runs"] == would["runs"] >= 2


def test_a_run_batch_goes_after_its_runs(api: ApiClient, runtime: Runtime) -> None:
    # Given two old batches that completed: one of echoes, one with a dead letter
    items = {"echo": [{"agent": "echo"}] * 2,
             "dead": [{"agent": "echo"}, {"agent": "flaky", "input": {"failures": 9},
                                          "max_attempts": 1}]}
    made = {name: api.post("/v1/runs/batch", json={"items": batch}).get_json()
            for name, batch in items.items()}
    for batch in made.values():
        wait_for(lambda b=batch: api.get(f"/v1/batches/{b['id']}").get_json()["completed_at"],
                 timeout=30, what="the batch to complete")
        age(runtime, *(run["id"] for run in batch["runs"]))
    with runtime.db.transaction() as session:
        session.execute(text("UPDATE batches SET completed_at = completed_at - interval "
                             "'10 days' WHERE id = ANY(:ids)"),
                        {"ids": [batch["id"] for batch in made.values()]})
    # When retention purges, the echoes' batch goes with its runs; the other stays
    assert purge(runtime)["batches"] >= 1
    assert api.get(f"/v1/batches/{made['echo']['id']}").status_code == 404
    kept = api.get(f"/v1/batches/{made['dead']['id']}").get_json()
    assert kept["counts"] == {"dead_lettered": 1}


def test_a_sweep_deletes_a_bounded_number_of_batches(api: ApiClient,
                                                     runtime: Runtime) -> None:
    ids = [finished(api, "echo")["id"] for _ in range(5)]
    age(runtime, *ids)
    counts = retention.purge(runtime.db, older_than=WEEK, batch=2, max_batches=2)
    assert counts["runs"] == 4 and owned(runtime, *ids)["runs"] == 1
    assert purge(runtime)["runs"] >= 1 and owned(runtime, *ids)["runs"] == 0


def test_the_sweeper_purges_what_ended_before_agentq_retention_days(
        api: ApiClient, runtime: Runtime) -> None:
    # Given a run that ended 31 days ago (the tests' worker keeps the default, 30 days)
    # and one that ended 29 days ago
    gone, kept = finished(api, "echo")["id"], finished(api, "echo")["id"]
    age(runtime, gone, days=31)
    age(runtime, kept, days=29)
    # Then the sweeper deletes the first on its own, and keeps the second
    wait_for(lambda: owned(runtime, gone)["runs"] == 0, timeout=30,
             what="the sweeper to delete the old run")
    assert owned(runtime, kept)["runs"] == 1
    age(runtime, kept, days=-29)  # young again: other tests' purges leave it alone


def agentq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentq"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_dry_run_counts_and_the_real_run_deletes(api: ApiClient, runtime: Runtime,
                                                     env: dict[str, str]) -> None:
    # Given two old runs
    ids = [finished(api, "test.emit", {"count": 3})["id"] for _ in range(2)]
    age(runtime, *ids)
    mine = owned(runtime, *ids)

    # When an operator asks what would go, nothing goes
    dry = agentq("runs", "purge", "--older-than", "7d", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)
    assert "dry run: nothing deleted" in dry.stderr
    assert all(would[table] >= rows for table, rows in mine.items()), (would, mine)
    assert owned(runtime, *ids) == mine

    # Then the real run deletes what the dry run counted, and prints a table of counts
    done = agentq("runs", "purge", "--older-than", "7d", env=env)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split() for line in done.stdout.splitlines()[1:])
    assert {table: int(rows.replace(",", "")) for table, rows in lines.items()} == would
    assert owned(runtime, *ids) == dict.fromkeys(OWNED, 0)


def test_cli_refuses_a_bad_duration_and_keeps_runs_within_the_idempotency_ttl(
        api: ApiClient, runtime: Runtime, env: dict[str, str]) -> None:
    bad = agentq("runs", "purge", "--older-than", "7x", env=env)
    assert bad.returncode == 2
    assert "'7x' is not a duration such as 7d, 12h, 30m or 90s" in bad.stderr
    # A run that ended two hours ago, its Idempotency-Key still live: --older-than 1h
    # keeps it, so that a repeat still answers with it
    first = api.post("/v1/runs", json={"agent": "echo", "input": {}},
                     headers={"Idempotency-Key": "ret-live"}).get_json()
    api.wait(first["id"])
    age(runtime, first["id"], days=2 / 24)
    done = agentq("runs", "purge", "--older-than", "1h", env=env)
    assert done.returncode == 0, done.stderr
    assert "keeping runs that ended within AGENTQ_IDEMPOTENCY_TTL_S (1 day, 0:00:00)" \
        in done.stderr
    again = api.post("/v1/runs", json={"agent": "echo", "input": {}},
                     headers={"Idempotency-Key": "ret-live"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first["id"]


def test_what_pointed_at_a_purged_run_goes_on_working(api: ApiClient,
                                                      runtime: Runtime) -> None:
    # Given a session's run and a run made with an Idempotency-Key, both long ended
    chat = finished(api, "test.chat", {"message": "hello"}, session_id="ret-chat")
    keyed = api.post("/v1/runs", json={"agent": "echo", "input": {}},
                     headers={"Idempotency-Key": "ret-old"}).get_json()
    api.wait(keyed["id"])
    age(runtime, chat["id"], keyed["id"])

    # When retention purges them
    purge(runtime)

    # Then the session keeps its state, lists no runs, and a new run in it goes on from it
    session = api.get("/v1/sessions/ret-chat").get_json()
    assert session["runs"] == [] and session["state"] == {"history": ["hello"]}
    assert finished(api, "test.chat", {"message": "again"},
                    session_id="ret-chat")["result"]["history"] == ["hello", "again"]
    # And the key (expired with its run) makes a new run rather than naming a missing one
    again = api.post("/v1/runs", json={"agent": "echo", "input": {}},
                     headers={"Idempotency-Key": "ret-old"})
    assert again.status_code == 202, again.get_json()
    assert again.get_json()["id"] != keyed["id"] and "Idempotent-Replayed" not in again.headers


def test_an_inbound_event_outlives_its_run_and_then_goes(
        api: ApiClient, runtime: Runtime, api_server: ApiServer) -> None:
    # Given a GitHub delivery that started a run, long ended
    hook = source(api, "github", GITHUB_SECRET, agent="echo")
    body = b'{"action": "opened"}'
    headers = github(GITHUB_SECRET, body, delivery="ret-d1")
    with httpx.Client(base_url=api_server.url, timeout=15) as hooks:
        first = hooks.post(hook["url"], content=body, headers=headers)
        assert first.status_code == 200, first.text
        run_id = first.json()["run_id"]
        api.wait(run_id)
        age(runtime, run_id)

        # When retention purges the run, its inbound record stays (received just now)
        purge(runtime)
        assert owned(runtime, run_id)["runs"] == 0
        # Then a redelivery is still a duplicate, with no run to show
        again = hooks.post(hook["url"], content=body, headers=headers)
        assert again.status_code == 200 and again.json()["duplicate"] is True, again.text

    # And once the record is older than the cutoff, it goes too
    with runtime.db.transaction() as session:
        session.execute(text("UPDATE inbound_events SET received_at = now() - interval "
                             "'10 days' WHERE source_id = :id"), {"id": hook["id"]})
    assert purge(runtime)["inbound_events"] >= 1
    with runtime.db.transaction() as session:
        assert session.scalars(select(InboundEvent).where(
            InboundEvent.source_id == hook["id"])).all() == []


def test_a_batch_reads_its_runs_not_the_table(runtime: Runtime, tenant: Tenant) -> None:
    # Given 20,000 runs that ended yesterday (children of one run) and 1,000 that ended
    # 40 days ago
    with runtime.db.transaction() as session:
        session.execute(text("""
            INSERT INTO runs (id, tenant_id, agent, status, input, attempt, max_attempts,
                              timeout_s, metadata, queue, priority, lease_epoch, last_seq,
                              created_at, finished_at, parent_id, root_id)
            SELECT 'run_ret_' || n, :tenant, 'echo', 'succeeded', '{}', 1, 1, 60, '{}',
                   'runs.normal', 'normal', 1, 3, now() - interval '41 days',
                   now() - CASE WHEN n > 20000 THEN interval '40 days' ELSE interval '1 day'
                   END, CASE WHEN n BETWEEN 2 AND 20000 THEN 'run_ret_1' END,
                   CASE WHEN n BETWEEN 2 AND 20000 THEN 'run_ret_1' END
            FROM generate_series(1, 21000) AS n"""), {"tenant": tenant.id})
        session.execute(text("ANALYZE runs"))
    try:
        # When a sweep deletes a batch (rolled back), then its reads are explained
        selects = statements_of_a_batch(runtime)
        with pytest.raises(RolledBack), runtime.db.transaction() as session:
            plans = [session.connection().exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params).scalar_one()[0]
                for statement, params in selects]
            raise RolledBack
    finally:  # other tests share the database
        with runtime.db.transaction() as session:
            session.execute(text("DELETE FROM runs WHERE tenant_id = :tenant"),
                            {"tenant": tenant.id})
    # Then the batch read the old runs (by an index on finished_at) and their parents and
    # roots by id: not the 20,000 that ended yesterday, nor the table once per parent
    [chosen] = plans
    assert chosen["Plan"]["Actual Rows"] == retention.BATCH
    assert "Seq Scan" not in json.dumps(chosen), json.dumps(chosen, indent=1)
    assert _rows_read(chosen["Plan"]) < 5_000, plans


class RolledBack(Exception):
    """Ends a transaction a test wants undone."""


def statements_of_a_batch(runtime: Runtime) -> list[tuple[str, Any]]:
    """The SELECTs one batch of ended runs makes (its deletes rolled back)."""
    seen: list[tuple[str, Any]] = []
    with pytest.raises(RolledBack), runtime.db.transaction() as session:
        event.listen(session.connection(), "before_cursor_execute",
                     lambda conn, cursor, statement, params, context, many:
                     seen.append((statement, params)))
        retention._take_runs(session, kind=retention.KINDS[0], older_than=WEEK,
                             batch=retention.BATCH, cursor=retention.Cursor(),
                             counts=dict.fromkeys(retention.TABLES, 0), dry_run=False)
        raise RolledBack
    return [(statement, params) for statement, params in seen
            if statement.lstrip().startswith("SELECT")]


def test_deleting_a_run_finds_its_inbound_events_by_index(runtime: Runtime) -> None:
    # Postgres's ON DELETE SET NULL runs this for each deleted run; a generic plan, as a
    # prepared statement's
    with runtime.db.transaction() as session:
        session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        session.execute(text("PREPARE nulled(text) AS UPDATE ONLY inbound_events "
                             "SET run_id = NULL WHERE $1 = run_id"))
        plan = session.execute(text("EXPLAIN EXECUTE nulled('run_x')")).scalars().all()
        session.execute(text("DEALLOCATE nulled"))
    assert any("ix_inbound_events_run_id" in line for line in plan), plan

