"""Child runs: an agent starts agents (``ctx.start``, ``ctx.map``) and waits for them
(``child.result``, ``ctx.gather``) as a run ``waiting``, holding no worker slot.

**Exactly once.** A child is named under its parent (``name``, default ``<agent>:<n>`` in
call order), and ``(parent_id, child_name)`` is unique: an attempt that starts a child its
run started before (a retry, a crash between the start and going on, a wake from a wait)
gets that child back. The child's row, its first event, the parent's ``child.started``
event and the parent's count of children commit together, under the parent's lease.

**Waiting.** A wait reads the parent's children, locks those still going (``FOR SHARE``),
then the parent's row (fenced by its lease), and makes a waitpoint of kind ``child`` for
each one still going; the attempt then suspends (``waits.Suspend``) and the run waits. A
child's end, which holds the child's row, completes that waitpoint and, if it is the one
that wakes the parent, queues the parent in its own transaction (``worker.runs.tree``), so
one of the two always sees the other. The next attempt replays the parent's steps, finds
its children by name, and goes on. ``gather`` is woken by the end of the last child still
going (``Waitpoint.wakes``; the others' ends are read when it looks again), or at the first
of their deadlines; with ``fail_fast``, and in ``map`` (to start the next input as a place
frees up), by any one's end.

**Limits.** ``AGENTQ_MAX_RUN_DEPTH`` and ``AGENTQ_MAX_CHILDREN`` are checked in the
statement that counts the child (``RunTreeLimit``: the run fails, not the queue filling up);
children count against the tenant's queued and running caps like any run, and their policy
(timeout, attempts, priority) is their agent's unless the parent gives one.

**Cancel.** A parent that ends cancelled has its children not ``detach``-ed cancelled after
the commit (``cancel_children``), and the sweeper finishes that for any a crash left
(``cancel_orphans``); a child's cancel is a ``ChildFailed`` where its parent waits.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.base.errors import (
    ChildFailed,
    Conflict,
    InvalidRequest,
    LeaseLost,
    LimitExceeded,
    NotFound,
    RetryableError,
    RunTreeLimit,
    WaitTimeout,
)
from worker.base.models import TERMINAL_STATUSES, RunStatus, new_id
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.runs import (
    admission,
    dispatch,
    events,
    lifecycle,
    readiness,
    store,
    submission,
    tree,
    waits,
)

log = logging.getLogger(__name__)

# What ctx.start passes on to the child's request (the rest is the agent's policy).
OPTIONS = frozenset({"timeout_s", "max_attempts", "priority", "metadata", "session_id",
                     "concurrency_key", "delay_s", "start_at", "ttl_s"})
_START_CHUNK = 200  # children started in one transaction at most
_ENDED = ", ".join(f"'{status.value}'" for status in TERMINAL_STATUSES)


@dataclass(frozen=True)
class Parent:
    """The attempt that starts children and waits for them."""

    run_id: str
    tenant_id: str
    epoch: int
    attempt: int


@dataclass(frozen=True)
class ChildState:
    """A child as its parent finds it."""

    id: str
    name: str
    agent: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def ended(self) -> bool:
        return RunStatus(self.status).is_terminal

    @property
    def failed(self) -> bool:
        return RunStatus(self.status) in tree.FAILED_STATUSES

    def outcome(self) -> Any:
        """Its result, or ChildFailed."""
        if self.failed:
            raise ChildFailed(child_id=self.id, name=self.name, status=self.status,
                              error=self.error)
        return self.result


_FIND = text("""
    SELECT id, child_name, agent, status, result, error FROM runs
    WHERE parent_id = :parent_id AND child_name = ANY(:names)
""")
_LOCK_CHILDREN = text("""
    SELECT id, child_name, agent, status, result, error FROM runs
    WHERE parent_id = :parent_id AND id = ANY(:ids) ORDER BY id FOR SHARE
""")

# The parent counts its new children and reserves the seqs of their child.started events,
# under its lease; the row it returns says how many it has.
_TAKE = text("""
    UPDATE runs SET children = children + :count, last_seq = last_seq + :count
    WHERE id = :run_id AND lease_epoch = :epoch AND status = 'running'
    RETURNING children, last_seq
""")

_TREE = text("SELECT depth, root_id FROM runs WHERE id = :run_id")

_HOLD = text("""
    SELECT id FROM runs
    WHERE id = :run_id AND lease_epoch = :epoch AND status = 'running' FOR UPDATE
""")

# The parent's waitpoints for the children it waits on (made once; a later wait keeps the
# first deadline), and whether each is past it. Those named in :wakes wake the parent when
# their child ends; the others' ends are read at its next look. One completed by an end
# of its child that has since been replayed (its row is locked, going) waits again, from
# this wait's deadline: it would wake the parent at once, and again at every look, until
# the child ended.
_WAITPOINTS = text("""
    WITH made AS (
        INSERT INTO waitpoints (id, run_id, tenant_id, name, kind, status, deadline, attempt,
                                wakes)
        SELECT 'wp_' || md5(:run_id || name), :run_id, :tenant_id, name, 'child', 'waiting',
               now() + make_interval(secs => :timeout_s), :attempt,
               name = ANY(CAST(:wakes AS text[]))
        FROM unnest(CAST(:names AS text[])) AS name
        ON CONFLICT (run_id, name) DO UPDATE SET wakes = EXCLUDED.wakes, status = 'waiting',
            data = NULL, completed_at = NULL, completed_by = NULL,
            deadline = CASE WHEN waitpoints.status = 'completed' THEN EXCLUDED.deadline
                            ELSE waitpoints.deadline END,
            attempt = CASE WHEN waitpoints.status = 'completed' THEN EXCLUDED.attempt
                           ELSE waitpoints.attempt END
            WHERE (waitpoints.status = 'waiting' AND waitpoints.wakes <> EXCLUDED.wakes)
               OR waitpoints.status = 'completed'
        RETURNING id, name, status, deadline
    )
    SELECT id, name, status, deadline <= now() AS due FROM made
    UNION ALL
    SELECT w.id, w.name, w.status, w.deadline <= now() FROM waitpoints AS w
    WHERE w.run_id = :run_id AND w.name = ANY(CAST(:names AS text[]))
      AND w.name NOT IN (SELECT name FROM made)
""")


def find(session: Session, *, parent_id: str, names: list[str],
         lock_ids: list[str] | None = None) -> dict[str, ChildState]:
    """The parent's children named; with ``lock_ids``, only those, locked (``FOR SHARE``,
    in id order) until the transaction ends."""
    if lock_ids is not None:
        rows = session.execute(_LOCK_CHILDREN, {"parent_id": parent_id, "ids": lock_ids})
    else:
        rows = session.execute(_FIND, {"parent_id": parent_id, "names": names})
    return {row.child_name: ChildState(row.id, row.child_name, row.agent, row.status,
                                       row.result, row.error) for row in rows}


@dataclass(frozen=True)
class Spec:
    """A child to start: its name under its parent, its agent and input, its options."""

    name: str
    agent: str
    input: Any
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    detach: bool = False


def start(rt: Runtime, parent: Parent, spec: Spec) -> ChildState:
    """The child ``spec.name`` of the parent: started now, or as an earlier attempt
    started it."""
    with rt.db.autocommit() as session:
        known = find(session, parent_id=parent.run_id, names=[spec.name])
    if spec.name in known:
        return known[spec.name]
    return start_many(rt, parent, [spec])[0]


def start_many(rt: Runtime, parent: Parent, specs: list[Spec]) -> list[ChildState]:
    """Start children not started yet, in one transaction: their rows and first events,
    the parent's count and its ``child.started`` events. If one of them was made meanwhile
    (by an attempt that has lost its lease since), each is started on its own instead."""
    planned = [_plan(rt, spec) for spec in specs]
    settings = rt.settings

    def store_children() -> list[submission.Stored]:
        # The parent's row is locked last (a waking child's end waits for that lock): read
        # how deep it is first, and count the children, under its lease, just before the
        # commit; a lease lost meanwhile, or a limit passed, takes the children back.
        with rt.db.transaction() as session:
            tree_of = session.execute(_TREE, {"run_id": parent.run_id}).one()
            if tree_of.depth + 1 > settings.max_run_depth:
                raise RunTreeLimit(f"child {specs[0].name!r} would be {tree_of.depth + 1} "
                                   f"runs deep; at most {settings.max_run_depth} "
                                   "(AGENTQ_MAX_RUN_DEPTH)")
            children = [dataclasses.replace(
                new, parent_id=parent.run_id, root_id=tree_of.root_id or parent.run_id,
                child_name=spec.name, depth=tree_of.depth + 1, detached=spec.detach)
                for spec, new in zip(specs, planned, strict=True)]
            stored = _store(rt, session, tenant_id=parent.tenant_id, children=children)
            row = session.execute(_TAKE, {"run_id": parent.run_id, "epoch": parent.epoch,
                                          "count": len(specs)}).one_or_none()
            if row is None:
                raise LeaseLost(f"run {parent.run_id}: lease epoch {parent.epoch} is no "
                                "longer current")
            if row.children > settings.max_children:
                raise RunTreeLimit(f"run {parent.run_id} may start at most "
                                   f"{settings.max_children} children (AGENTQ_MAX_CHILDREN)")
            events.record_many(
                session, run_id=parent.run_id, first=row.last_seq - len(specs) + 1,
                type=events.PROGRESS, data=[{
                    "phase": "child.started", "child_id": one.run.id, "name": spec.name,
                    "agent": spec.agent, "message": f"Child {spec.name} ({spec.agent}) started"}
                    for spec, one in zip(specs, stored, strict=True)])
            return stored

    try:
        stored = admission.admitted(rt.db, tenant_id=parent.tenant_id,
                                    caps=admission.Caps.of(settings), store=store_children)
    except IntegrityError:  # one was made meanwhile
        if len(specs) == 1:
            with rt.db.autocommit() as session:
                return [find(session, parent_id=parent.run_id, names=[specs[0].name])[
                    specs[0].name]]
        return [start(rt, parent, spec) for spec in specs]
    except (admission.Full, LimitExceeded, Conflict) as full:  # the tenant's caps: later
        raise RetryableError(f"children not started: {full}", delay_s=30.0) from None
    jobs = []
    for one in stored:
        if not one.published_later:  # a session's, a key's, a delayed one: one by one
            submission.launch(rt, one)
            continue
        rt.metrics.inc("agentq_runs_submitted", agent=one.run.agent)
        jobs.append(Dispatch.of(one.run))
    if jobs:  # from the process's publisher, while the parent goes on to wait for them
        dispatch.Publisher.of(rt).publish(jobs, marked=True)
    return [ChildState(one.run.id, spec.name, one.run.agent, one.run.status)
            for one, spec in zip(stored, specs, strict=True)]


def _store(rt: Runtime, session: Session, *, tenant_id: str,
           children: list[store.NewRun]) -> list[submission.Stored]:
    """Store the children in the session's transaction: in one statement (as a batch's
    runs are) unless one has a session or a concurrency key, whose rules are kept run by
    run (``submission.store_run``)."""
    if any(child.session_id or child.concurrency_key is not None for child in children):
        return [submission.store_run(rt, session, tenant_id=tenant_id, new=child)
                for child in children]
    admission.take_many(session, tenant_id=tenant_id, caps=admission.Caps.of(rt.settings),
                        count=len(children))
    runs = store.create_many(session, tenant_id=tenant_id, news=children,
                             ids=sorted(new_id("run") for _ in children))  # in their order
    ready = readiness.may_start_now(session, runs=runs,
                                    running_cap=rt.settings.tenant_max_running)
    # Marked dispatched now, published after the commit by the process's publisher: a
    # thousand messages take it a while, and the sweeper is not to send them meanwhile.
    # (If the process dies first, the sweeper finds them missing from their queue.)
    marked = [run.id for run in runs if run.id in ready and run.status == RunStatus.QUEUED]
    dispatch.mark_dispatched(session, run_ids=marked)
    return [submission.Stored(run, run.id in ready, [], published_later=run.id in marked)
            for run in runs]


def _plan(rt: Runtime, spec: Spec) -> store.NewRun:
    unknown = set(spec.options) - OPTIONS
    if unknown:
        raise TypeError(f"ctx.start takes no option {sorted(unknown)[0]!r} (it takes "
                        f"{', '.join(sorted(OPTIONS))})")
    try:
        return submission.plan(rt, submission.RunRequest(agent=spec.agent, input=spec.input,
                                                         **spec.options))
    except (InvalidRequest, NotFound) as error:
        raise InvalidRequest(f"ctx.start({spec.agent!r}, name={spec.name!r}): {error}",
                             getattr(error, "errors", None)) from None


@dataclass(frozen=True)
class Waited:
    """The children waited for, and the waitpoints of those still going."""

    states: dict[str, ChildState]
    waiting: dict[str, str]  # child name -> its waitpoint id
    timed_out: list[str]


def look(rt: Runtime, parent: Parent, *, names: list[str], timeout_s: float,
         wake_on_last: bool = False) -> Waited:
    """The children ``names`` as they stand, under the parent's lock, with a waitpoint for
    each one still going (its child's end completes it, and queues the waiting parent
    again; with ``wake_on_last``, only the last one's: a parent waiting for all of them
    need not run again as each of the others ends)."""
    if not 0 < timeout_s <= waits.MAX_WAIT_S:
        raise ValueError(f"timeout_s is a number of seconds from 0 to {waits.MAX_WAIT_S}")
    with rt.db.transaction() as session:
        states = find(session, parent_id=parent.run_id, names=names)
        missing = [name for name in names if name not in states]
        if missing:
            raise ValueError(f"run {parent.run_id} has no child named {missing[0]!r}")
        # The children going, locked (child before parent, as their ends lock them) and
        # read again: an end under way has committed by now, a later one waits for this.
        going_ids = [state.id for state in states.values() if not state.ended]
        if going_ids:
            states.update(find(session, parent_id=parent.run_id, names=names,
                               lock_ids=going_ids))
        if session.execute(_HOLD, {"run_id": parent.run_id,
                                   "epoch": parent.epoch}).first() is None:
            raise LeaseLost(f"run {parent.run_id}: lease epoch {parent.epoch} is no longer "
                            "current")
        tree.report(session, parent_id=parent.run_id)
        going = [tree.waitpoint_name(name) for name in names if not states[name].ended]
        waiting, timed_out = {}, []
        if going:
            for row in session.execute(_WAITPOINTS, {
                    "run_id": parent.run_id, "tenant_id": parent.tenant_id, "names": going,
                    "wakes": going[-1:] if wake_on_last else going,
                    "timeout_s": timeout_s, "attempt": parent.attempt}):
                child = row.name.removeprefix("child:")
                if row.due:
                    timed_out.append(child)
                else:
                    waiting[child] = row.id
    return Waited(states, waiting, timed_out)


class Children:
    """What ``ctx.start``, ``child.result``, ``ctx.gather`` and ``ctx.map`` do, for one
    attempt (sync: called from the agent's thread; the async context offloads it)."""

    def __init__(self, rt: Runtime, parent: Parent) -> None:
        self._rt = rt
        self._parent = parent
        self._numbers: dict[str, int] = {}

    def name_for(self, agent: str, name: str | None) -> str:
        if name is not None:
            if not isinstance(name, str) or not 0 < len(name) <= 200:
                raise ValueError("a child's name is a string of 1 to 200 characters")
            return name
        self._numbers[agent] = self._numbers.get(agent, 0) + 1
        return f"{agent}:{self._numbers[agent]}"

    def start(self, agent: str, input: Any, *, name: str | None, detach: bool,
              options: dict[str, Any]) -> ChildState:
        return start(self._rt, self._parent, Spec(self.name_for(agent, name), agent, input,
                                                  options, detach))

    def gather(self, names: list[str], *, fail_fast: bool, timeout_s: float) -> list[Any]:
        """The children's results in order, once all ended (or the first failure, with
        ``fail_fast``); else the attempt suspends until the last of those going ends (with
        ``fail_fast``: until any ends), or the first of their deadlines passes."""
        waited = look(self._rt, self._parent, names=names, timeout_s=timeout_s,
                      wake_on_last=not fail_fast)
        states = [waited.states[name] for name in names]
        if fail_fast:
            for state in states:
                if state.failed:
                    state.outcome()
        if waited.timed_out:
            raise WaitTimeout(f"child:{waited.timed_out[0]}", timeout_s)
        going = [name for name in names if name in waited.waiting]
        if going:  # woken by the last going's end (any's, with fail_fast), or the first
            chosen = going if fail_fast else going[-1:]  # deadline of them all
            raise waits.Suspend([waited.waiting[name] for name in chosen],
                                [f"child:{name}" for name in chosen],
                                deadline_ids=[waited.waiting[name] for name in going])
        return [state.outcome() for state in states]

    def map(self, agent: str, inputs: list[Any], *, max_concurrency: int | None,
            prefix: str, fail_fast: bool, timeout_s: float,
            options: dict[str, Any]) -> list[Any]:
        """One child of ``agent`` per input (``<prefix>:<i>``), at most ``max_concurrency``
        going at once, the next started as one ends; their results in the inputs' order."""
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency is at least 1 (or None: all at once)")
        names = [f"{prefix}:{i}" for i in range(len(inputs))]
        if not names:
            return []
        with self._rt.db.autocommit() as session:
            known = find(session, parent_id=self._parent.run_id, names=names)
        limit = max_concurrency or len(names)
        going = sum(1 for state in known.values() if not state.ended)
        due = [Spec(name, agent, inputs[index], options)
               for index, name in enumerate(names) if name not in known]
        due = due[:max(0, limit - going)]
        for chunk in range(0, len(due), _START_CHUNK):  # a transaction for each
            specs = due[chunk:chunk + _START_CHUNK]
            for spec, state in zip(specs, start_many(self._rt, self._parent, specs),
                                   strict=True):
                known[spec.name] = state
        started = [name for name in names if name in known]
        if len(started) == len(names):
            return self.gather(names, fail_fast=fail_fast, timeout_s=timeout_s)
        # More to start: wait for any of those going, to start the next in its place.
        waited = look(self._rt, self._parent, names=started, timeout_s=timeout_s)
        if fail_fast:
            for name in started:
                if waited.states[name].failed:
                    waited.states[name].outcome()
        if waited.timed_out:
            raise WaitTimeout(f"child:{waited.timed_out[0]}", timeout_s)
        if not waited.waiting:  # all ended since: start the next ones now
            return self.map(agent, inputs, max_concurrency=max_concurrency, prefix=prefix,
                            fail_fast=fail_fast, timeout_s=timeout_s, options=options)
        raise waits.Suspend(list(waited.waiting.values()),
                            [f"child:{name}" for name in waited.waiting])


class AsyncChildren:
    """``Children`` for an async agent: the database's part offloaded to a thread."""

    def __init__(self, children: Children,
                 offload: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        self._children = children
        self._offload = offload

    async def start(self, agent: str, input: Any, *, name: str | None, detach: bool,
                    options: dict[str, Any]) -> ChildState:
        named = self._children.name_for(agent, name)  # numbered here, in call order
        state: ChildState = await self._offload(lambda: self._children.start(
            agent, input, name=named, detach=detach, options=options))
        return state

    async def gather(self, names: list[str], *, fail_fast: bool,
                     timeout_s: float) -> list[Any]:
        results: list[Any] = await self._offload(lambda: self._children.gather(
            names, fail_fast=fail_fast, timeout_s=timeout_s))
        return results

    async def map(self, agent: str, inputs: list[Any], *, max_concurrency: int | None,
                  prefix: str, fail_fast: bool, timeout_s: float,
                  options: dict[str, Any]) -> list[Any]:
        results: list[Any] = await self._offload(lambda: self._children.map(
            agent, inputs, max_concurrency=max_concurrency, prefix=prefix,
            fail_fast=fail_fast, timeout_s=timeout_s, options=options))
        return results


def cancel_children(rt: Runtime, *, tenant_id: str, parent_id: str,
                    limit: int = 1000) -> int:
    """Cancel the parent's children still going (those not detached), each in its own
    transaction (their own children follow, through their ends); how many."""
    with rt.db.autocommit() as session:
        going = list(session.scalars(text(f"""
            SELECT id FROM runs WHERE parent_id = :parent_id AND NOT detached
              AND status NOT IN ({_ENDED}) ORDER BY id LIMIT :limit
        """), {"parent_id": parent_id, "limit": limit}))  # noqa: S608 (constants only)
    cancelled = 0
    for child_id in going:
        try:
            with rt.db.transaction() as session:
                result = store.cancel(session, tenant_id=tenant_id, run_id=child_id)
        except (Conflict, NotFound):  # it ended meanwhile
            continue
        if result.notify_worker:
            rt.bus.request_cancel(child_id)
        cancelled += 1
    return cancelled


def after_commit(rt: Runtime, info: dict[str, Any]) -> None:
    """Cancel the children of the parents this transaction ended cancelled."""
    for tenant_id, parent_id in info.get(lifecycle.CANCELLED_PARENTS, []):
        cancel_children(rt, tenant_id=tenant_id, parent_id=parent_id)


def cancel_orphans(rt: Runtime, *, limit: int = 100) -> int:
    """The sweeper's repair: children still going whose parent was cancelled (a process
    that died between the parent's cancel and its children's)."""
    with rt.db.autocommit() as session:
        parents = session.execute(text(f"""
            SELECT DISTINCT p.tenant_id, p.id FROM runs AS c JOIN runs AS p ON p.id = c.parent_id
            WHERE c.parent_id IS NOT NULL AND NOT c.detached AND c.status NOT IN ({_ENDED})
              AND p.status = 'cancelled'
            LIMIT :limit
        """), {"limit": limit}).all()  # noqa: S608 (constants only)
    return sum(cancel_children(rt, tenant_id=row.tenant_id, parent_id=row.id)
               for row in parents)

