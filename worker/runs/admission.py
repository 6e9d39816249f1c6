"""Per-tenant caps on submission, checked and taken in one step so no race can pass them.

``AGENTQ_TENANT_MAX_QUEUED`` caps a tenant's waiting runs (delayed, queued or retrying); with
``AGENTQ_TENANT_RUNNING_CAP_MODE=reject``, ``AGENTQ_TENANT_MAX_RUNNING`` caps its runs that
are waiting or running, so a run is admitted only if it could start. Counting a tenant's
runs on every submission would cost in proportion to its backlog, so each tenant's row
keeps what was admitted: the counts as of ``admission_counted_at``, plus every run admitted
since. Runs that started or ended since are not taken off, so admissions alone can never
take the tenant past its cap. (Runs that come back to waiting, a retry or a recovery, are
not admissions: they are counted at the next recount, at most ``FRESH_S`` later.)

A submission takes its slot with one ``UPDATE`` of the tenant's row (``SLOT``, the first
part of the statement that stores the run): the row lock orders concurrent submissions,
and the ``WHERE`` is checked again on the row as the previous holder left it, so two can
never both take the last slot. Only when the figure says the tenant is full (or it is
older than ``FRESH_S``) does ``recount`` count again, under the row's lock (which waits
for the submissions in flight), and the submission tries once more. Counting costs in
proportion to the backlog, with the tenant's submissions waiting, so it is rare: a tenant
far from its cap counts twice a minute; a burst at the cap is answered from one count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.base.db import Database
from worker.base.errors import LimitExceeded
from worker.base.settings import Settings

FRESH_S = 30.0  # how old the tenant's counts may be for a submission to skip counting


@dataclass(frozen=True)
class Caps:
    """The caps a submission must fit under (0: none)."""

    waiting: int
    active: int

    @classmethod
    def of(cls, settings: Settings) -> Caps:
        reject = settings.tenant_running_cap_mode == "reject"
        return cls(waiting=settings.tenant_max_queued,
                   active=settings.tenant_max_running if reject else 0)

    @property
    def any(self) -> bool:
        return bool(self.waiting or self.active)

    def params(self, tenant_id: str) -> dict[str, object]:
        return {"tenant_id": tenant_id, "max_waiting": self.waiting,
                "max_active": self.active, "fresh_s": FRESH_S}


NONE = Caps(waiting=0, active=0)

# Take a slot if the tenant's recent counts leave one; no row when they do not (or are old).
# In psycopg's placeholders, to lead the statement that stores the run (worker.runs).
SLOT = """
    UPDATE tenants
    SET admitted_waiting = admitted_waiting + 1, admitted_active = admitted_active + 1
    WHERE id = %(tenant_id)s
      AND admission_counted_at > now() - make_interval(secs => %(fresh_s)s)
      AND (%(max_waiting)s = 0 OR admitted_waiting < %(max_waiting)s)
      AND (%(max_active)s = 0 OR admitted_active < %(max_active)s)
    RETURNING id
"""

# SLOT for ``count`` runs at once (a batch, a parent's children): all or none.
SLOTS = """
    UPDATE tenants SET admitted_waiting = admitted_waiting + %(count)s,
                       admitted_active = admitted_active + %(count)s
    WHERE id = %(tenant_id)s
      AND admission_counted_at > now() - make_interval(secs => %(fresh_s)s)
      AND (%(max_waiting)s = 0 OR admitted_waiting + %(count)s <= %(max_waiting)s)
      AND (%(max_active)s = 0 OR admitted_active + %(count)s <= %(max_active)s)
    RETURNING id
"""

# NO KEY: rows that refer to the tenant (runs, deliveries, sessions) may still be written.
# now() is when this transaction began, before it waited for the lock: a count made since
# was made by a submission that held the lock while this one waited.
_LOCK = text("""
    SELECT coalesce(admission_counted_at > now(), false) AS counted_while_waiting
    FROM tenants WHERE id = :tenant_id FOR NO KEY UPDATE
""")
_COUNT = text("""
    SELECT count(*) FILTER (WHERE status IN ('scheduled', 'queued', 'retrying')) AS waiting,
           count(*) AS active
    FROM runs WHERE tenant_id = :tenant_id
      AND status IN ('scheduled', 'queued', 'retrying', 'running')
""")
_COUNTED = text("""
    UPDATE tenants SET admitted_waiting = :waiting, admitted_active = :active,
                       admission_counted_at = clock_timestamp()
    WHERE id = :tenant_id
""")


class Full(LimitExceeded):
    """The tenant's figure leaves no slot: count again (``admitted``), or refuse (429)."""

    def __init__(self, caps: Caps) -> None:
        if caps.waiting:
            detail = (f"the tenant has {caps.waiting} runs waiting (AGENTQ_TENANT_MAX_QUEUED); "
                      "try again when some have started")
        else:
            detail = (f"the tenant has {caps.active} runs running or waiting to run "
                      "(AGENTQ_TENANT_MAX_RUNNING, reject mode)")
        super().__init__(detail, retry_after_s=5)


def take(session: Session, *, tenant_id: str, caps: Caps) -> None:
    """Take a slot for one run in the session's transaction, or raise Full. The tenant's
    row stays locked until the transaction ends."""
    if caps.any and session.connection().exec_driver_sql(
            SLOT, caps.params(tenant_id)).first() is None:
        raise Full(caps)


def take_many(session: Session, *, tenant_id: str, caps: Caps, count: int) -> None:
    """``take`` for ``count`` runs at once, or raise Full."""
    if count and caps.any and session.connection().exec_driver_sql(
            SLOTS, {**caps.params(tenant_id), "count": count}).first() is None:
        raise Full(caps)


T = TypeVar("T")


def admitted(db: Database, *, tenant_id: str, caps: Caps, store: Callable[[], T]) -> T:
    """Run ``store`` (which takes its slot: ``take``, or ``runs.create_alone``); if the
    tenant's figure says full, count the tenant's runs and try once more. Raises Full
    (a 429) if it is full indeed."""
    try:
        return store()
    except Full:
        recount(db, tenant_id=tenant_id)
        return store()


def recount(db: Database, *, tenant_id: str) -> None:
    """Count the tenant's runs under its row's lock, in a transaction of its own. Many
    submissions find the figure full (or old) at once: the first counts, and the others,
    having waited for its lock, find a count made since they began waiting and believe it
    (a submission that comes later counts again: runs may have ended since)."""
    with db.transaction() as session:
        if session.execute(_LOCK, {"tenant_id": tenant_id}).scalar():
            return
        counts = session.execute(_COUNT, {"tenant_id": tenant_id}).one()
        session.execute(_COUNTED, {"tenant_id": tenant_id, "waiting": counts.waiting,
                                   "active": counts.active})
