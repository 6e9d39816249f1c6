"""Waitpoints: where runs wait for a person or a system (``ctx.wait_for``) or for time
(``ctx.sleep``), and completing them: by API key (``/v1/runs/{id}/waitpoints``), or by the
waitpoint's signed link (``/waitpoints/{token}``, no key: for an email or a chat message).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from flask import Blueprint, Response, g, jsonify, render_template_string

from api.auth import require_key
from api.bodies import json_body
from api.deps import principal, runtime
from api.errors import Problem
from api.idempotency import idempotent
from api.schemas import WaitpointComplete
from worker.base.errors import NotFound
from worker.base.models import WaitpointStatus
from worker.runs import dispatch, store, waits
from worker.runs.views import iso

bp = Blueprint("waitpoints", __name__, url_prefix="/v1/runs")
bp.before_request(require_key)
links = Blueprint("waitpoint_links", __name__, url_prefix="/waitpoints")


@bp.get("/<run_id>/waitpoints")
def list_waitpoints(run_id: str) -> Response:
    g.run_id = run_id
    rt = runtime()
    with rt.db.autocommit() as session:
        store.get(session, tenant_id=principal().tenant_id, run_id=run_id)
        items = waits.listed(session, run_id=run_id)
    return jsonify({"items": [waits.waitpoint_view(point, url=waits.url(rt.settings, point))
                              for point in items]})


@bp.post("/<run_id>/waitpoints/<name>")
@idempotent
def complete_waitpoint(run_id: str, name: str) -> tuple[Response, int]:
    g.run_id = run_id
    g.answer_is_run = False  # a repeat gets this answer again, not the run as it is now
    body = json_body(WaitpointComplete)
    caller = principal()
    by = f"api:{caller.key_id}"[:200]
    return _complete(tenant_id=caller.tenant_id, run_id=run_id, name=name, data=body.data,
                     by=by)


def _complete(*, tenant_id: str, run_id: str, name: str, data: Any,
              by: str) -> tuple[Response, int]:
    """Complete the waitpoint and queue its run (one transaction), then publish the run."""
    rt = runtime()
    with rt.db.transaction() as session:
        done = waits.complete(session, tenant_id=tenant_id, run_id=run_id, name=name,
                              data=data, by=by)
        view = waits.waitpoint_view(done.waitpoint, url=None)
    if done.dispatch is not None:  # committed: a lost publish is the sweeper's to redo
        dispatch.dispatch(rt, done.dispatch)
    return jsonify(view), 202


# The signed link ------------------------------------------------------------------------

def _linked(token: str) -> tuple[str, str, str]:
    """(tenant, run, name) of the waitpoint a genuine link names: 404 for a forged or
    altered link (or no AGENTQ_SECRET_KEY to check it with), 410 for an expired one."""
    secret = runtime().settings.secret_key
    if secret is None or len(token) > 2000:
        raise NotFound("waitpoint", "(link)")
    try:
        waitpoint_id = waits.verify(secret, token)
    except waits.TokenExpired:
        raise Problem(410, "Gone", "this link has expired: the waitpoint reached its "
                      "deadline", slug="waitpoint-expired") from None
    except ValueError:
        raise NotFound("waitpoint", "(link)") from None
    with runtime().db.autocommit() as session:
        point = waits.by_token(session, waitpoint_id=waitpoint_id)
        if point is None:
            raise NotFound("waitpoint", "(link)")
        return point.tenant_id, point.run_id, point.name


@links.post("/<token>")
def complete_by_link(token: str) -> tuple[Response, int]:
    tenant_id, run_id, name = _linked(token)
    g.run_id = run_id
    body = json_body(WaitpointComplete)
    return _complete(tenant_id=tenant_id, run_id=run_id, name=name, data=body.data, by="url")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<meta name="referrer" content="no-referrer"><title>agentq: {{ point.name }}</title>
<style>body{font:16px system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}
textarea{width:100%;min-height:8rem;font:14px ui-monospace,monospace}
button{font-size:1rem;padding:.4rem 1rem}</style></head><body>
<h1>{{ point.name }}</h1>
{% if point.prompt %}<p>{{ point.prompt }}</p>{% endif %}
{% if point.status == "waiting" %}
<p>Answer with JSON{% if point.schema %} matching<br><code>{{ schema }}</code>{% endif %}.
This link works once, until {{ deadline }}.</p>
<form id="answer"><textarea name="data">{{ example }}</textarea>
<p><button type="submit">Send</button> <span id="said" role="status"></span></p></form>
<script nonce="{{ nonce }}">
document.getElementById("answer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const said = document.getElementById("said");
  let data;
  try { data = JSON.parse(event.target.data.value); }
  catch (error) { said.textContent = "That is not JSON: " + error.message; return; }
  const answer = await fetch(location.pathname, {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({data})});
  const body = await answer.json().catch(() => ({}));
  said.textContent = answer.ok ? "Sent: the run goes on." :
    (body.detail || answer.statusText) + (body.errors ? ": " +
      body.errors.map((e) => e.field + " " + e.message).join("; ") : "");
});
</script>
{% else %}<p>This waitpoint is {{ point.status.replace("_", " ") }}.</p>{% endif %}
</body></html>"""


@links.get("/<token>")
def show_link(token: str) -> tuple[str, int, dict[str, str]]:
    """The waitpoint's prompt and a form to answer it (a GET changes nothing: mail
    scanners that follow links complete nothing)."""
    _, run_id, name = _linked(token)
    with runtime().db.autocommit() as session:
        point = next(p for p in waits.listed(session, run_id=run_id) if p.name == name)
    nonce = secrets.token_urlsafe(16)
    example = _example(point.schema)
    page = render_template_string(
        _PAGE, point=point, nonce=nonce, deadline=iso(point.deadline),
        schema=json.dumps(point.schema) if point.schema else "",
        example=json.dumps(example, indent=2))
    headers = {"Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; "
                                          "style-src 'unsafe-inline'; connect-src 'self'",
               "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return page, 200 if point.status == WaitpointStatus.WAITING else 410, headers


def _example(schema: dict[str, Any] | None) -> Any:
    """A starting answer for the form: each property of an object schema, empty."""
    if not schema or schema.get("type") != "object":
        return {}
    blank = {"boolean": False, "string": "", "integer": 0, "number": 0, "array": [],
             "object": {}}
    example: dict[str, Any] = {}
    for key, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        example[key] = blank.get(kind) if isinstance(kind, str) else None
    return example
