"""Opaque cursors for newest-first lists: the last id of a page, encoded."""

from __future__ import annotations

import base64
import binascii

from worker.base.errors import InvalidRequest


def encode(last_id: str | None) -> str | None:
    if last_id is None:
        return None
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode(cursor: str | None, *, prefix: str) -> str | None:
    """The id to continue before, or InvalidRequest if the cursor is not one of ours."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        last_id = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        last_id = ""
    if last_id.startswith(prefix) and last_id.isprintable() and len(last_id) <= 100:
        return last_id
    raise InvalidRequest("the cursor is not valid", [
        {"field": "cursor", "message": "pass next_cursor from a previous page unchanged"}])
