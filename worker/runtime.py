"""Everything a process needs to do agentq's work, built once from the settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery

from worker.agents import Registry, load_agents
from worker.bus import Bus
from worker.db import Database
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.supervisor import Supervisor


@dataclass
class Runtime:
    """The settings and the connections built from them: Postgres, Redis, Celery, agents."""

    settings: Settings
    db: Database
    bus: Bus
    registry: Registry
    celery: Celery
    _supervisor: Supervisor | None = field(default=None, repr=False)

    def supervisor(self) -> Supervisor:
        """This worker process's supervisor of running attempts (one per process)."""
        from worker.supervisor import Supervisor

        if self._supervisor is None or self._supervisor.pid != os.getpid():
            self._supervisor = Supervisor(self)
        return self._supervisor


def build_runtime(settings: Settings) -> Runtime:
    """Build a runtime; nothing connects until first used (safe before ``fork``)."""
    from worker.tasks import make_celery, register_tasks

    bus = Bus(settings.redis_url)
    runtime = Runtime(
        settings=settings,
        db=Database(settings, after_commit=bus.announce),
        bus=bus,
        registry=load_agents(settings.agents),
        celery=make_celery(settings),
    )
    register_tasks(runtime)
    return runtime
