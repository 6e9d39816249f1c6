"""A process's runtime, assembled from every layer: where the parts meet.

``build_runtime`` makes the runtime, wires the run lifecycle into the database's commit
(``worker.runs.lifecycle``: successors before it; announcements, deliveries' and
successors' dispatch after it), and attaches the Celery tasks. Tasks take ids, never
objects, and hand over to a layer's function at once: a run's attempt to
``worker.execution``, a delivery's attempt to ``worker.delivery``, the sweep to
``worker.runs.sweeper`` (with the deliveries' repair).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Task
from celery.exceptions import Reject

from worker.agents import load_agents
from worker.base.bus import Bus
from worker.base.queues import DELIVER_TASK, RUN_TASK, SCHEDULES_TASK, SWEEP_TASK, make_celery
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.delivery import notifier
from worker.execution.engine import Engine, handing_off
from worker.runs import children, lifecycle, schedules, sweeper


def build_runtime(settings: Settings) -> Runtime:
    """Build a runtime; nothing connects until first used (safe before ``fork``)."""
    rt = Runtime(settings=settings,
                 bus=Bus(settings.redis_url, timeout_s=settings.dependency_timeout_s),
                 registry=load_agents(settings.agents), celery=make_celery(settings))
    rt.db.on_commit(before=functools.partial(lifecycle.before_commit, rt),
                    after=functools.partial(_after_commit, rt))
    register_tasks(rt)
    return rt


def _after_commit(rt: Runtime, info: dict[str, Any]) -> None:
    lifecycle.after_commit(rt, info)
    children.after_commit(rt, info)  # a cancelled parent's children, each on its own


def register_tasks(rt: Runtime) -> None:
    """Attach agentq's tasks to the runtime's Celery app."""

    # No task events either: the task only hands the run over (a "SUCCESS" in Flower would
    # mean "handed over", not "the run succeeded"), and its three Redis publishes were a
    # tenth of a busy worker's CPU. A run's story is in agentq's API and dashboard.
    @rt.celery.task(name=RUN_TASK, bind=True, send_events=False)
    def run(task: Task, run_id: str, agent: str | None = None) -> None:
        """Hand an attempt of run ``run_id`` (of ``agent``: messages published before it
        was named have none) to this process's engine (a no-op if it is not claimable):
        at once, from a threads pool; to its end, in a prefork child."""
        engine = Engine.of(rt)
        worker = task.request.hostname or "unknown"
        if not engine.run(run_id, worker, wait=not handing_off(), agent=agent):
            # Stopping, or cut off from Postgres: back to the queue, for another worker
            raise Reject("this worker cannot take runs now", requeue=True)

    # No task events (Flower): three Redis publishes per delivery, a sixth of the notifier's
    # CPU; a delivery's attempts are in the database and in agentq_deliveries instead.
    @rt.celery.task(name=DELIVER_TASK, acks_late=False, send_events=False)
    def deliver(delivery_id: str) -> None:
        """Make one attempt of webhook delivery ``delivery_id`` (a no-op if not due)."""
        notifier.deliver(rt, delivery_id=delivery_id)

    @rt.celery.task(name=SWEEP_TASK)
    def sweep() -> None:
        """Repair what was lost: runs' dispatches, stale attempts, deliveries."""
        sweeper.sweep(rt, also=(notifier.redispatch_due, children.cancel_orphans))

    @rt.celery.task(name=SCHEDULES_TASK, send_events=False)
    def fire_schedules() -> None:
        """Make the runs of the schedules' due slots (each slot once, whatever the beats)."""
        schedules.fire_due(rt)
