"""The engine: one asyncio event loop per worker process, holding up to
``AGENTQ_WORKER_SLOTS`` attempts at once.

agentq's agents spend their time waiting on an LLM, so a worker process holds many runs, not
one: Celery hands each run's message to ``Engine.run`` (from a pool thread, at once; the
thread waits only while every slot is taken, so a full worker stops taking messages and the
queue, not the worker's memory, holds the excess), and the attempt goes on as a task of the
engine's loop.

- ``async def`` agents run on the loop; their ``ctx.llm`` calls share one aiohttp pool.
  The attempt's timeout reaches the agent as ``asyncio.CancelledError`` where it awaits.
- Plain ``def`` agents run in a bounded pool of threads (``AGENTQ_SYNC_AGENT_THREADS``);
  their LLM calls are made on the loop too. A sync run is claimed only once a thread is
  free for it (its message names its agent), so its time limits never tick while it waits;
  as many again wait unclaimed, and past that more go back to the queue (for other
  workers; this one goes on taking async runs). The
  timeout is raised into the agent's thread as ``SoftTimeLimitExceeded`` (at its next
  line of Python: a blocking call finishes first).
- What talks to Postgres runs in a few database threads (``AGENTQ_DB_POOL_SIZE``), never
  on the loop, so 500 runs share a pool of connections, not 500 of them.
- Every attempt's lease is renewed by one statement a heartbeat for all of them.
- A cancel sets the flag ``ctx.cancelled`` and cancels an async agent's coroutine at once
  (``CancelledError`` where it awaits); a sync agent still running ``AGENTQ_CANCEL_GRACE_S``
  later has ``Cancelled`` raised into its thread. One that goes on anyway is given up on:
  its attempt is recorded, its slot freed, and whatever it still writes is refused by its
  lease. An attempt past its timeout plus ``AGENTQ_HARD_TIMEOUT_GRACE_S`` is given up on
  the same way, recorded ``timed_out``.

A prefork worker (the ``cpu`` process, for CPU-bound agents) runs the same engine in each
child, one attempt at a time: its ``Engine.run`` waits for the attempt to end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import ctypes
import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from worker.agents import AgentSpec
from worker.base.bus import CancelListener
from worker.base.errors import Cancelled
from worker.base.models import AttemptOutcome, RunStatus
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.execution import execute
from worker.execution.execute import Active, SessionState
from worker.runs import attempts, dispatch, waits
from worker.runs.attempts import Claim, Outcome

log = logging.getLogger("agentq.engine")

T = TypeVar("T")
_INTERRUPT_PATIENCE_S = 2.0  # after an interrupt, how long before the engine gives up
_CLAIM_BATCH = 200  # runs claimed in one statement at most
_PAUSE_S = 1.0  # before a run goes back to the queue; between probes of Postgres
_WAKE_MARGIN_S = 0.05  # a deadline's message arrives just after it (clocks differ a little)
_handing_off = False  # this process is a worker whose pool threads hand runs over


def hand_off_runs() -> None:
    """This worker's pool is Celery's threads pool: its tasks hand each run to the engine
    and return at once (``worker.celery`` says so when the worker starts)."""
    global _handing_off
    _handing_off = True


def handing_off() -> bool:
    return _handing_off


class Engine:
    """This worker process's event loop and the attempts it holds."""

    @classmethod
    def of(cls, rt: Runtime) -> Engine:
        return rt.own("engine", lambda: cls(rt))

    def __init__(self, rt: Runtime) -> None:
        self.pid = os.getpid()
        self._rt = rt
        settings = rt.settings
        self.slots = settings.worker_slots
        self._free = threading.Semaphore(settings.worker_slots)
        # Sync runs handed over: a thread's worth running and as many waiting for a thread.
        self._sync_taken = threading.Semaphore(2 * settings.sync_agent_threads)
        self._threads_free = asyncio.Semaphore(settings.sync_agent_threads)
        self._holding: dict[str, _Hold] = {}  # the runs handed over and not let go of
        # Claims waiting for the claimer: many runs' claims in one statement.
        self._to_claim: list[tuple[str, str, asyncio.Future[Claim | None]]] = []
        self._claimer: asyncio.Future[None] | None = None
        # Postgres did not answer a claim: take no runs (they go back to the queue, for
        # other workers) until a probe reaches it again.
        self._db_down = False
        self._probe: asyncio.Future[None] | None = None
        self._open = True
        self._active: dict[str, Active] = {}
        self._lock = threading.Lock()
        self._db = concurrent.futures.ThreadPoolExecutor(
            settings.db_pool_size, thread_name_prefix="agentq-db")
        # The heartbeat's own thread: it never waits behind outcomes being written.
        self._beat_db = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentq-beat")
        self._pending = 0  # attempts handed over and not ended (claimed or not yet)
        self._agents = concurrent.futures.ThreadPoolExecutor(
            settings.sync_agent_threads, thread_name_prefix="agentq-agent")
        rt.bus.publish_in_background()  # many runs' events, few round trips
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="agentq-engine",
                         daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._beat(), self.loop)
        CancelListener(settings.redis_url, self.cancel, timeout_s=settings.dependency_timeout_s)

    # From Celery's threads -------------------------------------------------------------

    def run(self, run_id: str, worker: str, *, wait: bool, agent: str | None = None) -> bool:
        """Hold an attempt of ``run_id`` (of ``agent``, if the message says), waiting for a
        free slot; with ``wait``, until the attempt has ended. False (nothing done) once
        the engine has stopped taking runs."""
        if self._db_down:  # back to the queue, for a worker that reaches Postgres
            time.sleep(_PAUSE_S)
            return False
        if self._held_again(run_id):
            return True
        sync = self._is_sync(agent)
        if not self._take(self._free):
            return False
        # Every agent thread busy and as many runs waiting: back to the queue (after a
        # pause), so that this thread goes on taking other runs, async ones included.
        if sync and not self._sync_taken.acquire(blocking=False):
            self._free.release()
            time.sleep(_PAUSE_S)
            return False
        hold = _Hold()
        with self._lock:
            held = self._holding.setdefault(run_id, hold)
            if held is hold:
                self._pending += 1
            else:  # held since the look above: noted as there
                held.again = True
        if held is not hold:
            self._free.release()
            if sync:
                self._sync_taken.release()
            return True
        future = asyncio.run_coroutine_threadsafe(
            self._attempt(run_id, worker, hold, linger=wait, sync=sync), self.loop)
        future.add_done_callback(functools.partial(self._ended, run_id, hold, sync))
        if wait:
            future.result()
        return True

    def _held_again(self, run_id: str) -> bool:
        """Whether ``run_id`` is held here already: its message is then dropped (a copy: the
        sweeper's, a redelivery), but noted, in case its claim is refused (then the message
        may be the run's next, published once a place freed: the run is claimed again)."""
        with self._lock:
            held = self._holding.get(run_id)
            if held is not None:
                held.again = True
            return held is not None

    def _let_go(self, run_id: str, hold: _Hold) -> None:
        """Hold ``run_id`` no more (if ``hold`` still holds it): its next message starts an
        attempt of its own."""
        with self._lock:
            if self._holding.get(run_id) is hold:
                del self._holding[run_id]

    def _take(self, free: threading.Semaphore) -> bool:
        """Wait for one of ``free``; False (none taken) once the engine stops taking runs."""
        while not free.acquire(timeout=0.5):
            if not self._open:
                return False
        if not self._open:
            free.release()
            return False
        return True

    def _is_sync(self, agent: str | None) -> bool:
        """Whether ``agent`` is a plain ``def`` agent of this worker's (False if unknown:
        its claim records the failure)."""
        if agent is None:
            return False
        try:
            return not self._rt.registry.get(agent).is_async
        except Exception:
            return False

    def _ended(self, run_id: str, hold: _Hold, sync: bool,
               future: concurrent.futures.Future[None]) -> None:
        self._let_go(run_id, hold)
        with self._lock:
            self._pending -= 1
        self._free.release()
        if sync:
            self._sync_taken.release()
        if not future.cancelled() and future.exception() is not None:
            log.error("attempt failed in the engine", exc_info=future.exception())

    def stop_taking(self) -> None:
        """Take no more runs (a worker shutting down)."""
        self._open = False

    def drain(self, grace_s: float) -> list[Claim]:
        """Wait up to ``grace_s`` for the attempts held to end; the claims of those that
        have not (the caller re-queues them)."""
        deadline = time.monotonic() + grace_s
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self.running
        for active in left:  # re-queued by the caller: whatever they still write is refused
            active.lost = True
            self.loop.call_soon_threadsafe(self._stop_task, active)
        return [active.claim for active in left]

    def unclaimed(self) -> list[str]:
        """The runs handed over and not claimed (sync runs waiting for a thread)."""
        with self._lock:
            return sorted(set(self._holding) - set(self._active))

    @staticmethod
    def _stop_task(active: Active) -> None:
        if active.task is not None:
            active.task.cancel("the worker is shutting down")

    @property
    def running(self) -> list[Active]:
        with self._lock:
            return list(self._active.values())

    def cancel(self, run_id: str) -> None:
        """Ask the attempt of ``run_id`` to stop, if this process runs it (any thread)."""
        self.loop.call_soon_threadsafe(self._cancel, run_id)

    # On the loop ---------------------------------------------------------------------------

    async def _offload(self, work: Callable[[], T]) -> T:
        """Run ``work`` (it talks to Postgres) in a database thread."""
        return await self.loop.run_in_executor(self._db, work)

    async def _in_thread(self, work: Callable[[], T]) -> T:
        """Run ``work`` (an agent's plain step function) in an agent thread, in the
        caller's context (its step's span is its parent)."""
        return await self.loop.run_in_executor(self._agents, contextvars.copy_context().run,
                                               work)

    async def _attempt(self, run_id: str, worker: str, hold: _Hold, *, linger: bool = False,
                       sync: bool = False) -> None:
        """One attempt; a ``sync`` agent's once an agent thread is free for it."""
        if not sync:
            return await self._claimed(run_id, worker, hold, linger, None)
        await self._threads_free.acquire()
        thread = _Thread(self._threads_free)
        try:
            await self._claimed(run_id, worker, hold, linger, thread)
        finally:
            thread.release_unless_running()

    async def _claimed(self, run_id: str, worker: str, hold: _Hold, linger: bool,
                       thread: _Thread | None) -> None:
        """One attempt, from its claim to its record. With ``linger`` (a prefork child),
        an agent given up on is waited for still, so that the message's hard time limit
        kills the child it is running in (its replacement takes the next run)."""
        rt = self._rt
        if not self._open:  # stopping: left queued (the sweeper publishes it again)
            return
        try:
            claim = await self._claim_held(run_id, worker, hold)
        except (OperationalError, InterfaceError) as error:  # the sweeper dispatches it again
            log.warning("run not claimed: the database is unavailable",
                        extra={"run_id": run_id, "error": type(error).__name__})
            self._database_down()
            return
        if claim is None:
            return
        active = Active(claim, thread_hold=thread)
        with self._lock:
            self._active[claim.run_id] = active
        try:
            with execute.attempt_span(claim) as span:
                state: SessionState | None = None
                try:
                    if claim.session_id is not None:  # else no state: no thread hop for it
                        state = await self._offload(lambda: execute.session_state(rt, claim))
                    outcome = await self._call(active, state)
                except Exception as error:  # the engine's own failure: the attempt still ends
                    log.exception("attempt failed in the engine", extra={"run_id": run_id})
                    outcome = execute.failed(rt, claim, error)
                outcome, recorded = await self._offload(
                    lambda: execute.record(rt, claim, outcome, state))
                execute.ended_span(span, outcome)
        finally:
            with self._lock:
                if self._active.get(claim.run_id) is active:
                    del self._active[claim.run_id]
        if recorded and outcome.attempt_outcome == AttemptOutcome.SUSPENDED:
            self._let_go(claim.run_id, hold)  # its next message is not a copy of this one
            wake = self._wake(claim, outcome)
            if wake is not None:
                await self._offload(lambda: dispatch.dispatch(rt, wake))
        elif recorded and outcome.status == RunStatus.RETRYING:
            self._let_go(claim.run_id, hold)  # its next message is not a copy of this one
            rt.metrics.inc("agentq_run_retries", agent=claim.agent)
            job = Dispatch(claim.run_id, claim.queue, claim.timeout_s,
                           countdown_s=outcome.retry_in_s, agent=claim.agent, held=True)
            await self._offload(lambda: dispatch.dispatch(rt, job))
        log.info("run attempt finished",
                 extra=execute.finished_fields(claim, outcome, active.started))
        if linger and active.work is not None and not active.work.done():
            log.error("the agent given up on is still running; its process is ended at the "
                      "run's hard time limit", extra={"run_id": run_id})
            await asyncio.wait({active.work})

    @staticmethod
    def _wake(claim: Claim, outcome: Outcome) -> Dispatch | None:
        """The message of a run that suspended: now, if it is queued again already; at its
        deadline, if that is near (a later one is the sweeper's to wake)."""
        countdown = None
        if outcome.status == RunStatus.WAITING:
            if outcome.retry_in_s is None or outcome.retry_in_s > waits.WAKE_MESSAGE_MAX_S:
                return None
            countdown = outcome.retry_in_s + _WAKE_MARGIN_S
        # Held: its claim may be refused (a key, a session, a cap: the engine does not know
        # which runs have none), so it is marked dispatched before its message is sent.
        return Dispatch(claim.run_id, claim.queue, claim.timeout_s, countdown_s=countdown,
                        agent=claim.agent, held=True)

    async def _claim_held(self, run_id: str, worker: str, hold: _Hold) -> Claim | None:
        """Claim the run held; refused, claim it again if another message for it came
        meanwhile (a copy, or its next: sent after the commit that freed its place, which
        the claim may not have seen), else let go of it, so that its next one is taken."""
        while True:
            with self._lock:
                hold.again = False
            claim = await self._claim(run_id, worker)
            if claim is not None:
                return claim
            with self._lock:  # no message can come between this look and letting go
                if not hold.again:
                    if self._holding.get(run_id) is hold:
                        del self._holding[run_id]
                    return None

    async def _claim(self, run_id: str, worker: str) -> Claim | None:
        """Claim the run: with the claims of every other run that arrived while the last
        claims were being written, in one statement (one run's alone when it is quiet)."""
        rt = self._rt
        if rt.settings.tenant_max_running:  # counted under a lock, one claim at a time
            return await self._offload(lambda: execute.claim(rt, run_id=run_id, worker=worker))
        claimed: asyncio.Future[Claim | None] = self.loop.create_future()
        self._to_claim.append((run_id, worker, claimed))
        if self._claimer is None:
            self._claimer = asyncio.ensure_future(self._claim_waiting())
        return await claimed

    async def _claim_waiting(self) -> None:
        rt = self._rt
        try:
            while self._to_claim:
                batch, self._to_claim = (self._to_claim[:_CLAIM_BATCH],
                                         self._to_claim[_CLAIM_BATCH:])
                by_worker: dict[str, list[str]] = {}
                for run_id, worker, _ in batch:
                    if run_id not in by_worker.get(worker, ()):
                        by_worker.setdefault(worker, []).append(run_id)
                claims: dict[str, Claim] = {}
                try:
                    for worker, run_ids in by_worker.items():
                        claims.update(await self._offload(functools.partial(
                            execute.claim_many, rt, run_ids=run_ids, worker=worker)))
                except Exception as error:  # each waiting attempt hears of it
                    for _, _, claimed in batch:
                        if not claimed.done():
                            claimed.set_exception(error)
                    continue
                for run_id, _, claimed in batch:  # a run's claim to one of its askers only
                    if not claimed.done():
                        claimed.set_result(claims.pop(run_id, None))
        finally:
            self._claimer = None

    def _database_down(self) -> None:
        """Take no runs until Postgres answers again (a probe every second)."""
        if self._db_down:
            return
        self._db_down = True
        log.warning("the database is unreachable; this worker takes no runs until it answers")
        self._probe = asyncio.ensure_future(self._probe_database())

    async def _probe_database(self) -> None:
        rt = self._rt

        def probe() -> None:
            with rt.db.autocommit() as session:
                session.execute(text("SELECT 1"))

        while True:
            await asyncio.sleep(_PAUSE_S)
            try:
                await self._offload(probe)
            except Exception as error:  # still unreachable (each try is bounded)
                log.debug("database probe failed", extra={"error": type(error).__name__})
                continue
            self._db_down = False
            log.warning("the database answers again; this worker takes runs")
            return

    async def _call(self, active: Active, state: SessionState | None) -> Outcome:
        rt, claim = self._rt, active.claim
        try:
            spec = rt.registry.get(claim.agent)
        except Exception as error:  # unknown to this worker (not loaded here)
            return execute.failed(rt, claim, error)
        active.given_up = self.loop.create_future()
        hard: list[asyncio.TimerHandle] = []

        # The hard limit counts from here for every agent (a sync one has its thread, unless
        # its message did not name its agent and it waits for one).
        hard.append(self.loop.call_later(
            claim.timeout_s + rt.settings.hard_timeout_grace_s,
            lambda: self._give_up(active, _overran(rt, claim))))
        if spec.is_async:
            work = self._call_async(spec, active, state)
        else:
            work = self._call_sync(spec, active, state)
        running = asyncio.ensure_future(work)
        try:
            done, _ = await asyncio.wait({running, active.given_up},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for timer in hard:
                timer.cancel()
            if not active.given_up.done():
                active.given_up.cancel()  # a give-up still scheduled finds it done
        if running in done:
            return running.result()
        return active.given_up.result()

    async def _call_async(self, spec: AgentSpec, active: Active,
                          state: SessionState | None) -> Outcome:
        ctx = execute.async_context(self._rt, active, state.current if state else {},
                                    offload=self._offload, in_thread=self._in_thread)
        active.task = asyncio.ensure_future(execute.call_async(self._rt, spec, ctx, active,
                                                               state))
        if active.cancelled.is_set():  # asked to stop before its coroutine existed
            self._interrupt(active)
        active.work = active.task
        return await asyncio.shield(active.task)

    async def _call_sync(self, spec: AgentSpec, active: Active,
                         state: SessionState | None) -> Outcome:
        """Run a sync agent in an agent thread. Its soft limit starts when a thread takes
        it: a run waiting for one (all AGENTQ_SYNC_AGENT_THREADS busy) loses none of its
        timeout, only of the hard limit's grace."""
        rt, loop = self._rt, self.loop
        soft: list[asyncio.TimerHandle] = []

        def begin() -> None:  # on the loop, as the thread starts (before it can end)
            soft.append(loop.call_later(active.claim.timeout_s, _raise_in, active,
                                        SoftTimeLimitExceeded))

        def body() -> Outcome:
            with active.lock:
                active.thread = threading.get_ident()
            try:
                if active.stopping:  # cancelled (or its lease lost) while it waited
                    raise Cancelled("the run was cancelled before a thread was free for it")
                ctx = execute.sync_context(rt, active, state.current if state else {}, loop)
                loop.call_soon_threadsafe(begin)
                return execute.call_sync(rt, spec, ctx, active, state)
            finally:
                with active.lock:
                    active.thread = None

        try:
            active.work = loop.run_in_executor(self._agents, contextvars.copy_context().run,
                                               body)  # the attempt's span is its parent
            if active.thread_hold is not None:  # the agent thread it waited for is its own
                active.thread_hold.running(active.work)
            return await asyncio.shield(active.work)
        except BaseException as error:  # raised into the thread after the agent returned
            if isinstance(error, asyncio.CancelledError):
                raise
            return execute.ended_by(rt, active, error, execute.agent_log(active.claim))
        finally:
            for timer in soft:
                timer.cancel()

    def _give_up(self, active: Active, outcome: Outcome) -> None:
        """Stop waiting for the agent: its attempt ends with ``outcome``."""
        if (active.given_up is not None and not active.given_up.done()
                and self._holds(active)):
            log.error("agent given up on", extra={"run_id": active.claim.run_id,
                                                  "why": (outcome.error or {}).get("message")})
            active.given_up.set_result(outcome)

    def _cancel(self, run_id: str) -> None:
        with self._lock:
            active = self._active.get(run_id)
        if active is None or active.cancelled.is_set():
            return
        active.cancelled.set()
        log.info("cancel requested", extra={"run_id": run_id, "attempt": active.claim.attempt})
        if active.task is not None:  # a coroutine: cancelled where it awaits, at once
            self._interrupt(active)
        else:  # a thread: it has the grace to see ctx.cancelled and return what it has
            self.loop.call_later(self._rt.settings.cancel_grace_s, self._interrupt, active)

    def _interrupt(self, active: Active) -> None:
        """Raise into the agent (CancelledError where an async one awaits; Cancelled in a
        sync one's thread, which ignored the flag for the grace), then give up on it."""
        if active.given_up is None or active.given_up.done() or not self._holds(active):
            return
        if active.task is not None:
            active.task.cancel("the run was cancelled")
        else:
            log.warning("agent ignored the cancel request; interrupting it",
                        extra={"run_id": active.claim.run_id})
            _raise_in(active, Cancelled)
        within = "" if active.task is not None else " within the grace"
        self.loop.call_later(_INTERRUPT_PATIENCE_S, self._give_up, active, Outcome(
            RunStatus.CANCELLED, AttemptOutcome.CANCELLED, error={
                "type": "Cancelled",
                "message": f"attempt {active.claim.attempt} was cancelled and did not stop"
                           f"{within}; it was given up on (whatever it still writes is "
                           "refused)"}))

    def _holds(self, active: Active) -> bool:
        with self._lock:
            return self._active.get(active.claim.run_id) is active

    async def _beat(self) -> None:
        """Renew every held attempt's lease, one statement a heartbeat; learn of cancels
        (when the bus's notice was lost) and of leases lost."""
        rt = self._rt
        while True:
            await asyncio.sleep(rt.settings.heartbeat_interval_s)
            held = self.running
            if not held:
                continue
            leases = [(active.claim.run_id, active.claim.epoch) for active in held]

            def renew(leases: list[tuple[str, int]] = leases) -> dict[str, bool]:
                with rt.db.autocommit() as session:
                    return attempts.heartbeat(session, leases=leases)

            try:
                live = await self.loop.run_in_executor(self._beat_db, renew)
            except Exception as error:  # an outage: try again at the next beat
                log.warning("heartbeat failed", extra={"runs": len(leases),
                                                       "error": type(error).__name__})
                continue
            for active in held:
                run_id = active.claim.run_id
                if run_id not in live and self._holds(active):
                    active.lost = True
                    log.warning("lease lost; the attempt should stop",
                                extra={"run_id": run_id, "attempt": active.claim.attempt})
                elif live.get(run_id):
                    self._cancel(run_id)


@dataclasses.dataclass(eq=False)
class _Hold:
    """A run handed over to the engine, from its message until the engine lets go of it."""

    again: bool = False  # another message for it came while it was held


class _Thread:
    """A sync run's hold on one of the agent threads, taken before its claim and given
    back when the agent's thread is free again (not when the engine gives up on it)."""

    def __init__(self, free: asyncio.Semaphore) -> None:
        self._free = free
        self._held = True
        self._handed = False

    def running(self, work: asyncio.Future[Any]) -> None:
        self._handed = True
        work.add_done_callback(lambda _: self._release())

    def release_unless_running(self) -> None:
        if not self._handed:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._free.release()


def _overran(rt: Runtime, claim: Claim) -> Outcome:
    """An attempt past its timeout and the hard grace: timed out (retried by its policy)."""
    outcome = execute.failed(rt, claim, SoftTimeLimitExceeded())
    return dataclasses.replace(outcome, error={
        "type": "TimeLimitExceeded",
        "message": f"attempt {claim.attempt} ran past its hard time limit and was given up "
                   "on (whatever it still writes is refused)"})


def _raise_in(active: Active, error: type[BaseException]) -> None:
    """Raise ``error`` in the thread running ``active``'s sync agent, at its next line of
    Python (a blocking call it is in finishes first)."""
    with active.lock:
        if active.thread is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(active.thread),
                                                       ctypes.py_object(error))

