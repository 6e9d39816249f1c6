"""Submitting a run: apply the agent's policy, store it, dispatch it, optionally wait.

Every way in (HTTP, WebSocket, inbound webhooks) goes through ``submit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from worker import dispatch, runs, webhooks
from worker.attempts import Dispatch
from worker.errors import InvalidRequest
from worker.follow import follow
from worker.models import Run, RunStatus
from worker.runtime import Runtime
from worker.tasks import RUNS_QUEUE


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


def plan(rt: Runtime, request: RunRequest) -> runs.NewRun:
    """Resolve the run's policy and check its input; raise InvalidRequest listing problems."""
    spec = rt.registry.get(request.agent)
    try:
        spec.parse_input(request.input)
    except ValidationError as error:
        raise InvalidRequest.from_validation(error, prefix="input") from None
    settings = rt.settings
    if request.webhook_url:
        webhooks.refuse_internal(request.webhook_url, guard=rt.sender().guard,
                                 field="webhook_url")
    timeout_s = request.timeout_s or spec.timeout_s or settings.default_timeout_s
    if timeout_s > settings.max_timeout_s:
        raise InvalidRequest(
            "timeout_s is over the limit",
            [{"field": "timeout_s",
              "message": f"must be at most {settings.max_timeout_s} (AGENTQ_MAX_TIMEOUT_S)"}],
        )
    return runs.NewRun(
        agent=spec.name,
        input=request.input,
        timeout_s=timeout_s,
        max_attempts=request.max_attempts or spec.max_attempts or settings.default_max_attempts,
        queue=spec.queue or RUNS_QUEUE,
        session_id=request.session_id,
        webhook_url=request.webhook_url,
        metadata=request.metadata,
        request_id=request.request_id,
        reply_url=request.reply_url,
    )


def submit(rt: Runtime, *, tenant_id: str, request: RunRequest) -> Run:
    """Store the run (committed before anything else) and dispatch it."""
    new = plan(rt, request)
    with rt.db.transaction() as session:
        if new.webhook_url:
            webhooks.require_default_secret(session, tenant_id=tenant_id)
        run = runs.create(session, tenant_id=tenant_id, new=new)
    dispatch.dispatch(rt, Dispatch(run.id, run.queue, run.timeout_s))
    return run


def wait_until_finished(rt: Runtime, *, tenant_id: str, run_id: str, timeout_s: float) -> Run:
    """Return the run once it is terminal or ``timeout_s`` has passed, whichever is first."""
    with rt.db.transaction() as session:
        run = runs.get(session, tenant_id=tenant_id, run_id=run_id)
    if not RunStatus(run.status).is_terminal:
        for event in follow(rt, run_id=run_id, after=run.last_seq, tick_s=timeout_s,
                            max_s=timeout_s):
            if event is None or event.is_terminal:
                break
        with rt.db.transaction() as session:
            run = runs.get(session, tenant_id=tenant_id, run_id=run_id)
    return run
