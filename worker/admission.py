"""Per-tenant caps on submission, checked and taken in one step so no race can pass them.

``AGENTQ_TENANT_MAX_QUEUED`` caps a tenant's waiting runs (queued or retrying); with
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
never both take the last slot. When the counts are older than ``FRESH_S``, or the figure
says the tenant is full, ``recount`` counts again under the row's lock and decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.errors import LimitExceeded
from worker.settings import Settings

FRESH_S = 1.0  # how old the tenant's counts may be for a submission to skip counting


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

# NO KEY: rows that refer to the tenant (runs, deliveries, sessions) may still be written.
_LOCK = text("SELECT id FROM tenants WHERE id = :tenant_id FOR NO KEY UPDATE")
_COUNT = text("""
    SELECT count(*) FILTER (WHERE status IN ('queued', 'retrying')) AS waiting,
           count(*) AS active
    FROM runs WHERE tenant_id = :tenant_id AND status IN ('queued', 'retrying', 'running')
""")
_COUNTED = text("""
    UPDATE tenants SET admitted_waiting = :waiting, admitted_active = :active,
                       admission_counted_at = clock_timestamp()
    WHERE id = :tenant_id
""")


def admit(session: Session, *, tenant_id: str, caps: Caps) -> None:
    """Take a slot for one run in the session's transaction, or raise LimitExceeded.
    The tenant's row stays locked until the transaction ends."""
    if not caps.any:
        return
    taken = session.connection().exec_driver_sql(SLOT, caps.params(tenant_id)).first()
    if taken is None:
        recount(session, tenant_id=tenant_id, caps=caps)


def recount(session: Session, *, tenant_id: str, caps: Caps) -> None:
    """Count the tenant's runs under its row's lock, then take a slot or refuse."""
    session.execute(_LOCK, {"tenant_id": tenant_id})
    counts = session.execute(_COUNT, {"tenant_id": tenant_id}).one()
    if caps.waiting and counts.waiting >= caps.waiting:
        raise LimitExceeded(f"the tenant has {caps.waiting} runs waiting "
                            "(AGENTQ_TENANT_MAX_QUEUED); try again when some have started",
                            retry_after_s=5)
    if caps.active and counts.active >= caps.active:
        raise LimitExceeded(f"the tenant has {caps.active} runs running or waiting to run "
                            "(AGENTQ_TENANT_MAX_RUNNING, reject mode)", retry_after_s=5)
    session.execute(_COUNTED, {"tenant_id": tenant_id, "waiting": counts.waiting + 1,
                               "active": counts.active + 1})
