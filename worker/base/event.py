"""One committed entry of a run's event log, as Postgres keeps it and the bus carries it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from worker.base.models import TERMINAL_STATUSES

STATUS = "status"
PROGRESS = "progress"


@dataclass(frozen=True)
class Event:
    """One committed entry of a run's event log."""

    run_id: str
    seq: int
    type: str
    data: dict[str, Any]
    at: datetime

    @cached_property
    def data_json(self) -> str:
        """The data as compact JSON, encoded once however many streams send it."""
        return json.dumps(self.data, separators=(",", ":"))

    @property
    def is_terminal(self) -> bool:
        """The run's last event: a status event with a terminal status."""
        return self.type == STATUS and self.data.get("status") in TERMINAL_STATUSES
