"""Submitting a run: apply the agent's policy, store it, dispatch it, optionally wait.

Every way in (HTTP, WebSocket, inbound webhooks) goes through ``submit``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from worker.base import jsonb, tracing
from worker.base.errors import Conflict, InvalidRequest
from worker.base.models import Run, RunStatus
from worker.base.runtime import Runtime
from worker.base.ssrf import Guard, refuse_internal
from worker.runs import admission, delays, dispatch, outbox, sessions, store
from worker.runs.follow import follow


@dataclass(frozen=True)
class RunRequest:
    """What a client asked for; unset policy fields fall back to the agent's, then settings'."""

    agent: str
    input: Any = field(default_factory=dict)
    timeout_s: int | None = None
    max_attempts: int | None = None
    session_id: str | None = None
    webhook_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    reply_url: str | None = None  # a Slack response_url: the answer goes there
    multitask: str | None = None  # enqueue, reject or interrupt (default: the agent's)
    priority: str = "normal"  # high, normal or low: its queue, unless the agent names one
    start_at: datetime | None = None
    delay_s: float | None = None
    ttl_s: float | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    concurrency_key: str | None = None  # stands in for the value at the agent's Limit key


def plan(rt: Runtime, request: RunRequest) -> store.NewRun:
    """Resolve the run's policy and check its input; raise InvalidRequest listing problems."""
    spec = rt.registry.get(request.agent)
    settings = rt.settings
    _check_input(request, settings.max_input_bytes, settings.max_json_depth)
    try:
        spec.parse_input(request.input)
    except ValidationError as error:
        raise InvalidRequest.from_validation(error, prefix="input") from None
    if request.webhook_url:
        refuse_internal(request.webhook_url, guard=Guard.of(rt.settings),
                                 field="webhook_url")
    timeout_s = request.timeout_s or spec.timeout_s or settings.default_timeout_s
    if timeout_s > settings.max_timeout_s:
        raise InvalidRequest(
            "timeout_s is over the limit",
            [{"field": "timeout_s",
              "message": f"must be at most {settings.max_timeout_s} (AGENTQ_MAX_TIMEOUT_S)"}],
        )
    limit = spec.concurrency
    key = request.concurrency_key if request.concurrency_key is not None else (
        limit.value(request.input) if limit is not None else None)
    return store.NewRun(
        concurrency_key=key,
        concurrency_max=(limit.max if limit is not None else 1) if key is not None else None,
        concurrency_strategy=limit.strategy if limit is not None else "queue",
        agent=spec.name,
        input=request.input,
        timeout_s=timeout_s,
        max_attempts=request.max_attempts or spec.max_attempts or settings.default_max_attempts,
        queue=spec.queue or f"runs.{request.priority}",
        priority=request.priority,
        session_id=request.session_id,
        webhook_url=request.webhook_url,
        metadata=request.metadata,
        request_id=request.request_id,
        reply_url=request.reply_url,
        multitask=request.multitask or spec.multitask,
        start_at=request.start_at,
        delay_s=request.delay_s,
        ttl_s=request.ttl_s,
        schedule_id=request.schedule_id,
        scheduled_for=request.scheduled_for,
    )


def _check_input(request: RunRequest, max_bytes: int, max_depth: int) -> None:
    """Refuse an input that is too big or nested too deep (resource exhaustion), and any
    input or metadata that Postgres's jsonb could not store (NaN, Infinity, U+0000)."""
    level, depth = [request.input], 0
    while level:
        depth += 1
        if depth > max_depth:
            raise InvalidRequest("input is nested too deeply", [{
                "field": "input", "message": f"at most {max_depth} levels of nesting "
                                             "(AGENTQ_MAX_JSON_DEPTH)"}])
        level = [child for item in level if isinstance(item, dict | list)
                 for child in (item.values() if isinstance(item, dict) else item)]
    try:
        encoded = jsonb.dumps(request.input, what="input")
        jsonb.check(request.metadata, what="metadata")
    except jsonb.Unstorable as error:
        raise InvalidRequest(str(error), [{"field": error.path, "message": str(error)}]) from None
    if len(encoded) > max_bytes:
        raise InvalidRequest("input is too large", [{
            "field": "input", "message": f"at most {max_bytes} bytes as JSON "
                                         "(AGENTQ_MAX_INPUT_BYTES)"}])


@dataclass(frozen=True)
class Stored:
    """A run just stored: may it start now, and which runs must be told to stop first."""

    run: Run
    ready: bool
    interrupted: list[str]
    published_later: bool = False  # marked dispatched already, for a publisher to send


def store_run(rt: Runtime, session: Session, *, tenant_id: str, new: store.NewRun) -> Stored:
    """Store a planned run under the tenant's caps and its session's double-texting policy
    (``enqueue`` waits its turn; ``reject`` is 409 while a run is going; ``interrupt``
    cancels the runs going first). Call within the transaction that creates it, in
    ``admission.admitted`` (a full figure is counted again once)."""
    settings = rt.settings
    _require_secret(session, tenant_id, new)
    admission.take(session, tenant_id=tenant_id, caps=admission.Caps.of(settings))
    interrupted = []
    if new.session_id:
        sessions.ensure(session, tenant_id=tenant_id, session_id=new.session_id)
        active = store.active_in_session(session, tenant_id=tenant_id,
                                        session_id=new.session_id)
        if active and new.multitask == "reject":
            raise Conflict(f"session {new.session_id!r} has run {active[0].id} in progress "
                           "(multitask: reject)", run_id=active[0].id)
        if active and new.multitask == "interrupt":
            for earlier in active:
                if store.cancel(session, tenant_id=tenant_id, run_id=earlier.id).notify_worker:
                    interrupted.append(earlier.id)
    if new.concurrency_key is not None and new.concurrency_strategy != "queue":
        interrupted += _make_room(session, tenant_id=tenant_id, new=new)
    run = store.create(session, tenant_id=tenant_id, new=new)
    held_back = (new.session_id is not None or settings.tenant_max_running > 0
                 or new.concurrency_key is not None)
    ready = not held_back or store.may_start(session, run_id=run.id,
                                            running_cap=settings.tenant_max_running)
    return Stored(run, ready, interrupted)


def _make_room(session: Session, *, tenant_id: str, new: store.NewRun) -> list[str]:
    """The key's strategy, under the key's lock: cancel its runs going
    (``cancel_in_progress``), or those not started yet (``keep_latest``); the running ones
    to tell to stop."""
    assert new.concurrency_key is not None
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext(
        literal(tenant_id) + "/" + new.concurrency_key))))
    statuses = [RunStatus.SCHEDULED, RunStatus.QUEUED, RunStatus.RETRYING]
    if new.concurrency_strategy == "cancel_in_progress":
        statuses += [RunStatus.RUNNING, RunStatus.WAITING]
    going = session.scalars(select(Run.id).where(
        Run.tenant_id == tenant_id, Run.concurrency_key == new.concurrency_key,
        Run.status.in_(statuses)).order_by(Run.id))
    return [run_id for run_id in list(going)
            if store.cancel(session, tenant_id=tenant_id, run_id=run_id).notify_worker]


def _require_secret(session: Session, tenant_id: str, new: store.NewRun) -> None:
    """A run's webhook_url needs the tenant's signing secret (reads only then)."""
    if new.webhook_url:
        outbox.require_default_secret(session, tenant_id=tenant_id)


def launch(rt: Runtime, stored: Stored) -> None:
    """After commit: tell interrupted runs to stop, and dispatch the run if it may start."""
    rt.metrics.inc("agentq_runs_submitted", agent=stored.run.agent)
    for run_id in stored.interrupted:
        rt.bus.request_cancel(run_id)
    if stored.ready:
        job = delays.dispatch_of(stored.run)
        if job is not None:
            dispatch.dispatch(rt, job)


def submit(rt: Runtime, *, tenant_id: str, request: RunRequest) -> Run:
    """Store the run (committed before anything else) and dispatch it if it may start."""
    with tracing.span("agentq.submit", attributes={"agentq.agent": request.agent}) as span:
        run = _submit(rt, tenant_id=tenant_id, request=request)
        span.set_attributes({"agentq.run_id": run.id, "agentq.tenant": tenant_id})
        return run


def _submit(rt: Runtime, *, tenant_id: str, request: RunRequest) -> Run:
    new = dataclasses.replace(plan(rt, request), traceparent=tracing.traceparent())
    caps = admission.Caps.of(rt.settings)
    if (new.session_id is None and rt.settings.tenant_max_running == 0
            and new.concurrency_strategy == "queue"):
        # Most runs: the run, its first event and its slot under the caps in one statement
        # that needs no transaction around it (no BEGIN or COMMIT round trips, no session).
        if new.webhook_url:
            with rt.db.autocommit() as session:
                _require_secret(session, tenant_id, new)
        run = admission.admitted(rt.db, tenant_id=tenant_id, caps=caps, store=lambda: (
            store.create_alone(rt.db, tenant_id=tenant_id, new=new, caps=caps)))
        stored = Stored(run, True, [])
    else:  # a run of a session, or under a running cap: checked and stored in one transaction
        def in_transaction() -> Stored:
            with rt.db.transaction() as session:
                return store_run(rt, session, tenant_id=tenant_id, new=new)

        stored = admission.admitted(rt.db, tenant_id=tenant_id, caps=caps,
                                    store=in_transaction)
    launch(rt, stored)
    return stored.run


def wait_until_finished(rt: Runtime, *, tenant_id: str, run_id: str, timeout_s: float) -> Run:
    """Return the run once it is terminal or ``timeout_s`` has passed, whichever is first."""
    with rt.db.transaction() as session:
        run = store.get(session, tenant_id=tenant_id, run_id=run_id)
    if not RunStatus(run.status).is_terminal:
        for event in follow(rt, run_id=run_id, after=run.last_seq, tick_s=timeout_s,
                            max_s=timeout_s):
            if event is None or event.is_terminal:
                break
        with rt.db.transaction() as session:
            run = store.get(session, tenant_id=tenant_id, run_id=run_id)
    return run
