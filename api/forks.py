"""``POST /v1/runs/{id}/fork``: a new run that reuses a run's steps recorded before one of
them and runs from there (``worker.runs.forks``)."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, url_for
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from api.auth import require_key
from api.bodies import json_body
from api.deps import principal, runtime
from api.idempotency import idempotent
from worker.runs import forks
from worker.runs.views import run_view

bp = Blueprint("forks", __name__, url_prefix="/v1/runs")
bp.before_request(require_key)


class ForkCreate(BaseModel):
    """Body of ``POST /v1/runs/{id}/fork``. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    from_step: str = Field(
        min_length=1, max_length=200, description="A step the run recorded (as GET "
        "/v1/runs/{id}/steps names it, e.g. llm:2): the fork reuses the steps that finished "
        "before it and runs this one and every later one again.")
    input: JsonValue = Field(
        default=None, description="The fork's input (default: the original's). Steps before "
        "from_step must be called with the same arguments, else the fork fails with "
        "StepMismatch.")


@bp.post("/<run_id>/fork")
@idempotent
def fork_run(run_id: str) -> tuple[Response, int, dict[str, str]]:
    g.run_id = run_id
    body = json_body(ForkCreate)
    run = forks.fork(runtime(), tenant_id=principal().tenant_id, run_id=run_id,
                     from_step=body.from_step, request_id=g.request_id,
                     input=body.input if "input" in body.model_fields_set else forks.KEEP)
    g.run_id = run.id  # what a repeat with the same Idempotency-Key answers
    return jsonify(run_view(run)), 202, {"Location": url_for("runs.get_run", run_id=run.id)}
