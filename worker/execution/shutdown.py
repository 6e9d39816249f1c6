"""Graceful shutdown: on SIGTERM a worker stops taking runs, lets running attempts finish
within ``AGENTQ_SHUTDOWN_GRACE_S``, then gives the rest back to the queue at once.

The attempts a worker gives up are re-queued at once (the interrupted attempt does not
count toward ``max_attempts``) and published, so none waits for its lease to go stale.

- A worker whose threads hand runs to the engine (the default ``worker``): the engine stops
  taking runs when the shutdown begins (a message that arrives then goes back to the
  queue), and once Celery has stopped consuming, the shutdown waits for the engine's
  attempts to end, up to the grace, and re-queues the rest.
- A prefork worker (``cpu``): Celery's warm shutdown waits for running tasks without limit;
  this adds the limit, and kills the children still running after it. An attempt whose
  process died during the shutdown (``honcho`` and ``docker compose`` may signal the whole
  process group) is re-queued as soon as it is seen to be gone.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from celery.worker import state

from worker.base.queues import RUN_TASK
from worker.base.runtime import Runtime
from worker.execution.engine import Engine, handing_off
from worker.runs import attempts, dispatch

log = logging.getLogger(__name__)

_POLL_S = 0.2


class GracefulShutdown:
    """Hooked to Celery's ``worker_ready`` and ``worker_shutting_down`` signals."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._pool: Any = None
        self._hostname = ""
        self._started = False
        self._grace = 0.0

    def ready(self, consumer: Any) -> None:
        self._pool = consumer.pool
        self._hostname = consumer.hostname

    def begin(self, how: str) -> None:
        """The shutdown begins (Celery's ``worker_shutting_down``)."""
        if self._started:
            return
        self._started = True
        self._grace = 0.0 if how == "Cold" else self._rt.settings.shutdown_grace_s
        if handing_off():
            Engine.of(self._rt).stop_taking()
            return
        threading.Thread(target=self._drain, args=(self._grace,), name="agentq-shutdown",
                         daemon=True).start()

    def end(self) -> None:
        """Celery has stopped consuming (``worker_shutdown``): let the engine's attempts end
        within the grace, and re-queue the rest, before the process exits."""
        if not handing_off():
            return
        engine = Engine.of(self._rt)
        left = engine.drain(self._grace if self._started else 0.0)
        if left:
            self._requeue(sorted(claim.run_id for claim in left))
        held = engine.unclaimed()  # their messages were taken: the sweeper publishes them
        if held:
            try:
                with self._rt.db.autocommit() as session:
                    dispatch.mark_undispatched(session, run_ids=held)
            except Exception:
                log.exception("could not give back the runs held unclaimed; the sweeper finds "
                              "them missing from the queue later", extra={"run_ids": held})

    def _drain(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        tracked = set(_running())
        while tracked and time.monotonic() < deadline:
            gone = tracked - set(_running())
            if gone:
                self._requeue(sorted(gone))  # a no-op for attempts that recorded an outcome
                tracked -= gone
            time.sleep(_POLL_S)
        if tracked:
            self._requeue(sorted(tracked))
            for request in _run_requests():
                request.cancel(self._pool, signal=signal.SIGKILL, emit_retry=False)

    def _requeue(self, run_ids: list[str]) -> None:
        try:
            with self._rt.db.transaction() as session:
                jobs = attempts.requeue_interrupted(session, run_ids=run_ids,
                                                    worker=self._hostname)
                sent = dispatch.publish_all(self._rt, jobs, reason="worker shutting down")
                dispatch.mark_dispatched(session, run_ids=sent)
        except Exception:
            log.exception("could not re-queue runs at shutdown; their leases will expire",
                          extra={"run_ids": run_ids})
            return
        for job in jobs:
            log.warning("run re-queued at shutdown", extra={"run_id": job.run_id,
                                                            "worker": self._hostname})


def _run_requests() -> list[Any]:
    return [request for request in tuple(state.active_requests) if request.name == RUN_TASK]


def _running() -> dict[str, Any]:
    """Run id -> request, for the run attempts this worker is executing now."""
    return {request.args[0]: request for request in _run_requests()}
