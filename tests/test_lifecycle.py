"""The run lifecycle in Postgres: one claim wins, stale attempts are fenced, seq has no gaps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from tests.conftest import Tenant
from worker.base.errors import LeaseLost
from worker.base.models import AttemptOutcome, Run, RunEvent, RunStatus
from worker.base.runtime import Runtime
from worker.runs import attempts, events, store


def make_run(runtime: Runtime, tenant: Tenant, agent: str = "echo") -> str:
    new = store.NewRun(agent=agent, input={}, timeout_s=30, max_attempts=3, queue="runs.normal")
    with runtime.db.transaction() as session:
        return store.create(session, tenant_id=tenant.id, new=new).id


def claim(runtime: Runtime, run_id: str, worker: str) -> attempts.Claim | None:
    with runtime.db.transaction() as session:
        return attempts.claim(session, run_id=run_id, worker=worker)


def test_only_one_of_many_concurrent_claims_wins(runtime: Runtime, tenant: Tenant) -> None:
    run_id = make_run(runtime, tenant)
    with ThreadPoolExecutor(8) as pool:
        claims = list(pool.map(lambda i: claim(runtime, run_id, f"w{i}"), range(8)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 1 and winners[0].epoch == 1


def test_a_stale_epochs_write_is_refused(runtime: Runtime, tenant: Tenant) -> None:
    # Given an attempt whose lease was taken over by a newer attempt
    run_id = make_run(runtime, tenant)
    old = claim(runtime, run_id, "zombie")
    assert old is not None
    with runtime.db.transaction() as session:
        session.execute(Run.__table__.update().where(Run.id == run_id)
                        .values(status=RunStatus.QUEUED))
    new = claim(runtime, run_id, "fresh")
    assert new is not None and new.epoch == old.epoch + 1
    # When the old attempt writes its outcome or emits, it is refused
    done = attempts.Outcome(RunStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED,
                            result={"from": "zombie"})
    with pytest.raises(LeaseLost), runtime.db.transaction() as session:
        attempts.finish(session, claim=old, outcome=done)
    with pytest.raises(LeaseLost), runtime.db.transaction() as session:
        events.append(session, run_id=run_id, epoch=old.epoch, type="progress", data={})
    # And the current attempt's write is applied
    with runtime.db.transaction() as session:
        attempts.finish(session, claim=new, outcome=attempts.Outcome(
            RunStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, result={"from": "fresh"}))
        stored = session.scalar(select(Run).where(Run.id == run_id))
        assert stored is not None and stored.result == {"from": "fresh"}


def test_concurrent_emits_get_gap_free_sequence_numbers(runtime: Runtime, tenant: Tenant) -> None:
    run_id = make_run(runtime, tenant)
    held = claim(runtime, run_id, "w")
    assert held is not None

    def emit(i: int) -> int:
        with runtime.db.transaction() as session:
            return events.append(session, run_id=run_id, epoch=held.epoch, type="progress",
                                 data={"i": i}).seq

    with ThreadPoolExecutor(8) as pool:
        seqs = sorted(pool.map(emit, range(40)))
    # seq 1 is "queued", 2 is "running"; the 40 emits take 3..42 with none skipped
    assert seqs == list(range(3, 43))
    with runtime.db.transaction() as session:
        stored = session.scalars(select(RunEvent.seq).where(RunEvent.run_id == run_id)
                                 .order_by(RunEvent.seq)).all()
    assert list(stored) == list(range(1, 43))


def test_a_finished_run_cannot_be_claimed_again(runtime: Runtime, tenant: Tenant) -> None:
    run_id = make_run(runtime, tenant)
    held = claim(runtime, run_id, "w")
    assert held is not None
    with runtime.db.transaction() as session:
        attempts.finish(session, claim=held, outcome=attempts.Outcome(
            RunStatus.SUCCEEDED, AttemptOutcome.SUCCEEDED, result=1))
    assert claim(runtime, run_id, "again") is None


def test_many_claims_in_one_statement_each_win_once_and_keep_a_sessions_order(
        runtime: Runtime, tenant: Tenant) -> None:
    loose = [make_run(runtime, tenant) for _ in range(3)]
    new = store.NewRun(agent="echo", input={}, timeout_s=30, max_attempts=3,
                       queue="runs.normal", session_id="ses_claim_many")
    with runtime.db.transaction() as session:
        first, second = (store.create(session, tenant_id=tenant.id, new=new).id
                         for _ in range(2))
    ids = [*loose, second, first, loose[0]]  # a later run of a session, a duplicate
    with ThreadPoolExecutor(4) as pool:  # four workers claiming the same runs at once
        batches = list(pool.map(lambda i: _claim_many(runtime, ids, f"w{i}"), range(4)))
    won = [run_id for batch in batches for run_id in batch]
    assert sorted(won) == sorted([*loose, first])  # each once; the session's second waits
    for batch in batches:
        for run_id, held in batch.items():
            assert held.run_id == run_id and held.attempt == 1 and held.epoch == 1
    with runtime.db.autocommit() as session:
        seqs = session.scalars(select(RunEvent.seq).where(RunEvent.run_id == first)
                               .order_by(RunEvent.seq)).all()
    assert seqs == [1, 2]  # queued, then running: one status event for the one claim


def _claim_many(runtime: Runtime, run_ids: list[str], worker: str) -> dict[str, attempts.Claim]:
    with runtime.db.autocommit() as session:
        return attempts.claim_many(session, run_ids=run_ids, worker=worker)
