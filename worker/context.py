"""``from worker.context import RunContext``: the public path of ``worker.agents.context``."""

from worker.agents.context import AsyncRunContext, RunContext

__all__ = ["AsyncRunContext", "RunContext"]
