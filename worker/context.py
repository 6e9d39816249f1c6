"""What an agent sees of its run: ``ctx``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.errors import Cancelled


@dataclass
class RunContext:
    """The handle an agent gets for one attempt of one run.

    ``emit`` appends a progress event to the run's log; ``cancelled`` says whether someone
    asked the run to stop; ``time_left()`` is what remains of the attempt's timeout;
    ``session`` is the conversation's state (a dict, saved when the attempt succeeds; without
    a session_id it is an empty dict that is not kept).
    """

    run_id: str
    tenant_id: str
    agent: str
    attempt: int
    max_attempts: int
    timeout_s: int
    session_id: str | None
    request_id: str | None
    log: logging.LoggerAdapter[logging.Logger]
    session: dict[str, Any]
    _emit: Callable[[dict[str, Any]], int] = field(repr=False)
    _is_cancelled: Callable[[], bool] = field(repr=False)
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    def emit(self, phase: str, message: str, **data: Any) -> int:
        """Append a ``progress`` event ``{phase, message, **data}``; return its ``seq``."""
        return self._emit({"phase": phase, "message": message, **data})

    @property
    def cancelled(self) -> bool:
        """True once the run has been asked to stop (the request arrives within a second)."""
        return self._is_cancelled()

    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if the run has been asked to stop."""
        if self.cancelled:
            raise Cancelled(f"run {self.run_id} was cancelled")

    def time_left(self) -> float:
        """Seconds left before this attempt's timeout."""
        return max(0.0, self._deadline - time.monotonic())
