"""Reading request bodies and query strings into validated models, or a clear 4xx."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.errors import Problem
from worker.base import jsonb
from worker.base.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def read_body(*, cache: bool) -> bytes:
    """The body as sent (413 over the limit with a Content-Length), or a 400 if it cannot
    be read: a broken chunked encoding (gunicorn's parser raises), a client gone mid-body."""
    try:
        return request.get_data(cache=cache)
    except HTTPException:
        raise
    except Exception as error:  # the server's own errors: a read, never our code
        raise Problem(400, "Unreadable body", f"the request's body could not be read "
                      f"({type(error).__name__}); send it again", slug="unreadable-body") \
            from None


def raw_body() -> bytes:
    """The body exactly as sent, refused with 413 over ``AGENTQ_MAX_BODY_BYTES``."""
    raw = read_body(cache=False)
    if request.content_length is None and len(raw) >= (request.max_content_length or len(raw) + 1):
        # A chunked body is cut at the limit rather than refused (werkzeug's LimitedStream
        # raises only on the read after); reaching the limit means it was longer.
        raise RequestEntityTooLarge()
    return raw


def refuse_nul() -> None:
    """Postgres text cannot hold U+0000: a URL with one is a 400 here, not a 500 at the
    first query that names it (a run id, a filter)."""
    if "\x00" in request.path or "%00" in request.query_string.decode("latin-1"):
        raise Problem(400, "Bad request", "the URL holds the character U+0000 (%00); "
                      "no id or filter can contain it", slug="bad-request")


def json_body(model: type[M]) -> M:
    """Validate the raw JSON body (size-limited) against ``model``."""
    if not request.is_json:
        raise Problem(415, "Unsupported media type",
                      "send a JSON body with 'Content-Type: application/json'", slug="media-type")
    raw = raw_body()
    try:
        jsonb.check_text(raw, what="the body")
    except jsonb.Unstorable as error:
        raise InvalidRequest(str(error), [{"field": error.path, "message": str(error)}]) \
            from None
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        malformed = [e for e in error.errors() if e["type"] == "json_invalid"]
        if malformed:
            raise Problem(400, "Malformed JSON", f"the body is not valid JSON: "
                          f"{malformed[0]['ctx'].get('error', 'parse error')}",
                          slug="malformed-json") from None
        raise InvalidRequest.from_validation(error) from None


def query(model: type[M]) -> M:
    """Validate the query string against ``model``."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as error:
        raise InvalidRequest.from_validation(error) from None
