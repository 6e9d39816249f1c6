"""LLM spend: tokens summed on each run and on each tenant's day (UTC), and the tenant's
daily budget (``AGENTQ_TENANT_DAILY_TOKENS``) checked before every call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from worker.base.errors import BudgetExceeded
from worker.base.models import TenantUsage


@dataclass(frozen=True)
class Day:
    day: date
    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


_RUN = text("""
    UPDATE runs SET llm_calls = llm_calls + 1, input_tokens = input_tokens + :input_tokens,
                    output_tokens = output_tokens + :output_tokens
    WHERE id = :run_id
    RETURNING tenant_id
""")

_TENANT_DAY = text("""
    INSERT INTO tenant_usage (tenant_id, day, llm_calls, input_tokens, output_tokens)
    VALUES (:tenant_id, :day, 1, :input_tokens, :output_tokens)
    ON CONFLICT (tenant_id, day) DO UPDATE SET
        llm_calls = tenant_usage.llm_calls + 1,
        input_tokens = tenant_usage.input_tokens + EXCLUDED.input_tokens,
        output_tokens = tenant_usage.output_tokens + EXCLUDED.output_tokens
""")


def today() -> date:
    return datetime.now(UTC).date()


def add(session: Session, *, run_id: str, input_tokens: int, output_tokens: int) -> None:
    """Count one LLM call on its run and on its tenant's day."""
    counts = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    tenant_id = session.execute(_RUN, {"run_id": run_id, **counts}).scalar_one()
    session.execute(_TENANT_DAY, {"tenant_id": tenant_id, "day": today(), **counts})


def days(session: Session, *, tenant_id: str, count: int = 1) -> list[Day]:
    """The tenant's last ``count`` days, today first (days without calls are zeros)."""
    first = today() - timedelta(days=count - 1)
    rows = session.scalars(select(TenantUsage).where(
        TenantUsage.tenant_id == tenant_id, TenantUsage.day >= first))
    found = {row.day: Day(row.day, row.llm_calls, row.input_tokens, row.output_tokens)
             for row in rows}
    return [found.get(day, Day(day)) for day in
            (today() - timedelta(days=n) for n in range(count))]


def check_budget(session: Session, *, tenant_id: str, budget: int) -> None:
    """Raise BudgetExceeded if the tenant has used its tokens for today (0: no budget)."""
    if budget <= 0:
        return
    used = days(session, tenant_id=tenant_id)[0].tokens
    if used >= budget:
        raise BudgetExceeded(
            f"the tenant's daily LLM budget is used up: {used} of {budget} tokens today "
            "(AGENTQ_TENANT_DAILY_TOKENS); it renews at 00:00 UTC")
