"""When a queued run may start: the conditions a claim and a dispatch both check.

Runs of one session execute one at a time, in submission order; a tenant with a running cap
has at most that many runs running; at most ``concurrency_max`` of a tenant's runs with one
``concurrency_key`` run at once. A run that may not start yet is held back (queued, not
dispatched) and dispatched when an earlier run ends.
"""

from __future__ import annotations

import functools

from sqlalchemy import ColumnElement, exists, func, or_, select, true
from sqlalchemy.orm import Session, aliased

from worker.base.models import TERMINAL_STATUSES, Run, RunStatus


@functools.cache
def session_free() -> ColumnElement[bool]:
    """The run has no earlier run of its session still going (runs of a session execute
    one at a time, in submission order)."""
    earlier = aliased(Run)
    return or_(Run.session_id.is_(None), ~exists().where(
        earlier.tenant_id == Run.tenant_id, earlier.session_id == Run.session_id,
        earlier.id < Run.id, earlier.status.not_in(list(TERMINAL_STATUSES))))


@functools.cache
def under_running_cap(cap: int) -> ColumnElement[bool]:
    """The run's tenant has fewer than ``cap`` runs running (always true without a cap)."""
    if cap <= 0:
        return true()
    busy = aliased(Run)
    running = (select(func.count()).where(busy.tenant_id == Run.tenant_id,
                                          busy.status == RunStatus.RUNNING)
               .scalar_subquery())
    return running < cap


@functools.cache
def under_concurrency_limit() -> ColumnElement[bool]:
    """The run has no concurrency key, or fewer than its ``concurrency_max`` of its tenant's
    runs with that key are running."""
    busy = aliased(Run)
    running = (select(func.count()).where(busy.tenant_id == Run.tenant_id,
                                          busy.concurrency_key == Run.concurrency_key,
                                          busy.status == RunStatus.RUNNING)
               .scalar_subquery())
    return or_(Run.concurrency_key.is_(None), running < Run.concurrency_max)


def may_start_now(session: Session, *, runs: list[Run], running_cap: int) -> frozenset[str]:
    """Which of these runs, stored in this transaction, may start now (as
    ``store.may_start`` finds for one run): all of them unless a session or a cap holds
    some back (a concurrency key's claim decides for itself)."""
    if not any(run.session_id or run.concurrency_key for run in runs) and running_cap <= 0:
        return frozenset(run.id for run in runs)
    return frozenset(session.scalars(select(Run.id).where(
        Run.id.in_([run.id for run in runs]), session_free(), under_running_cap(running_cap))))
