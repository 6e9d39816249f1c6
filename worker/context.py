"""``from worker.context import RunContext``: the public path of ``worker.agents.context``."""

from worker.agents.context import RunContext

__all__ = ["RunContext"]
