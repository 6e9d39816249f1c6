"""A worker process's watch over the attempts it runs: cancel requests and their deadline.

A cancel request reaches the process over Redis (``CancelListener``) at once, or through
the attempt's next heartbeat if Redis lost it. The agent sees it as ``ctx.cancelled``. If
the agent has not stopped ``AGENTQ_CANCEL_GRACE_S`` later, ``Cancelled`` is raised in it
(SIGUSR2); if even that does not stop it, the attempt is recorded as cancelled and the
process is killed, as a hard time limit would (Celery starts a fresh one).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType

from worker.base.bus import CancelListener
from worker.base.errors import Cancelled, LeaseLost
from worker.base.models import AttemptOutcome, RunStatus
from worker.base.runtime import Runtime
from worker.runs import attempts
from worker.runs.attempts import Claim, Outcome

log = logging.getLogger(__name__)

_INTERRUPT_PATIENCE_S = 2.0
_INTERRUPT = signal.SIGUSR2


@dataclass
class Active:
    """An attempt this process is running."""

    claim: Claim
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    """One per worker process; made on the first attempt the process runs."""

    @classmethod
    def of(cls, rt: Runtime) -> Supervisor:
        """This worker process's supervisor of running attempts."""
        return rt.own("supervisor", lambda: cls(rt))

    def __init__(self, rt: Runtime) -> None:
        self.pid = os.getpid()
        self._rt = rt
        self._active: dict[str, Active] = {}
        self._lock = threading.Lock()
        if threading.current_thread() is threading.main_thread():
            signal.signal(_INTERRUPT, self._interrupt)
        CancelListener(rt.settings.redis_url, self.cancel)

    def begin(self, claim: Claim) -> Active:
        active = Active(claim)
        with self._lock:
            self._active[claim.run_id] = active
        return active

    def end(self, active: Active) -> None:
        active.done.set()
        with self._lock:
            if self._active.get(active.claim.run_id) is active:
                del self._active[active.claim.run_id]

    def cancel(self, run_id: str) -> None:
        """Ask the attempt of ``run_id`` to stop, if this process runs it."""
        with self._lock:
            active = self._active.get(run_id)
        if active is None or active.cancelled.is_set():
            return
        active.cancelled.set()
        log.info("cancel requested", extra={"run_id": run_id, "attempt": active.claim.attempt})
        grace = self._rt.settings.cancel_grace_s
        threading.Thread(target=self._enforce, args=(active, grace),
                         name=f"cancel-{run_id}", daemon=True).start()

    def _enforce(self, active: Active, grace_s: float) -> None:
        if active.done.wait(grace_s):
            return
        log.warning("agent ignored the cancel request; interrupting it",
                    extra={"run_id": active.claim.run_id})
        os.kill(os.getpid(), _INTERRUPT)
        if active.done.wait(_INTERRUPT_PATIENCE_S):
            return
        self._terminate(active)

    def _terminate(self, active: Active) -> None:
        claim = active.claim
        outcome = Outcome(RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error={
            "type": "Cancelled",
            "message": f"attempt {claim.attempt} did not stop within the cancel grace; "
                       "its process was terminated"})
        try:
            with self._rt.db.transaction() as session:
                attempts.finish(session, claim=claim, outcome=outcome)
        except LeaseLost:
            return
        log.error("agent would not stop; terminating its process",
                  extra={"run_id": claim.run_id, "attempt": claim.attempt})
        os.kill(os.getpid(), signal.SIGKILL)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        """SIGUSR2: raise Cancelled in the agent, wherever it is."""
        if any(active.cancelled.is_set() for active in tuple(self._active.values())):
            raise Cancelled("the run was cancelled and did not stop within the grace period")
