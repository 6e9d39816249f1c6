"""When a queued run may start: the conditions a claim and a dispatch both check.

Runs of one session execute one at a time, in submission order; a tenant with a running cap
has at most that many runs running; at most ``concurrency_max`` of a tenant's runs with one
``concurrency_key`` run at once. A run that may not start yet is held back (queued, not
dispatched) and dispatched when an earlier run ends.
"""

from __future__ import annotations

import functools

from sqlalchemy import ColumnElement, exists, func, or_, select, true
from sqlalchemy.orm import aliased

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
