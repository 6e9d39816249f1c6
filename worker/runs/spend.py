"""LLM spend: tokens summed on each run and on each tenant's day (UTC), and the tenant's
daily budget (``AGENTQ_TENANT_DAILY_TOKENS``) checked before every call. The counts are
written with the call's durable step, in its one statement (``worker.runs.steps.store``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select
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


def today() -> date:
    return datetime.now(UTC).date()


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
