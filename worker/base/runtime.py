"""Everything a process needs to do agentq's work, built once from the settings."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from celery import Celery

from worker.access.grants import Grants
from worker.agents import Registry, load_agents
from worker.base.bus import Bus
from worker.base.db import Database
from worker.base.metrics import Metrics
from worker.base.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from worker.access.keys import KeyCache
    from worker.delivery.notifier import Sender
    from worker.execution.supervisor import Supervisor
    from worker.runs.dispatch import Marker

DELIVERIES_KEY = "agentq.deliveries"
TENANTS_KEY = "agentq.tenants"
SUCCESSORS_KEY = "agentq.successors"
ENDED_KEY = "agentq.ended"
_FREEING = frozenset({"succeeded", "failed", "cancelled", "dead_lettered", "retrying"})


class _PerProcess(Protocol):
    pid: int


_P = TypeVar("_P", bound=_PerProcess)


@dataclass
class Runtime:
    """The settings and the connections built from them: Postgres, Redis, Celery, agents."""

    settings: Settings
    bus: Bus
    registry: Registry
    celery: Celery
    _supervisor: Supervisor | None = field(default=None, repr=False)
    _sender: Sender | None = field(default=None, repr=False)
    _marker: Marker | None = field(default=None, repr=False)
    _key_cache: KeyCache | None = field(default=None, repr=False)
    _grants: Grants | None = field(default=None, repr=False)
    db: Database = field(init=False)
    metrics: Metrics = field(init=False)
    _making: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.db = Database(self.settings, before_commit=self.before_commit,
                           after_commit=self.after_commit)
        self.metrics = Metrics(self.bus.redis)

    def _own(self, attribute: str, make: Callable[[], _P]) -> _P:
        """This process's one ``attribute``, made on first use and again after a fork. Made
        under a lock: two greenlets asking at once would otherwise make two (each making
        may yield, to start a thread or open a connection)."""
        with self._making:
            held: _P | None = getattr(self, attribute)
            if held is None or held.pid != os.getpid():
                held = make()
                setattr(self, attribute, held)
            return held

    def supervisor(self) -> Supervisor:
        """This worker process's supervisor of running attempts (one per process)."""
        from worker.execution.supervisor import Supervisor

        return self._own("_supervisor", lambda: Supervisor(self))

    def sender(self) -> Sender:
        """This process's webhook sender (one HTTP client per process)."""
        from worker.delivery.notifier import Sender

        return self._own("_sender", lambda: Sender(self.settings))

    def key_cache(self) -> KeyCache:
        """This process's memory of valid API keys; a revocation it hears of ends what the
        key holds open here."""
        from worker.access.keys import KeyCache

        settings = self.settings
        return self._own("_key_cache", lambda: KeyCache(
            settings.redis_url, settings.key_cache_s,
            on_revoked=lambda key_id: self.grants().revoked(key_id)))

    def grants(self) -> Grants:
        """This process's open streams and sockets, by credential."""
        return self._own("_grants", lambda: Grants(self.db))

    def key_revoked(self, key_id: str) -> None:
        """After a revocation committed: forget the key and end what it holds open, here at
        once and in every other process when it hears of it."""
        from worker.access.keys import announce_revocation

        announce_revocation(self.bus.redis, key_id)  # first: nothing here may delay it
        self.key_cache().forget(key_id)

    def marker(self) -> Marker:
        """This process's batcher of "dispatched" marks."""
        from worker.runs.dispatch import Marker

        return self._own("_marker", lambda: Marker(self))

    def before_commit(self, session: Session) -> None:
        """A run that ends gets its deliveries in the same transaction (the outbox), and
        the runs it held back (later runs of its session, its tenant's runs over a running
        cap) are picked to be dispatched."""
        from worker.base.models import Run
        from worker.delivery import webhooks
        from worker.runs import events
        from worker.runs import store as runs
        from worker.runs.attempts import ENDED_RUNS_KEY

        recorded = events.recorded(session)
        known = session.info.get(ENDED_RUNS_KEY, {})  # what attempts.finish already read
        ended = [(event, *(known.get(event.run_id) or (
                    session.get_one(Run, event.run_id, populate_existing=True), None)))
                 for event in recorded if event.is_terminal]
        created = webhooks.enqueue(session, ended)
        if created:
            session.info[DELIVERIES_KEY] = created
        if ended:
            session.info[TENANTS_KEY] = {run.id: run.tenant_id for _, run, _ in ended}
            session.info[ENDED_KEY] = [_ending(run) for _, run, _ in ended]
        freed = [event.run_id for event in recorded
                 if event.type == events.STATUS and event.data.get("status") in _FREEING]
        if freed and self._may_hold_back(session, freed):
            session.info[SUCCESSORS_KEY] = runs.next_to_start(
                session, run_ids=freed, running_cap=self.settings.tenant_max_running)

    def _may_hold_back(self, session: Session, freed: list[str]) -> bool:
        """Could the runs that freed up have held others back (a session, a cap)?"""
        if self.settings.tenant_max_running > 0:
            return True
        from worker.runs.attempts import ENDED_RUNS_KEY

        known = session.info.get(ENDED_RUNS_KEY, {})
        return any(run_id not in known or known[run_id][0].session_id for run_id in freed)

    def after_commit(self, info: dict[str, Any]) -> None:
        """Announce what the transaction committed, and send its deliveries on their way."""
        from worker.runs import dispatch, events

        committed = info.get(events.SESSION_KEY, [])
        if self.settings.fault == "exit_after_terminal_commit" and any(
                event.is_terminal for event in committed):
            os._exit(70)  # test-only: die between the commit and everything after it
        if committed:
            self.bus.announce(committed, info.get(TENANTS_KEY))
        for agent, status, duration_s in info.get(ENDED_KEY, []):
            self.metrics.inc("agentq_runs_finished", agent=agent, status=status)
            if status == "dead_lettered":
                self.metrics.inc("agentq_runs_dead_lettered", agent=agent)
            if duration_s is not None:
                self.metrics.observe("agentq_run_duration_seconds", duration_s, agent=agent)
        for job in info.get(SUCCESSORS_KEY, []):
            dispatch.dispatch(self, job)
        if info.get(DELIVERIES_KEY):
            dispatch.dispatch_deliveries(self, info[DELIVERIES_KEY])


def build_runtime(settings: Settings) -> Runtime:
    """Build a runtime; nothing connects until first used (safe before ``fork``)."""
    from worker.base.queues import make_celery, register_tasks

    runtime = Runtime(
        settings=settings,
        bus=Bus(settings.redis_url),
        registry=load_agents(settings.agents),
        celery=make_celery(settings),
    )
    register_tasks(runtime)
    return runtime


def _ending(run: Any) -> tuple[str, str, float | None]:
    """What the metrics keep of a run that ended: agent, status, and how long it ran."""
    duration = None
    if run.started_at is not None and run.finished_at is not None:
        duration = max(0.0, (run.finished_at - run.started_at).total_seconds())
    return run.agent, run.status, duration
