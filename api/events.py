"""``GET /v1/runs/{id}/events``: the run's event log as JSON, or live as Server-Sent Events.

The SSE stream sends each event as ``id: SEQ`` / ``event: TYPE`` / ``data: JSON``, starts
with a ``retry:`` hint, sends a comment line as keep-alive, resumes after ``Last-Event-ID``
(or ``?after=``) with no gap and no repeat, and ends after the run's terminal event. A
stream that cannot read the log (Postgres unreachable) ends with an ``event:
unavailable`` frame that has no ``id`` (the client resumes from the last seq it saw).

With ``?tokens=1`` it also sends the streamed LLM calls' text as it is written: ``event:
token`` ``{step, i, text}`` and ``event: token.reset`` ``{step}`` frames, which have no
``id`` (an EventSource's Last-Event-ID stays the last event's seq). On (re)connecting, each
call in progress comes first as one frame with ``i`` 1 and its text so far
(``worker.base.tokens`` says how a client puts the text together).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.auth import require_key
from api.bodies import query
from api.deps import principal, runtime
from api.schemas import MAX_SEQ, EventsQuery
from worker.access import grants
from worker.access.grants import Grants
from worker.access.keys import Principal
from worker.base.errors import InvalidRequest
from worker.base.runtime import Runtime
from worker.base.tokens import RESET, Token
from worker.runs import events, store
from worker.runs.events import Event
from worker.runs.follow import follow
from worker.runs.views import event_view

bp = Blueprint("events", __name__, url_prefix="/v1/runs")
bp.before_request(require_key)

log = logging.getLogger("agentq.api.stream")

EVENT_STREAM = "text/event-stream"
_SEQ = re.compile(r"[0-9]{1,10}")  # ASCII digits (str.isdigit() takes "²" too)
RECONNECT_MS = 2000


@bp.get("/<run_id>/events")
def run_events(run_id: str) -> Response:
    g.run_id = run_id
    rt = runtime()
    after = resume_point()
    with rt.db.transaction() as session:
        store.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        items = [] if _wants_stream() else events.after(session, run_id=run_id, seq=after)
    if _wants_stream():
        return stream(rt, run_id, after, caller=principal(),
                      tokens=query(EventsQuery).tokens)
    return jsonify({"items": [event_view(item) for item in items]})


def _wants_stream() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", EVENT_STREAM])
    return best == EVENT_STREAM and request.accept_mimetypes[EVENT_STREAM] > 0


def resume_point() -> int:
    """``Last-Event-ID`` (set by a reconnecting EventSource) wins over ``?after=``."""
    after = query(EventsQuery).after
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return after
    if not _SEQ.fullmatch(header) or int(header) > MAX_SEQ:
        raise InvalidRequest("Last-Event-ID is not an event id", [
            {"field": "Last-Event-ID", "message": "send back the id of the last event seen"}])
    return int(header)


def frame(event: Event | Token) -> str:
    """One SSE message: the event's data as compact JSON (one line), its seq as the id; a
    token frame has no id."""
    if isinstance(event, Token):
        kind = "token.reset" if event.kind == RESET else "token"
        return f"event: {kind}\ndata: {json.dumps(event.frame(), separators=(',', ':'))}\n\n"
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.data_json}\n\n"


def stream(rt: Runtime, run_id: str, after: int, *, caller: Principal,
           tokens: bool = False) -> Response:
    """The run's events after ``after`` as a live SSE response (the caller checked access),
    ended early if ``caller``'s credential is revoked or expires."""
    settings = rt.settings

    def generate() -> Iterator[str]:
        started, sent, last, terminal = time.monotonic(), 0, after, False
        ended: str | None = None  # what cut the stream off, if not follow's own end
        try:
            yield f"retry: {RECONNECT_MS}\n\n"
            with Grants.of(rt).hold(caller, max_s=settings.stream_max_s) as grant:
                for event in follow(rt, run_id=run_id, after=after, grant=grant,
                                    tick_s=settings.stream_keepalive_s,
                                    max_s=settings.stream_max_s, tokens=tokens):
                    if event is None:
                        yield (": keep-alive\n\n" if rt.bus.hub.live else
                               ": keep-alive (live feed unavailable: reading the log "
                               "every second)\n\n")
                        continue
                    sent += 1
                    if isinstance(event, Event):
                        last, terminal = event.seq, event.is_terminal
                    yield frame(event)
                if grant.reason in (grants.REVOKED, grants.EXPIRED):
                    ended = grant.reason
                    yield f": ended: {grant.why}\n\n"
        except (OperationalError, InterfaceError, PoolTimeout) as error:
            ended = "database_unavailable"
            log.warning("event stream ended: the database is unavailable",
                        extra={"run_id": run_id, "error": type(error).__name__})
            yield "event: unavailable\ndata: " + json.dumps({
                "type": "database_unavailable", "retry_after_s": RECONNECT_MS // 1000,
                "detail": "the event log cannot be read now; reconnect with Last-Event-ID "
                          "(the last id received) to get exactly what was missed"}) + "\n\n"
        except GeneratorExit:  # the server closes the generator: the client went away
            ended = "client_gone"
            raise
        except Exception:
            ended = "error"
            log.exception("event stream failed", extra={"run_id": run_id, "last_seq": last})
            raise
        finally:
            log.info("event stream closed", extra={
                "run_id": run_id, "events": sent, "last_seq": last, "terminal": terminal,
                "ended": ended,
                "duration_ms": round((time.monotonic() - started) * 1000, 1)})

    response = Response(generate(), mimetype=EVENT_STREAM)
    response.headers["Cache-Control"] = "no-cache, no-transform"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
