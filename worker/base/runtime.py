"""Everything a process needs to do agentq's work: the settings and the connections built
from them (Postgres, Redis, Celery), the agents, and each layer's per-process helpers.

``worker.app.build_runtime`` assembles one (and wires the run lifecycle into the
database's commit); the layers above ask for their helpers through ``own``, so this
module knows none of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from celery import Celery

from worker.base.bus import Bus
from worker.base.db import Database
from worker.base.metrics import Metrics
from worker.base.settings import Settings


class Agents(Protocol):
    """What the runtime's agent registry answers (``worker.agents.Registry``)."""

    def get(self, name: str) -> Any: ...
    def names(self) -> list[str]: ...
    def __contains__(self, name: object) -> bool: ...


class PerProcess(Protocol):
    """A helper made once per process: it knows the pid it was made in."""

    pid: int


P = TypeVar("P", bound=PerProcess)


@dataclass
class Runtime:
    """The settings and the connections built from them: Postgres, Redis, Celery, agents."""

    settings: Settings
    bus: Bus
    registry: Agents
    celery: Celery
    db: Database = field(init=False)
    metrics: Metrics = field(init=False)
    _helpers: dict[str, Any] = field(default_factory=dict, repr=False)
    _making: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.db = Database(self.settings)
        self.metrics = Metrics(self.bus.redis)

    def own(self, name: str, make: Callable[[], P]) -> P:
        """This process's one helper called ``name``, made on first use and again after a
        fork (a helper holds threads and connections of its process). Made under a lock:
        two greenlets asking at once would otherwise make two (making may yield, to start
        a thread or open a connection)."""
        with self._making:
            held: P | None = self._helpers.get(name)
            if held is None or held.pid != os.getpid():
                held = self._helpers[name] = make()
            return held
