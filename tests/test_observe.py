"""What the dashboard's status strip reads: the tenant's runs now, not its whole history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text

from tests.conftest import Tenant
from worker.base.runtime import Runtime
from worker.runs import observe


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's scans read: those they returned and those their filters removed."""
    own = 0
    if "Scan" in plan["Node Type"]:
        own = plan["Actual Rows"] * plan.get("Actual Loops", 1) + plan.get(
            "Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
    return int(own) + sum(_rows_read(child) for child in plan.get("Plans", []))


def test_the_status_strip_does_not_read_a_tenants_history(runtime: Runtime,
                                                         tenant: Tenant) -> None:
    with runtime.db.transaction() as session:
        session.execute(text("""
            INSERT INTO runs (id, tenant_id, agent, status, input, attempt, max_attempts,
                              timeout_s, metadata, queue, priority, lease_epoch, last_seq,
                              created_at, finished_at)
            SELECT 'run_old_' || md5(:tenant || n), :tenant, 'echo', 'succeeded', '{}', 1, 1, 60,
                   '{}', 'runs.normal', 'normal', 1, 3, now() - interval '2 days',
                   now() - interval '1 day'
            FROM generate_series(1, 20000) AS n"""), {"tenant": tenant.id})
        session.execute(text("ANALYZE runs"))
    try:
        with runtime.db.transaction() as session:
            seen: list[tuple[str, Any]] = []
            connection = session.connection()
            event.listen(connection, "before_cursor_execute",
                         lambda conn, cursor, statement, params, context, many:
                         seen.append((statement, params)))
            pulse = observe.pulse(session, tenant_id=tenant.id)
            statement, params = seen[-1]
            plan = connection.exec_driver_sql(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params).scalar_one()
    finally:  # other tests share the database
        with runtime.db.transaction() as session:
            session.execute(text("DELETE FROM runs WHERE tenant_id = :tenant"),
                            {"tenant": tenant.id})
    assert (pulse.ended_per_minute, pulse.queued, pulse.running) == (0, 0, 0)
    assert _rows_read(plan[0]["Plan"]) < 100  # not the 20,000 runs it ended yesterday
