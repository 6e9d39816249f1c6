"""``/v1/ws``: submit runs, follow their events, and cancel them over one WebSocket.

Client to server: ``{type: "run", agent, input, session_id?, tokens?, ref?}``,
``{type: "subscribe", run_id, after?, tokens?, ref?}``, ``{type: "cancel", run_id, ref?}``.
Server to client: ``{type: "accepted", run_id, ref?}``,
``{type: "event", run_id, seq, event, data}``, ``{type: "error", code, message, ref?}``,
``{type: "notice", code, run_id, message}`` (the live feed went away or came back), and
with ``tokens``: ``{type: "token", run_id, step, i, text}``, ``{type: "token.reset",
run_id, step}`` (as SSE's ``?tokens=1``: ``api.events``).
A bad message gets an error frame; the socket stays open. One connection may follow many
runs; a dropped client reconnects and subscribes with ``after`` to continue.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from typing import Annotated, Any, Literal

from flask import Blueprint, g
from flask_sock import Sock
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError
from simple_websocket import ConnectionClosed, Server
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.auth import SUBPROTOCOL_PREFIX, require_websocket_key
from api.deps import principal, runtime
from api.schemas import MAX_SEQ, SESSION_ID
from worker.access import grants, keys, ratelimit
from worker.access.grants import Grant, Grants
from worker.access.keys import Principal
from worker.base import jsonb
from worker.base.errors import Conflict, InvalidRequest, LimitExceeded, NotFound
from worker.base.runtime import Runtime
from worker.base.tokens import RESET, Token
from worker.runs import store
from worker.runs.events import Event
from worker.runs.follow import POLL_S, follow
from worker.runs.submission import RunRequest, submit

sock = Sock()
bp = Blueprint("ws", __name__)
bp.before_request(require_websocket_key)

log = logging.getLogger("agentq.api.ws")

MAX_FOLLOWED = 100  # runs one connection may follow at once
RECEIVE_TICK_S = 5.0  # how often an idle socket's reader looks up (the grant closes it at once)
CLOSE_WAIT_S = 2.0  # how long a close waits for a send in progress before cutting the socket
ALL_RUNS = "*"
_RESUBSCRIBE_S = 5  # what a follow_failed frame suggests waiting before subscribing again
_NOTICES = {  # (following the whole tenant, polling) -> what a notice frame says
    (False, True): "the live feed is unavailable: the run's events are read from the log "
                   "every second",
    (False, False): "the live feed is back",
    (True, True): "the live feed is unavailable: the tenant's runs' terminal events are not "
                  "forwarded until it is back (subscribe to a run by id to follow it from the log)",
    (True, False): "the live feed is back; runs that ended meanwhile were not announced",
}
_Ref = str | int | None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: _Ref = None


class RunMessage(_Message):
    type: Literal["run"]
    agent: str = Field(min_length=1, max_length=200)
    input: JsonValue = Field(default_factory=dict)
    session_id: str | None = Field(default=None, min_length=1, max_length=200,
                                   pattern=SESSION_ID)
    tokens: bool = False


class SubscribeMessage(_Message):
    type: Literal["subscribe"]
    run_id: str = Field(min_length=1, max_length=100, description='A run id, or "*".')
    after: int = Field(default=0, ge=0, le=MAX_SEQ)
    tokens: bool = Field(default=False, description="The streamed LLM calls' text too.")


class CancelMessage(_Message):
    type: Literal["cancel"]
    run_id: str = Field(min_length=1, max_length=100)


ClientMessage = TypeAdapter(
    Annotated[RunMessage | SubscribeMessage | CancelMessage, Field(discriminator="type")]
)


class BearerSubprotocols:
    """Accept (and echo back) a ``bearer.<key>`` subprotocol; the key was checked already."""

    def __contains__(self, protocol: object) -> bool:
        return isinstance(protocol, str) and protocol.startswith(SUBPROTOCOL_PREFIX)

    def __bool__(self) -> bool:
        return True


class Connection:
    """One client's socket: a reader (this thread) and a follower per followed run.

    The socket lives while its credential does: it is closed (1008, policy violation) when
    the key is revoked or the JWT expires, and (1001, going away) after
    ``AGENTQ_STREAM_MAX_S``; the client reconnects and subscribes with ``after``. Every
    frame the client sends counts against the credential's rate limit.
    """

    def __init__(self, ws: Server, rt: Runtime, caller: Principal, request_id: str) -> None:
        self._ws = ws
        self._rt = rt
        self._caller = caller
        self._tenant_id = caller.tenant_id
        self._scopes = caller.scopes
        self._request_id = request_id
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._followed: set[str] = set()
        self._grant: Grant | None = None

    def serve(self) -> None:
        settings = self._rt.settings
        try:
            with Grants.of(self._rt).hold(self._caller, max_s=settings.stream_max_s) as grant:
                self._grant = grant
                grant.on_end(self._close)
                while not grant.ended and self._ws.connected:
                    raw = self._ws.receive(timeout=min(RECEIVE_TICK_S, max(grant.left(), 0)))
                    if raw is not None and not grant.ended:
                        self._handle(raw)
        finally:
            self._closed.set()

    def _close(self, reason: str) -> None:
        """The grant ended: close the socket, saying why. Called on whichever thread ended
        the grant (a revocation's listener, the grants' checker), so it must not wait on
        this client: the close is sent from a thread of its own."""
        self._closed.set()
        threading.Thread(target=self._send_close, args=(reason,), daemon=True,
                         name="ws-close").start()

    def _send_close(self, reason: str) -> None:
        code = 1001 if reason == grants.LIFE_OVER else 1008
        if self._send_lock.acquire(timeout=CLOSE_WAIT_S):
            try:
                with contextlib.suppress(ConnectionClosed, OSError):
                    self._ws.close(code, grants.Grant.describe(reason))
                    return
            finally:
                self._send_lock.release()
        # A client that stopped reading keeps a send (and its lock) waiting: cut it off.
        with contextlib.suppress(OSError):
            self._ws.sock.shutdown(socket.SHUT_RDWR)
        self._ws.connected = False

    def _handle(self, raw: str | bytes) -> None:
        ref: _Ref = None
        try:
            ratelimit.spend(self._rt.bus.redis, bucket=self._caller.key_id,
                            per_minute=self._rt.settings.rate_limit_per_minute)
            try:
                jsonb.check_text(raw, what="the frame")
            except jsonb.Unstorable as error:
                raise InvalidRequest(str(error)) from None
            message = ClientMessage.validate_json(raw)
            ref = message.ref
            needed = keys.READ if isinstance(message, SubscribeMessage) else keys.WRITE
            if needed not in self._scopes:
                self._error("forbidden", f"this credential lacks the {needed!r} scope", ref)
                return
            if isinstance(message, RunMessage):
                self._run(message)
            elif isinstance(message, SubscribeMessage):
                self._subscribe(message.run_id, message.after, message.tokens)
            else:
                self._cancel(message.run_id)
        except ValidationError as error:
            self._error("bad_message", _describe(error), _ref_of(raw))
        except InvalidRequest as error:
            self._error("invalid", error.detail, ref or _ref_of(raw), errors=error.errors)
        except NotFound as error:
            self._error("not_found", str(error), ref)
        except Conflict as error:
            self._error("conflict", str(error), ref)
        except LimitExceeded as error:
            self._error("limit", str(error), ref or _ref_of(raw),
                        retry_after_s=error.retry_after_s)
        except (ConnectionClosed, OSError):
            raise
        except Exception:  # the socket outlives one frame's bug or one outage
            log.exception("websocket frame failed", extra={"request_id": self._request_id})
            self._error("internal", "the frame could not be handled (it is logged under "
                        f"request_id {self._request_id}); try again", ref or _ref_of(raw))

    def _run(self, message: RunMessage) -> None:
        request = RunRequest(agent=message.agent, input=message.input,
                             session_id=message.session_id, request_id=self._request_id)
        run = submit(self._rt, tenant_id=self._tenant_id, request=request)
        self._send({"type": "accepted", "run_id": run.id, "ref": message.ref})
        self._follow(run.id, after=0, tokens=message.tokens)

    def _subscribe(self, run_id: str, after: int, tokens: bool) -> None:
        if run_id == ALL_RUNS:
            self._follow_tenant()
            return
        with self._rt.db.transaction() as session:
            store.get(session, tenant_id=self._tenant_id, run_id=run_id)
        self._follow(run_id, after=after, tokens=tokens)

    def _cancel(self, run_id: str) -> None:
        with self._rt.db.transaction() as session:
            outcome = store.cancel(session, tenant_id=self._tenant_id, run_id=run_id)
        if outcome.notify_worker:
            self._rt.bus.request_cancel(run_id)

    def _follow(self, run_id: str, *, after: int, tokens: bool) -> None:
        if run_id in self._followed:
            raise Conflict(f"already following run {run_id}")
        if len(self._followed) >= MAX_FOLLOWED:
            raise Conflict(f"a connection follows at most {MAX_FOLLOWED} runs at once")
        self._followed.add(run_id)
        threading.Thread(target=self._forward, args=(run_id, after, tokens), daemon=True,
                         name=f"ws-{run_id}").start()

    def _forward(self, run_id: str, after: int, tokens: bool) -> None:
        settings, hub = self._rt.settings, self._rt.bus.hub
        polling = False  # told the client that its events come from the log, not live
        try:
            for event in follow(self._rt, run_id=run_id, after=after, grant=self._grant,
                                tick_s=settings.stream_keepalive_s, max_s=settings.stream_max_s,
                                tokens=tokens):
                if self._closed.is_set():
                    return
                if event is not None:
                    self._send(_event_frame(event))
                if polling == hub.live:  # the live feed went away, or came back
                    polling = not polling
                    self._notice(run_id, polling)
        except ConnectionClosed:
            return
        except (OperationalError, InterfaceError, PoolTimeout) as error:
            log.warning("following a run ended: the database is unavailable",
                        extra={"run_id": run_id, "error": type(error).__name__})
            with contextlib.suppress(ConnectionClosed, OSError):
                self._error("follow_failed", f"the event log of {run_id} cannot be read now "
                            "(the database is unavailable); subscribe again with after (the "
                            "last seq received) to get exactly what was missed", None,
                            run_id=run_id, reason="database_unavailable",
                            retry_after_s=_RESUBSCRIBE_S)
        except Exception:  # a bug: tell the client, who may subscribe again
            log.exception("following a run failed", extra={"run_id": run_id})
            with contextlib.suppress(ConnectionClosed, OSError):
                self._error("follow_failed", f"following {run_id} stopped on an error; "
                            "subscribe again with after", None, run_id=run_id)
        finally:
            self._followed.discard(run_id)

    def _notice(self, run_id: str, polling: bool) -> None:
        """Tell the client its live feed went away (``polling``) or came back."""
        code = "live_feed_unavailable" if polling else "live_feed_restored"
        self._send({"type": "notice", "code": code, "run_id": run_id,
                    "message": _NOTICES[run_id == ALL_RUNS, polling]})

    def _follow_tenant(self) -> None:
        """Forward the terminal event of every run of the tenant, as it is committed."""
        if ALL_RUNS in self._followed:
            raise Conflict("already following every run of the tenant")
        self._followed.add(ALL_RUNS)
        threading.Thread(target=self._forward_tenant, daemon=True, name="ws-tenant").start()

    def _forward_tenant(self) -> None:
        tick, hub = self._rt.settings.stream_keepalive_s, self._rt.bus.hub
        polling = False
        try:
            with hub.watch_tenant(self._tenant_id) as watch:
                while not self._closed.is_set():
                    item = watch.next(timeout=tick if hub.live else min(tick, POLL_S))
                    if isinstance(item, Event):
                        self._send(_event_frame(item))
                    if polling == hub.live:  # the tenant's feed is live only
                        polling = not polling
                        self._notice(ALL_RUNS, polling)
        except ConnectionClosed:
            return
        finally:
            self._followed.discard(ALL_RUNS)

    def _error(self, code: str, message: str, ref: _Ref, **extra: Any) -> None:
        self._send({"type": "error", "code": code, "message": message, "ref": ref, **extra})

    def _send(self, frame: dict[str, Any]) -> None:
        if frame.get("ref") is None:
            frame.pop("ref", None)
        with self._send_lock:
            self._ws.send(json.dumps(frame, separators=(",", ":")))


def _event_frame(event: Event | Token) -> dict[str, Any]:
    if isinstance(event, Token):
        kind = "token.reset" if event.kind == RESET else "token"
        return {"type": kind, "run_id": event.run_id, **event.frame()}
    return {"type": "event", "run_id": event.run_id, "seq": event.seq, "event": event.type,
            "data": event.data}


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"])
        problems.append(f"{where}: {item['msg']}" if where else item["msg"])
    return "; ".join(problems)


def _ref_of(raw: str | bytes) -> _Ref:
    """The ``ref`` of a message that failed validation, if it has a usable one."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    ref = body.get("ref") if isinstance(body, dict) else None
    return ref if isinstance(ref, str | int) and not isinstance(ref, bool) else None


@sock.route("/v1/ws", bp=bp)
def websocket(ws: Server) -> None:
    Connection(ws, runtime(), principal(), g.request_id).serve()
