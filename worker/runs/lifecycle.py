"""What a run's change of status sets going, in the transaction that makes it and after.

Every transition that ends a run (``attempts.finish``, ``store.cancel``, the sweeper's and a
stopping worker's ``attempts`` recoveries) calls ``ended``, which writes the run's webhook
deliveries in the same transaction (the outbox: ``outbox.enqueue``); every transition that
frees a run's place (ended, or retrying later) calls ``freed``, so that the runs it held
back (later runs of its session, its tenant's runs over a running cap) are picked before
the commit (``before_commit``). After the commit, ``after_commit`` announces the events the
transaction recorded on the bus, counts the ends in the metrics, and publishes the picked
runs and the deliveries. ``worker.app`` wires the two hooks into the database's commit.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import false, or_, select, text, true
from sqlalchemy.orm import Session, aliased

from worker.base.event import Event
from worker.base.models import Run, RunStatus
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.runs import batch_end, dispatch, events, outbox, tree
from worker.runs.readiness import session_free, under_concurrency_limit, under_running_cap

_DELIVERIES = "agentq.deliveries"  # ids of the deliveries made
_TENANTS = "agentq.tenants"  # run id -> tenant, for the tenant channels' terminal events
_ENDED = "agentq.ended"  # (agent, status, seconds it ran) for the metrics
_FREED = "agentq.freed"  # runs whose place freed up: run id -> it had a session
_SUCCESSORS = "agentq.successors"  # runs picked to start now
_KEYS = "agentq.keys"  # (tenant, concurrency key) of the runs whose place freed up
_WOKEN = "agentq.woken"  # parents queued again by a child's end
_UNREPORTED = "agentq.unreported"  # parents of children that ended, not yet told
CANCELLED_PARENTS = "agentq.cancelled_parents"  # (tenant, run): their children to cancel
log = logging.getLogger(__name__)

_MAX_PICKED = 10  # a key's runs published when one ends, at most (their claims decide)
# The keys' locks, in the order claims take them (``attempts.claim_keyed``).
_LOCK_KEYS = text("""
    SELECT pg_advisory_xact_lock(key_lock) FROM (
        SELECT DISTINCT hashtext(tenant || '/' || key) AS key_lock
        FROM unnest(CAST(:tenants AS text[]), CAST(:keys AS text[])) AS freed(tenant, key)
        ORDER BY key_lock) AS locks
""")


def ended(session: Session, *, run: Run, event: Event,
          endpoints: list[list[str]] | None = None) -> None:
    """``run`` ends in this transaction with ``event``: make its deliveries (to
    ``endpoints`` if the caller read them already), and free its place. The caller has
    updated or locked the run's row already (``tree.child_ended`` relies on it)."""
    info = session.info
    info.setdefault(_DELIVERIES, []).extend(
        outbox.enqueue(session, run=run, event=event, endpoints=endpoints))
    info.setdefault(_TENANTS, {})[run.id] = run.tenant_id
    info.setdefault(_ENDED, []).append(_ending(run))
    if run.batch_id is not None:  # the batch's last run to end completes it
        info[_DELIVERIES].extend(batch_end.run_ended(session, run=run))
    if run.status == RunStatus.CANCELLED and run.children:  # its children, once committed
        info.setdefault(CANCELLED_PARENTS, []).append((run.tenant_id, run.id))
    freed(session, run=run)
    if run.parent_id is not None:  # its parent hears of it (last: it may lock the parent)
        woken = tree.child_ended(session, run=run)
        if woken is not None:
            info.setdefault(_WOKEN, []).append(woken.dispatch)
        else:
            info.setdefault(_UNREPORTED, set()).add(run.parent_id)


def waiting(session: Session, *, run: Run, event: Event, extra: dict[str, Any]) -> None:
    """``run`` waits at a waitpoint from this transaction on: its ``run.waiting``
    deliveries (their data the run and ``extra``: the waitpoint)."""
    session.info.setdefault(_DELIVERIES, []).extend(
        outbox.enqueue(session, run=run, event=event, extra=extra))


def freed(session: Session, *, run: Run) -> None:
    """``run`` gives up its place in this transaction (it ended, or waits to retry)."""
    session.info.setdefault(_FREED, {})[run.id] = run.session_id is not None
    if run.concurrency_key is not None:
        session.info.setdefault(_KEYS, set()).add((run.tenant_id, run.concurrency_key))


def before_commit(rt: Runtime, session: Session) -> None:
    """Count the runs replayed back into their batches, and pick the runs the freed ones
    held back, to be dispatched once this commits."""
    batch_end.before_commit(session)
    held_back = session.info.get(_FREED, {})
    cap = rt.settings.tenant_max_running
    picked: list[Dispatch] = []
    if cap > 0 or any(held_back.values()):  # only a session or a cap holds runs back
        picked = next_to_start(session, run_ids=list(held_back), running_cap=cap)
    if picked:
        session.info[_SUCCESSORS] = picked


def after_commit(rt: Runtime, info: dict[str, Any]) -> None:
    """Announce what the transaction committed, and send what it set going on its way."""
    committed: list[Event] = info.get(events.SESSION_KEY, [])
    if rt.settings.fault == "exit_after_terminal_commit" and any(
            event.is_terminal for event in committed):
        os._exit(70)  # test-only: die between the commit and everything after it
    if committed:
        rt.bus.announce(committed, info.get(_TENANTS))
    for agent, status, duration_s in info.get(_ENDED, []):
        rt.metrics.inc("agentq_runs_finished", agent=agent, status=status)
        if status == "dead_lettered":
            rt.metrics.inc("agentq_runs_dead_lettered", agent=agent)
        if duration_s is not None:
            rt.metrics.observe("agentq_run_duration_seconds", duration_s, agent=agent)
    for job in info.get(_SUCCESSORS, []) + info.get(_WOKEN, []):
        dispatch.dispatch(rt, job)
    if info.get(_KEYS):
        start_keyed(rt, info[_KEYS])
    if info.get(_UNREPORTED):
        tree.Reporter.of(rt).add(*info[_UNREPORTED])
    if info.get(_DELIVERIES):
        outbox.dispatch(rt, info[_DELIVERIES])


def start_keyed(rt: Runtime, keys: set[tuple[str, str]]) -> None:
    """Dispatch the runs these (tenant, concurrency key)s held back that may start now,
    each key's picked under its lock (in one transaction that marks them dispatched, so a
    second end of the key does not pick them again). Never raises: the sweeper starts
    them if this fails."""
    picked: list[Dispatch] = []
    try:
        with rt.db.transaction() as session:
            session.execute(_LOCK_KEYS, {"tenants": [tenant for tenant, _ in keys],
                                         "keys": [key for _, key in keys]})
            for tenant_id, key in keys:
                picked += next_with_key(session, tenant_id=tenant_id, key=key)
            dispatch.mark_dispatched(session, run_ids=[job.run_id for job in picked])
    except Exception as error:
        log.warning("could not pick the runs a concurrency key held back; the sweeper will",
                    extra={"keys": len(keys), "error": f"{type(error).__name__}: {error}"})
        return
    if picked:
        dispatch.dispatch_marked(rt, picked, marked=True)


def _ending(run: Run) -> tuple[str, str, float | None]:
    """What the metrics keep of a run that ended: agent, status, and how long it ran."""
    duration = None
    if run.started_at is not None and run.finished_at is not None:
        duration = max(0.0, (run.finished_at - run.started_at).total_seconds())
    return run.agent, run.status, duration


def next_to_start(session: Session, *, run_ids: list[str], running_cap: int,
                  limit: int = 50) -> list[Dispatch]:
    """Held-back runs that may start now that these runs ended: later runs of their
    sessions, and other runs of their tenants waiting under a running cap."""
    ended = aliased(Run)
    related = select(ended.tenant_id).where(ended.id.in_(run_ids))
    same_session = select(ended.session_id).where(ended.id.in_(run_ids),
                                                  ended.session_id.is_not(None))
    query = (
        select(Run.id, Run.queue, Run.timeout_s, Run.agent)
        .where(Run.status == RunStatus.QUEUED, Run.dispatched_at.is_(None),
               Run.tenant_id.in_(related),
               or_(Run.session_id.in_(same_session), true() if running_cap > 0 else false()),
               session_free(), under_running_cap(running_cap))
        .order_by(Run.id)
        .limit(limit)
    )
    return [Dispatch.of(row, held=True) for row in session.execute(query)]


def next_with_key(session: Session, *, tenant_id: str, key: str) -> list[Dispatch]:
    """The oldest held-back runs of the tenant's concurrency key that its limit lets start
    now (their claims count again, under the key's lock; the caller holds it too)."""
    query = (
        select(Run.id, Run.queue, Run.timeout_s, Run.agent)
        .where(Run.tenant_id == tenant_id, Run.concurrency_key == key,
               Run.status == RunStatus.QUEUED, Run.dispatched_at.is_(None),
               session_free(), under_concurrency_limit())
        .order_by(Run.id)
        .limit(_MAX_PICKED)
    )
    return [Dispatch.of(row, held=True) for row in session.execute(query)]
