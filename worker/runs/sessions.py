"""Conversation state: one JSON document per (tenant, session id), versioned.

An attempt loads its session's state when it starts and saves it when it succeeds, with
an optimistic check on the version it loaded: if another run saved in between, the save
is refused (``SessionConflict``) and the attempt is retried on the newer state, so two runs
never silently overwrite each other. State never crosses tenants or sessions.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from worker.base.errors import NotFound, RetryableError
from worker.base.models import AgentSession, Run
from worker.runs.views import iso


class SessionConflict(RetryableError):
    """The session's state changed since the attempt loaded it (retried on the new state)."""


def ensure(session: Session, *, tenant_id: str, session_id: str) -> None:
    """Make the session if it is new, and lock it for the rest of the transaction (so
    submissions to one session are taken one at a time)."""
    session.execute(insert(AgentSession).values(tenant_id=tenant_id, id=session_id, state={})
                    .on_conflict_do_nothing(index_elements=["tenant_id", "id"]))
    session.execute(select(AgentSession.version)
                    .where(AgentSession.tenant_id == tenant_id, AgentSession.id == session_id)
                    .with_for_update())


def load(session: Session, *, tenant_id: str, session_id: str) -> tuple[dict[str, Any], int]:
    """The session's state and its version (an empty state, version 0, if it is gone)."""
    row = session.execute(select(AgentSession.state, AgentSession.version).where(
        AgentSession.tenant_id == tenant_id, AgentSession.id == session_id)).one_or_none()
    return (dict(row.state), row.version) if row else ({}, 0)


def save(session: Session, *, tenant_id: str, session_id: str, state: dict[str, Any],
         version: int) -> None:
    """Store ``state`` if the session is still at ``version``; else SessionConflict."""
    if version == 0:
        session.execute(insert(AgentSession)
                        .values(tenant_id=tenant_id, id=session_id, state={}, version=0)
                        .on_conflict_do_nothing(index_elements=["tenant_id", "id"]))
    saved = session.execute(
        update(AgentSession)
        .where(AgentSession.tenant_id == tenant_id, AgentSession.id == session_id,
               AgentSession.version == version)
        .values(state=state, version=version + 1, updated_at=func.now())
        .returning(AgentSession.version)
    ).scalar_one_or_none()
    if saved is None:
        raise SessionConflict(f"session {session_id!r} changed since this attempt loaded it "
                              f"(version {version})")


def view(session: Session, *, tenant_id: str, session_id: str) -> dict[str, Any]:
    row = session.scalar(select(AgentSession).where(
        AgentSession.tenant_id == tenant_id, AgentSession.id == session_id))
    if row is None:
        raise NotFound("session", session_id)
    run_ids = session.scalars(select(Run.id).where(
        Run.tenant_id == tenant_id, Run.session_id == session_id).order_by(Run.id)).all()
    return {"id": row.id, "state": row.state, "version": row.version,
            "created_at": iso(row.created_at), "updated_at": iso(row.updated_at),
            "runs": list(run_ids)}


def forget(session: Session, *, tenant_id: str, session_id: str) -> None:
    """Delete the session's state; its runs keep their history."""
    gone = session.execute(delete(AgentSession).where(
        AgentSession.tenant_id == tenant_id, AgentSession.id == session_id)
        .returning(AgentSession.id)).scalar_one_or_none()
    if gone is None:
        raise NotFound("session", session_id)
