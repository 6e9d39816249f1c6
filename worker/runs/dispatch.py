"""Getting runs from Postgres to the broker without losing one.

The run is committed first, then published, then marked dispatched. If publishing fails
(broker down, process killed in between) the run stays unmarked and the sweeper publishes
it later. A run whose claim may be refused (a session's, a concurrency key's, any under a
tenant's running cap) is marked first instead: a refused claim unmarks it, to be dispatched
again when its place frees, and a mark written after that would leave it waiting for the
sweeper. If publishing it then fails it is unmarked; if its process dies in between, the
sweeper finds it missing from its queue (``AGENTQ_REDISPATCH_AFTER_S`` later). So are a
parent's children, marked in the transaction that makes them and published by the
process's ``Publisher`` after it (a thousand messages take it a while: the sweeper is not
to send them meanwhile).

If the broker loses messages it had (Redis restarted without its data, a message dropped
by a task that failed), the sweeper sees the queue hold fewer messages than
Postgres has waiting runs and publishes the longest-waiting ones again. A second publish of
the same run is harmless: only one claim can win.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import text
from sqlalchemy.orm import Session

from worker.base import breakers
from worker.base.gathering import Gatherer
from worker.base.queues import PUBLISH_RETRY_POLICY, RUN_TASK, Dispatch, declare_queue
from worker.base.runtime import Runtime

log = logging.getLogger(__name__)

SWEEP_BATCH = 500
_BACKSTOP_S = 10.0


def publish(rt: Runtime, job: Dispatch) -> bool:
    """Send the run's message; False (and a log line) if the broker did not take it.

    The engine keeps the attempt's time limits itself; the message's hard time limit is a
    backstop for a prefork worker only (it kills a child that is somehow still running a
    while after the engine gave up on its attempt).
    """
    settings = rt.settings

    def send() -> None:
        rt.celery.send_task(
            RUN_TASK, args=[job.run_id], kwargs={"agent": job.agent} if job.agent else None,
            queue=job.queue, countdown=job.countdown_s,
            time_limit=job.timeout_s + 2 * settings.hard_timeout_grace_s + _BACKSTOP_S,
            retry=True, retry_policy=PUBLISH_RETRY_POLICY,
            # Each try's write and broker confirm (RabbitMQ) is bounded here too: socket
            # options alone do not bound a read under gevent (the API's gunicorn workers).
            # A failed try, a reconnect and a second try: a third of the bound each.
            timeout=settings.dependency_timeout_s / 3,
            confirm_timeout=settings.dependency_timeout_s / 3,
        )

    # Through the broker's breaker: while it is known not to answer, "not sent" at once.
    broker = breakers.of(settings.celery_broker_url, reset_s=settings.dependency_timeout_s)
    try:
        broker.call(send)
    except Exception as error:  # kombu and redis raise many kinds; all mean "not sent"
        log.warning("publish failed; the sweeper will retry",
                    extra={"run_id": job.run_id, "error": f"{type(error).__name__}: {error}"})
        return False
    return True


def dispatch(rt: Runtime, job: Dispatch) -> bool:
    """Publish a committed run and have it marked dispatched (in a batch; first, if its
    claim may be refused); never raises."""
    if job.held or rt.settings.tenant_max_running > 0:
        return dispatch_marked(rt, [job]) == 1
    if not publish(rt, job):
        return False
    Marker.of(rt).add(job.run_id)
    return True


def dispatch_marked(rt: Runtime, jobs: list[Dispatch], *, marked: bool = False) -> int:
    """Mark the runs dispatched (unless the caller's committed transaction did) and publish
    them; unmark those the broker did not take. How many it took; never raises."""
    run_ids = [job.run_id for job in jobs]
    if not marked:
        try:
            with rt.db.autocommit() as session:
                mark_dispatched(session, run_ids=run_ids)
        except Exception as error:  # not marked: the sweeper publishes them
            log.warning("could not mark runs dispatched; the sweeper will publish them",
                        extra={"runs": len(run_ids),
                               "error": f"{type(error).__name__}: {error}"})
            return 0
    sent = set(publish_all(rt, jobs, reason="", quiet=True))
    unsent = [run_id for run_id in run_ids if run_id not in sent]
    if unsent:
        try:
            with rt.db.autocommit() as unmarking:
                mark_undispatched(unmarking, run_ids=unsent)
        except Exception as error:  # marked, not sent: the sweeper finds them missing
            log.warning("could not unmark runs not published",
                        extra={"runs": len(unsent),
                               "error": f"{type(error).__name__}: {error}"})
    return len(sent)


class Marker(Gatherer):
    """Marks published runs dispatched in batches: one UPDATE every 50 ms, not one per run.

    A run published but not yet marked when its process dies is published again by the
    sweeper (``AGENTQ_DISPATCH_GRACE_S`` later, if no worker has claimed it by then); a
    second message is harmless.
    """

    every_s = 0.05
    thread_name = "agentq-marker"

    @classmethod
    def of(cls, rt: Runtime) -> Marker:
        """This process's marker."""
        return rt.own("marker", lambda: cls(rt))

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        super().__init__()

    def handle(self, ids: list[str]) -> None:
        try:
            with self._rt.db.autocommit() as session:
                mark_dispatched(session, run_ids=ids)
        except Exception as error:  # published already: at worst a harmless re-publish
            log.warning("could not mark runs dispatched",
                        extra={"runs": len(ids), "error": f"{type(error).__name__}: {error}"})


class Publisher:
    """Publishes many runs stored at once (a batch's, a parent's children) from a thread of
    the process's own, in the order they were stored, while their request is answered (or
    their parent goes on): the broker's client spends about 0.3 ms of CPU on each message,
    so their messages cost more than storing them. A run whose message is lost with its
    process is published by the sweeper, as any run's is: ``AGENTQ_DISPATCH_GRACE_S`` after
    it was made, or, if it was ``marked``, once its queue is found short of it
    (``AGENTQ_REDISPATCH_AFTER_S``)."""

    @classmethod
    def of(cls, rt: Runtime) -> Publisher:
        """This process's publisher."""
        return rt.own("publisher", lambda: cls(rt))

    def __init__(self, rt: Runtime) -> None:
        self.pid = os.getpid()
        self._rt = rt
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="agentq-publisher")

    def publish(self, jobs: list[Dispatch], *, marked: bool = False) -> Future[None]:
        """Publish the runs (``marked``: their transaction marked them dispatched already,
        so the sweeper leaves them to this; those the broker does not take are unmarked)."""
        return self._pool.submit(self._publish, jobs, marked)

    def _publish(self, jobs: list[Dispatch], marked: bool) -> None:
        if marked:
            dispatch_marked(self._rt, jobs, marked=True)  # never raises
            return
        for job in jobs:
            dispatch(self._rt, job)  # never raises


def publish_all(rt: Runtime, jobs: list[Dispatch], *, reason: str,
                quiet: bool = False) -> list[str]:
    """Publish each job; return the ids that reached the broker (each logged with the
    sweeper's ``reason`` unless ``quiet``)."""
    broker = breakers.of(rt.settings.celery_broker_url,
                         reset_s=rt.settings.dependency_timeout_s)
    sent = []
    for job in jobs:
        if publish(rt, job):
            sent.append(job.run_id)
        elif broker.is_open:
            break  # the broker is not answering: the rest wait for the next sweep
    for run_id in [] if quiet else sent:
        log.info("run dispatched by the sweeper", extra={"run_id": run_id, "reason": reason})
    return sent


def broker_depths(rt: Runtime, queues: list[str]) -> dict[str, int]:
    """Messages ready in each queue. Declaring also restores lost bindings (Redis)."""
    depths = {}
    with rt.celery.connection_for_write() as connection:
        channel = connection.default_channel
        for name in queues:
            depths[name] = declare_queue(name, channel)
    return depths


_MARK_DISPATCHED = text("UPDATE runs SET dispatched_at = now() WHERE id = ANY(:ids)")
_MARK_UNDISPATCHED = text(
    "UPDATE runs SET dispatched_at = NULL WHERE id = ANY(:ids) AND status = 'queued'")


def mark_dispatched(session: Session, *, run_ids: list[str]) -> None:
    """Record that these runs' messages reached the broker."""
    if run_ids:
        session.execute(_MARK_DISPATCHED, {"ids": run_ids})


def mark_undispatched(session: Session, *, run_ids: list[str]) -> None:
    """These queued runs' messages were taken and not run (a stopping worker held them):
    the sweeper publishes them again after AGENTQ_DISPATCH_GRACE_S."""
    if run_ids:
        session.execute(_MARK_UNDISPATCHED, {"ids": run_ids})
