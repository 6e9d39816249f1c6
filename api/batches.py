"""``POST /v1/runs/batch``: many runs in one request; ``/v1/batches``: how they stand."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from flask import Blueprint, Response, g, jsonify, url_for
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from api.auth import require_key
from api.bodies import json_body
from api.deps import principal, runtime
from api.idempotency import idempotent
from api.schemas import RunCreate, RunOut
from worker.base.errors import InvalidRequest
from worker.runs import batches
from worker.runs.submission import RunRequest
from worker.runs.views import batch_view, run_view

bp = Blueprint("batches", __name__, url_prefix="/v1")
bp.before_request(require_key)


class BatchItem(RunCreate):
    """One run of ``POST /v1/runs/batch``: a ``POST /v1/runs`` body and its own key."""

    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, description="As POST /v1/runs's "
        "Idempotency-Key: an item whose key was seen before (with the same fields) is "
        "answered with the run that key made, which is not made again.")

    @field_validator("idempotency_key")
    @classmethod
    def _printable(cls, key: str | None) -> str | None:
        if key is not None and not key.isprintable():
            raise ValueError("1 to 255 printable characters")
        return key


class BatchCreate(BaseModel):
    """Body of ``POST /v1/runs/batch``."""

    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem] = Field(min_length=1, max_length=batches.MAX_ITEMS)


class _Items(BaseModel):
    """``BatchCreate`` as first read: each item is then checked on its own."""

    model_config = ConfigDict(extra="forbid")

    items: list[JsonValue] = Field(min_length=1, max_length=batches.MAX_ITEMS)


class BatchOut(BaseModel):
    """A batch and its runs counted by status."""

    id: str
    size: int = Field(description="The runs it made (items answered by an earlier run's "
                                  "idempotency key are not among them).")
    created_at: str
    completed_at: str | None = Field(description="When its last run ended (batch.completed).")
    counts: dict[str, int]


class BatchCreated(BatchOut):
    """``POST /v1/runs/batch``'s answer: the batch, and a run per item in the items' order."""

    runs: list[RunOut]
    replayed: list[int] = Field(description="The items answered by the run their "
                                            "idempotency key made before.")


_REQUEST_FIELDS = {field.name for field in dataclasses.fields(RunRequest)} & set(
    RunCreate.model_fields)


@bp.post("/runs/batch")
@idempotent
def create_batch() -> tuple[Response, int, dict[str, str]]:
    body = json_body(_Items)
    rt = runtime()
    submitted = batches.submit(rt, tenant_id=principal().tenant_id,
                               items=_planned(body.items))
    batch = submitted.batch
    view = {**batch_view(batch, submitted.counts),
            "runs": [run_view(run) for run in submitted.runs], "replayed": submitted.replayed}
    headers = {"Location": url_for("batches.get_batch", batch_id=batch.id)}
    if submitted.repeat:
        headers["Idempotent-Replayed"] = "true"
    return jsonify(view), 200 if submitted.repeat and batch.completed_at else 202, headers


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> tuple[Response, dict[str, str]]:
    with runtime().db.autocommit() as session:
        batch, counts = batches.standing(session, tenant_id=principal().tenant_id,
                                         batch_id=batch_id)
    headers = {} if batch.completed_at else {"Retry-After": "2"}
    return jsonify(batch_view(batch, counts)), headers


def _planned(raw_items: list[Any]) -> list[batches.Item]:
    """Each item checked and planned as ``POST /v1/runs`` would; every problem of every
    item in one 422, naming the items' indexes."""
    rt, planned, problems, invalid = runtime(), [], [], []
    for index, raw in enumerate(raw_items):
        try:
            item = BatchItem.model_validate(raw)
            new = batches.plan(rt, _request(item), index=index)
        except ValidationError as error:
            problems += InvalidRequest.from_validation(error, prefix=f"items[{index}]").errors
            invalid.append(index)
        except InvalidRequest as error:
            problems += error.errors
            invalid.append(index)
        else:
            planned.append(batches.Item(new, item.idempotency_key, _fingerprint(raw)))
    if problems:
        named = ", ".join(str(index) for index in invalid[:10])
        raise InvalidRequest(f"{len(invalid)} of the {len(raw_items)} items are invalid "
                             f"(item {named}{', ...' if len(invalid) > 10 else ''}); none "
                             "was created: see errors", problems)
    return planned


def _request(item: BatchItem) -> RunRequest:
    given = {name: getattr(item, name) for name in _REQUEST_FIELDS}
    given["webhook_url"] = str(item.webhook_url) if item.webhook_url else None
    return RunRequest(**given, request_id=g.request_id)


def _fingerprint(raw: Any) -> str:
    """The item as ``Idempotency-Key`` fingerprints a ``POST /v1/runs`` of it (see
    ``api.idempotency``): an item and a single POST with one key are one run."""
    fields = {name: value for name, value in raw.items() if name != "idempotency_key"}
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"POST /v1/runs\n" + body).hexdigest()
