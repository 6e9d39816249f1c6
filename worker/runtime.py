"""Everything a process needs to do agentq's work, built once from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from worker.agents import Registry, load_agents
from worker.bus import Bus
from worker.db import Database
from worker.settings import Settings


@dataclass
class Runtime:
    """The settings and the connections built from them: Postgres, Redis, Celery, agents."""

    settings: Settings
    db: Database
    bus: Bus
    registry: Registry
    celery: Celery


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
