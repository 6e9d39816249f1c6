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
from worker.runs.submission import launch

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
    if received.answer is not None:
        return jsonify(received.answer), 200
    if received.run is None:
        return jsonify({"ignored": True, "duplicate": received.duplicate}), 200
    run = received.run
    g.run_id = run.id
    response = jsonify({"run_id": run.id, "duplicate": received.duplicate})
    stored = received.stored
    if stored is not None:
        response.call_on_close(lambda: launch(rt, stored))
    return response, 200
