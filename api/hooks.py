"""``POST /hooks/{id}``: where GitHub, Slack, Stripe and Standard Webhooks senders deliver.

No API key: the platform's signature over the raw body is the credential. A verified
delivery is answered at once with its run's id; the run is dispatched after the answer has
gone out, so the platform never waits on the broker or the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from flask import Blueprint, Response, g, jsonify, request

from api.bodies import raw_body
from api.deps import runtime
from api.errors import Problem, unauthorized
from worker.inbound import hooks
from worker.inbound.providers import Rejected, Unreadable

bp = Blueprint("hooks", __name__)


@bp.post("/hooks/<source_id>")
def receive(source_id: str) -> tuple[Response, int]:
    rt = runtime()
    body = raw_body()
    try:
        headers = cast(Mapping[str, str], request.headers)  # case-insensitive lookups
        received = hooks.receive(rt, source_id=source_id, headers=headers, body=body,
                                   request_id=g.request_id)
    except Rejected as rejected:
        raise unauthorized(f"signature verification failed: {rejected}") from None
    except Unreadable as unreadable:
        raise Problem(400, "Unreadable delivery", str(unreadable), slug="unreadable") from None
    if received.run is not None:
        g.run_id = received.run.id
    if received.answer is not None:
        response = jsonify(received.answer)
    elif received.run is None:
        response = jsonify({"ignored": True, "duplicate": received.duplicate})
    else:
        response = jsonify({"run_id": received.run.id, "duplicate": received.duplicate})
    response.call_on_close(lambda: hooks.follow_up(rt, received))
    return response, 200
