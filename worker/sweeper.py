"""The periodic sweep (Celery beat, every ``AGENTQ_SWEEP_INTERVAL_S``): repair what was lost."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from worker import dispatch

if TYPE_CHECKING:
    from worker.runtime import Runtime

log = logging.getLogger(__name__)


def sweep(rt: Runtime) -> None:
    """Run every repair once."""
    dispatch.redispatch(rt)
