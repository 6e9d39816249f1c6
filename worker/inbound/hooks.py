"""Inbound webhooks: hook sources, and turning a verified delivery into exactly one run.

The order of ``receive`` is the point: the signature is checked on the raw body before
anything else (and nothing is stored for a delivery that fails it); the delivery id is then
recorded under a unique key in the same transaction as the run, so a retried or duplicated
delivery (two identical ones in parallel included) finds the first one's run and creates
nothing. The caller answers at once and dispatches afterwards: nothing here waits on the
broker or on the agent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from worker.base.errors import AgentqError, Conflict, InvalidRequest, NotFound
from worker.base.models import HookSource, InboundEvent, Run, new_id
from worker.base.queues import Dispatch
from worker.base.runtime import Runtime
from worker.base.signing import live_secrets
from worker.base.ssrf import Guard, refuse_internal
from worker.inbound import providers
from worker.inbound.providers import Inbound, Resume, ephemeral
from worker.runs import admission, dispatch, outbox, waits
from worker.runs.submission import RunRequest, Stored, launch, plan, store_run

log = logging.getLogger(__name__)


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, [{"field": field, "message": message}])


def create_source(session: Session, *, rt: Runtime, tenant_id: str, provider: str, secret: str,
                  agent: str, events: Sequence[str] | None, reply_url: str | None) -> HookSource:
    """A hook source, refused (422) without a safe secret or a known agent."""
    problem = providers.PROVIDERS[provider].check_secret(secret)
    if problem:
        raise _invalid("secret", problem)
    rt.registry.get(agent)  # UnknownAgent (422) lists the agents there are
    if reply_url:
        refuse_internal(reply_url, guard=Guard.of(rt.settings), field="reply")
        outbox.require_default_secret(session, tenant_id=tenant_id)
    source = HookSource(id=new_id("hs"), tenant_id=tenant_id, provider=provider, secret=secret,
                        agent=agent, events=list(events) if events else None,
                        reply_url=reply_url)
    session.add(source)
    session.flush()
    return source


def sources(session: Session, *, tenant_id: str) -> list[HookSource]:
    query = (select(HookSource)
             .where(HookSource.tenant_id == tenant_id, HookSource.deleted_at.is_(None))
             .order_by(HookSource.id.desc()))
    return list(session.scalars(query))


def get_source(session: Session, *, tenant_id: str, source_id: str) -> HookSource:
    source = session.scalar(select(HookSource).where(
        HookSource.id == source_id, HookSource.tenant_id == tenant_id,
        HookSource.deleted_at.is_(None)))
    if source is None:
        raise NotFound("hook source", source_id)
    return source


def delete_source(session: Session, *, tenant_id: str, source_id: str) -> None:
    get_source(session, tenant_id=tenant_id, source_id=source_id).deleted_at = datetime.now(UTC)


def rotate_secret(session: Session, *, tenant_id: str, source_id: str, secret: str,
                  overlap_s: float) -> HookSource:
    """Take the platform's new secret; the old one is still accepted for ``overlap_s``."""
    source = get_source(session, tenant_id=tenant_id, source_id=source_id)
    problem = providers.PROVIDERS[source.provider].check_secret(secret)
    if problem:
        raise _invalid("secret", problem)
    source.previous_secret = source.secret
    source.previous_expires_at = datetime.now(UTC) + timedelta(seconds=overlap_s)
    source.secret = secret
    return source


@dataclass(frozen=True)
class Received:
    """What the handler answers: a run (new or the duplicate's), an ignored event, or an
    answer made at once (a handshake's, a button press's)."""

    run: Run | None = None
    duplicate: bool = False
    ignored: bool = False
    answer: dict[str, Any] | None = None
    stored: Stored | None = None  # a new run: launch it once the answer has gone out
    resumed: Dispatch | None = None  # a run a button press queued again: publish it
    replies: tuple[str, ...] = ()  # deliveries to the press's response_url: publish them


def follow_up(rt: Runtime, received: Received) -> None:
    """Once the answer has gone out: publish what ``receive`` committed (a lost publish is
    the sweeper's to redo)."""
    if received.stored is not None:
        launch(rt, received.stored)
    if received.resumed is not None:
        dispatch.dispatch(rt, received.resumed)
    if received.replies:
        outbox.dispatch(rt, list(received.replies))


def receive(rt: Runtime, *, source_id: str, headers: Mapping[str, str], body: bytes,
            request_id: str | None) -> Received:
    """Verify, deduplicate and record a delivery; create its run. Nothing is dispatched."""
    with rt.db.transaction() as session:
        source = session.scalar(select(HookSource).where(
            HookSource.id == source_id, HookSource.deleted_at.is_(None)))
        if source is None:
            raise NotFound("hook", source_id)
        secrets = live_secrets(source.secret, source.previous_secret,
                               source.previous_expires_at)
    count = functools.partial(rt.metrics.inc, "agentq_inbound_deliveries",
                              provider=source.provider)
    try:
        providers.verify(source.provider, secrets, headers, body)
        inbound = providers.checked(providers.PROVIDERS[source.provider].parse(headers, body))
    except providers.Rejected:
        count(outcome="rejected")
        raise
    except providers.Unreadable:
        count(outcome="unreadable")
        raise
    if inbound.answer is not None:
        count(outcome="answered")
        return Received(answer=inbound.answer)
    assert inbound.delivery_id is not None
    if inbound.resume is not None:  # a button press answers a waitpoint: no run, no filter
        received = _resume(rt, source, inbound, inbound.resume)
        count(outcome="resumed" if received.resumed else "refused")
        return received
    if not _wanted(source, inbound):
        _record_ignored(rt, source, inbound)
        count(outcome="ignored")
        return Received(ignored=True)
    new = plan(rt, RunRequest(
        agent=source.agent, input=_agent_input(source, inbound), request_id=request_id,
        webhook_url=source.reply_url, reply_url=inbound.response_url,
        metadata={"hook_source": source.id, "provider": source.provider,
                  "event": inbound.event_type}))

    def record() -> Received:
        with rt.db.transaction() as session:
            if not _claim_delivery(session, source, inbound):
                count(outcome="duplicate")
                return _duplicate(session, source, inbound)
            stored = store_run(rt, session, tenant_id=source.tenant_id, new=new)
            session.execute(update(InboundEvent)
                            .where(InboundEvent.source_id == source.id,
                                   InboundEvent.delivery_id == inbound.delivery_id)
                            .values(run_id=stored.run.id))
        count(outcome="accepted")
        return Received(run=stored.run, stored=stored)

    return admission.admitted(rt.db, tenant_id=source.tenant_id,
                              caps=admission.Caps.of(rt.settings), store=record)


def _resume(rt: Runtime, source: HookSource, inbound: Inbound, resume: Resume) -> Received:
    """Complete the waitpoint a verified button press names, of the source's tenant only,
    and record the press under its delivery id in the same transaction (Slack's retry of it
    finds it). Every outcome is a 200 whose line for the person who pressed also goes to
    the press's response_url (Slack shows only that): Slack takes any other status for the
    app being broken."""
    try:
        with rt.db.transaction() as session:
            if not _claim_delivery(session, source, inbound):
                return Received(duplicate=True, answer=ephemeral("That press was received."))
            done = waits.complete(session, tenant_id=source.tenant_id, run_id=resume.run_id,
                                  name=resume.waitpoint, data=resume.data, by=resume.by)
            session.execute(update(InboundEvent)
                            .where(InboundEvent.source_id == source.id,
                                   InboundEvent.delivery_id == inbound.delivery_id)
                            .values(run_id=done.run.id))
            who = resume.by.removeprefix("slack:")
            answer = {"response_type": "in_channel", "replace_original": False,
                      "text": f"<@{who}> answered {resume.waitpoint!r}; run {done.run.id} "
                              "goes on."}
            replies = _reply(session, done.run, inbound, answer)
    except (NotFound, Conflict, InvalidRequest) as refused:
        log.info("button press refused", extra={
            "run_id": resume.run_id, "waitpoint": resume.waitpoint, "source_id": source.id,
            "error": type(refused).__name__})
        answer = ephemeral(f"Not answered: {_reason(refused)}")
        if isinstance(refused, NotFound):  # nothing of this tenant's to tell it through
            return Received(answer=answer)
        with rt.db.transaction() as session:
            run = session.scalar(select(Run).where(Run.id == resume.run_id,
                                                   Run.tenant_id == source.tenant_id))
            replies = _reply(session, run, inbound, answer) if run is not None else ()
        return Received(answer=answer, replies=replies)
    return Received(run=done.run, answer=answer, resumed=done.dispatch, replies=replies)


def _reply(session: Session, run: Run, inbound: Inbound,
           message: dict[str, Any]) -> tuple[str, ...]:
    if not inbound.response_url:
        return ()
    return (outbox.enqueue_reply(session, run=run, url=inbound.response_url,
                                 event_type="waitpoint.answer", message=message),)


def _reason(refused: AgentqError) -> str:
    if isinstance(refused, InvalidRequest) and refused.errors:
        first = refused.errors[0]
        return f"{refused.detail} ({first['field']}: {first['message']})"[:500]
    return str(refused)[:500]


def _wanted(source: HookSource, inbound: Inbound) -> bool:
    if not source.events:
        return True
    names = {inbound.event_type}
    if inbound.action:
        names.add(f"{inbound.event_type}.{inbound.action}")
    return bool(names & set(source.events))


def _agent_input(source: HookSource, inbound: Inbound) -> dict[str, Any]:
    body: dict[str, Any] = {"provider": source.provider, "event": inbound.event_type,
                            "delivery_id": inbound.delivery_id, "payload": inbound.payload}
    if inbound.text is not None:
        body["text"] = inbound.text
    return body


def _claim_delivery(session: Session, source: HookSource, inbound: Inbound,
                    *, ignored: bool = False) -> bool:
    """Record the delivery id; False if it was recorded before (a duplicate)."""
    inserted = session.execute(
        insert(InboundEvent)
        .values(source_id=source.id, delivery_id=inbound.delivery_id,
                tenant_id=source.tenant_id, event_type=inbound.event_type[:100],
                ignored=ignored)
        .on_conflict_do_nothing(index_elements=["source_id", "delivery_id"])
        .returning(InboundEvent.delivery_id)
    ).scalar_one_or_none()
    return inserted is not None


def _duplicate(session: Session, source: HookSource, inbound: Inbound) -> Received:
    first = session.scalar(select(InboundEvent).where(
        InboundEvent.source_id == source.id, InboundEvent.delivery_id == inbound.delivery_id))
    assert first is not None
    run = session.get(Run, first.run_id) if first.run_id else None
    return Received(run=run, duplicate=True, ignored=first.ignored)


def _record_ignored(rt: Runtime, source: HookSource, inbound: Inbound) -> None:
    with rt.db.transaction() as session:
        _claim_delivery(session, source, inbound, ignored=True)
