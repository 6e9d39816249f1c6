"""Batches: up to ``MAX_ITEMS`` runs submitted in one request and stored in one transaction.

Each item is planned as ``POST /v1/runs`` plans a run (``submission.plan``), and one
invalid item refuses the whole batch before anything is stored. Then, in one transaction:
the items' idempotency keys are taken (an item whose key was seen before is answered with
the run that key made, which is not stored again; the keys are those of ``POST /v1/runs``'s
``Idempotency-Key``, hashed), the tenant's caps are taken once for all the new runs (a
batch that does not fit is refused whole), and the batch's row and its runs with their
first events are stored, a statement each. After the commit the runs that may start are
published (by ``dispatch.Publisher``, while the request is answered). A batch is the runs it
made; ``batch_end`` completes it when the last one ends. A request whose every item was
answered by an earlier batch's runs, all of them, is a repeat: it answers with that batch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from worker.base import tracing
from worker.base.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from worker.base.models import Batch, Run, new_id
from worker.base.runtime import Runtime
from worker.runs import (
    admission,
    batch_end,
    delays,
    dispatch,
    idempotency,
    outbox,
    readiness,
    sessions,
    store,
    submission,
)

MAX_ITEMS = 1000


@dataclass(frozen=True)
class Item:
    """An item planned: its run, and its idempotency key with what it was sent with."""

    new: store.NewRun
    key: str | None = None
    fingerprint: str | None = None  # as ``Idempotency-Key`` on POST /v1/runs takes it


@dataclass(frozen=True)
class Submitted:
    """A batch stored (or found again): its runs in the items' order."""

    batch: Batch
    runs: list[Run]
    replayed: list[int]  # the items answered by an earlier run (their key)
    created: list[Run] = dataclasses.field(default_factory=list)
    ready: frozenset[str] = frozenset()  # of those created, the runs that may start now
    repeat: bool = False  # the request was this batch's, again

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(run.status for run in self.runs if run.batch_id == self.batch.id))


def plan(rt: Runtime, request: submission.RunRequest, *, index: int) -> store.NewRun:
    """Plan item ``index`` as ``POST /v1/runs`` plans a run; raise InvalidRequest naming
    the item's fields (``items[3].input``), also for what a batch cannot take."""
    try:
        new = submission.plan(rt, request)
    except InvalidRequest as error:
        raise _of_item(error, index) from None
    if new.session_id is not None and new.multitask != "enqueue":
        raise InvalidRequest("a batch's runs of a session wait their turn", [{
            "field": f"items[{index}].multitask", "message": f"{new.multitask} is for "
            "POST /v1/runs; in a batch, runs of a session are enqueued"}])
    if new.concurrency_key is not None and new.concurrency_strategy != "queue":
        raise InvalidRequest("a batch's runs wait for their concurrency key", [{
            "field": f"items[{index}].concurrency_key", "message": f"the agent's limit "
            f"strategy {new.concurrency_strategy} is for POST /v1/runs; in a batch, runs "
            "with a key are queued"}])
    return new


def _of_item(error: InvalidRequest, index: int) -> InvalidRequest:
    problems = [{**problem, "field": f"items[{index}].{problem['field']}"}
                for problem in error.errors] or [{"field": f"items[{index}]",
                                                  "message": error.detail}]
    return InvalidRequest(error.detail, problems)


def submit(rt: Runtime, *, tenant_id: str, items: list[Item]) -> Submitted:
    """Store the batch in one transaction (answering keyed items seen before with their
    runs) and publish its runs that may start."""
    _refuse_repeated_keys(items)
    with tracing.span("agentq.batch", attributes={"agentq.items": len(items),
                                                  "agentq.tenant": tenant_id}) as span:
        submitted = _submit(rt, tenant_id=tenant_id, items=items)
        span.set_attribute("agentq.batch_id", submitted.batch.id)
    return submitted


def _submit(rt: Runtime, *, tenant_id: str, items: list[Item]) -> Submitted:
    caps, traceparent = admission.Caps.of(rt.settings), tracing.traceparent()

    def in_transaction() -> Submitted:
        with rt.db.transaction() as session:
            return _store(rt, session, tenant_id=tenant_id, items=items, caps=caps,
                          traceparent=traceparent)

    try:
        submitted = admission.admitted(rt.db, tenant_id=tenant_id, caps=caps,
                                       store=in_transaction)
    except admission.Full as full:
        raise LimitExceeded(_over(caps), retry_after_s=full.retry_after_s) from None
    _launch(rt, submitted)
    return submitted


def _over(caps: admission.Caps) -> str:
    named = [f"{cap} {what}" for cap, what in (
        (caps.waiting, "runs waiting (AGENTQ_TENANT_MAX_QUEUED)"),
        (caps.active, "running or waiting (AGENTQ_TENANT_MAX_RUNNING, reject mode)")) if cap]
    return (f"the batch's runs would take the tenant over its cap of {' or '.join(named)}; "
            "none was created: send fewer, or when some have started")


def _refuse_repeated_keys(items: list[Item]) -> None:
    first: dict[str, int] = {}
    problems = []
    for index, item in enumerate(items):
        if item.key is not None and first.setdefault(item.key, index) != index:
            problems.append({"field": f"items[{index}].idempotency_key",
                             "message": f"item {first[item.key]} has this key too; each "
                                        "item's key must be its own"})
    if problems:
        raise InvalidRequest("two items have one idempotency_key", problems)


def _store(rt: Runtime, session: Session, *, tenant_id: str, items: list[Item],
           caps: admission.Caps, traceparent: str | None) -> Submitted:
    ids = sorted(new_id("run") for _ in items)  # in the items' order: a session's runs too
    found = _take_keys(rt, session, tenant_id=tenant_id, items=items, ids=ids)
    earlier = _earlier_runs(session, tenant_id=tenant_id, found=found)
    fresh = [index for index in range(len(items)) if index not in found]
    if not fresh:
        repeated = _repeated(session, tenant_id=tenant_id, runs=list(earlier.values()))
        if repeated is not None:
            return Submitted(repeated, [earlier[i] for i in range(len(items))],
                             sorted(found), repeat=True)
    admission.take_many(session, tenant_id=tenant_id, caps=caps, count=len(fresh))
    news = [items[index].new for index in fresh]
    if any(new.webhook_url for new in news):
        outbox.require_default_secret(session, tenant_id=tenant_id)
    for session_id in sorted({new.session_id for new in news if new.session_id}):
        sessions.ensure(session, tenant_id=tenant_id, session_id=session_id)
    batch = session.scalars(insert(Batch).values(
        id=new_id("bat"), tenant_id=tenant_id, size=len(fresh), going=len(fresh),
        completed_at=None if fresh else func.now()).returning(Batch)).one()
    created = store.create_many(
        session, tenant_id=tenant_id, ids=[ids[index] for index in fresh],
        news=[dataclasses.replace(new, batch_id=batch.id, traceparent=traceparent)
              for new in news]) if fresh else []
    made = dict(zip(fresh, created, strict=True))
    runs = [made.get(index) or earlier[index] for index in range(len(items))]
    ready = readiness.may_start_now(session, runs=created,
                                   running_cap=rt.settings.tenant_max_running)
    return Submitted(batch, runs, sorted(found), created, ready)


# An item's key: taken with the run it is to make (a repeat of it finds the run), or, if
# it was taken before, left as it is. In key order, so that two batches sharing keys wait
# for each other rather than deadlock. As ``idempotency.begin`` does, an expired key is
# deleted first.
_EXPIRED = text("""
    DELETE FROM idempotency_keys
    WHERE tenant_id = :tenant_id AND key = ANY(:keys) AND expires_at < now()
""")
_TAKE = text("""
    INSERT INTO idempotency_keys (tenant_id, key, fingerprint, status_code, run_id,
                                  expires_at)
    SELECT :tenant_id, given.key, given.fingerprint, 202, given.run_id,
           now() + make_interval(secs => :ttl_s)
    FROM unnest(CAST(:keys AS text[]), CAST(:fingerprints AS text[]),
                CAST(:run_ids AS text[])) AS given(key, fingerprint, run_id)
    ORDER BY given.key
    ON CONFLICT (tenant_id, key) DO NOTHING
    RETURNING key
""")
_TAKEN = text("""
    SELECT key, fingerprint, status_code, run_id FROM idempotency_keys
    WHERE tenant_id = :tenant_id AND key = ANY(:keys)
""")


def _take_keys(rt: Runtime, session: Session, *, tenant_id: str, items: list[Item],
               ids: list[str]) -> dict[int, str]:
    """Take the items' keys for the runs ``ids`` names; return the items whose key was
    taken before, with the run it made."""
    keyed = {idempotency.hashed(item.key): index for index, item in enumerate(items)
             if item.key is not None}
    if not keyed:
        return {}
    keys = list(keyed)
    session.execute(_EXPIRED, {"tenant_id": tenant_id, "keys": keys})
    taken = set(session.scalars(_TAKE, {
        "tenant_id": tenant_id, "keys": keys, "ttl_s": rt.settings.idempotency_ttl_s,
        "fingerprints": [items[keyed[key]].fingerprint for key in keys],
        "run_ids": [ids[keyed[key]] for key in keys]}))
    before = [key for key in keys if key not in taken]
    if not before:
        return {}
    found, problems = {}, []
    for row in session.execute(_TAKEN, {"tenant_id": tenant_id, "keys": before}):
        index = keyed[row.key]
        if row.fingerprint != items[index].fingerprint or (
                row.status_code is not None and row.run_id is None):
            problems.append({"field": f"items[{index}].idempotency_key",
                             "message": "this key was used with a different request; send "
                                        "a new key for a new run"})
        elif row.status_code is None:
            raise Conflict(f"item {index}: a request with its idempotency_key is still in "
                           "progress; repeat the batch in a moment")
        else:
            found[index] = row.run_id
    if problems:
        raise InvalidRequest("idempotency keys used with different requests", problems)
    if len(found) < len(before):  # expired and deleted meanwhile: nothing to answer with
        raise Conflict("an item's idempotency_key expired as the batch came in; repeat it")
    return found


def _earlier_runs(session: Session, *, tenant_id: str, found: dict[int, str]) -> dict[int, Run]:
    if not found:
        return {}
    runs = {run.id: run for run in session.scalars(select(Run).where(
        Run.tenant_id == tenant_id, Run.id.in_(set(found.values()))))}
    missing = sorted(index for index, run_id in found.items() if run_id not in runs)
    if missing:
        raise Conflict(f"item {missing[0]}: the run its idempotency_key made is gone "
                       f"(run {found[missing[0]]}); send a new key")
    return {index: runs[run_id] for index, run_id in found.items()}


def _repeated(session: Session, *, tenant_id: str, runs: list[Run]) -> Batch | None:
    """The newest batch whose runs are all among ``runs``: the one these items made."""
    among = Counter(run.batch_id for run in runs if run.batch_id is not None)
    batches = session.scalars(select(Batch).where(Batch.tenant_id == tenant_id,
                                                  Batch.id.in_(list(among)))
                              .order_by(Batch.id.desc()))
    return next((batch for batch in batches if batch.size == among[batch.id]), None)


def _launch(rt: Runtime, submitted: Submitted) -> None:
    """After commit: have the new runs that may start published (a delayed one as it is
    due)."""
    jobs = []
    for run in submitted.created:
        rt.metrics.inc("agentq_runs_submitted", agent=run.agent)
        job = delays.dispatch_of(run) if run.id in submitted.ready else None
        if job is not None:
            jobs.append(job)
    if jobs:
        dispatch.Publisher.of(rt).publish(jobs)


def standing(session: Session, *, tenant_id: str, batch_id: str) -> tuple[Batch, dict[str, int]]:
    """The tenant's batch and its runs counted by status; NotFound for another's."""
    batch = session.scalar(select(Batch).where(Batch.id == batch_id,
                                               Batch.tenant_id == tenant_id))
    if batch is None:
        raise NotFound("batch", batch_id)
    return batch, batch_end.counts(session, batch_id=batch.id)
