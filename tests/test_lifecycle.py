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
