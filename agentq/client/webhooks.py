"""Check that a webhook came from agentq: Standard Webhooks (https://www.standardwebhooks.com/),
as ``worker.base.signing`` signs them.

A delivery carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256, keyed with the base64-decoded
``whsec_`` secret, over ``"{id}.{timestamp}.{body}"``; one per live secret, separated by
spaces, while a secret is being rotated. Verify the raw body, before parsing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Protocol

from pydantic import ValidationError

from agentq.client.errors import WebhookVerificationError
from agentq.client.models import WebhookEvent

TOLERANCE_S = 300  # a timestamp further from now than this is refused (a replay, or a skew)
SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


class Headers(Protocol):
    """Any headers that list their items: a dict, Flask's ``request.headers``, httpx's."""

    def items(self) -> Iterable[tuple[str, str]]: ...


def verify(body: bytes | str, headers: Headers, secret: str, *,
           tolerance_s: float = TOLERANCE_S) -> WebhookEvent:
    """The event, if ``body`` and ``headers`` are a webhook signed with ``secret`` within
    ``tolerance_s`` of now; else raise WebhookVerificationError saying what is wrong.
    Deduplicate on ``webhook-id``: a retried delivery keeps it."""
    raw = body.encode() if isinstance(body, str) else body
    given = {name.lower(): value for name, value in headers.items()}
    msg_id, stamp, signatures = (_header(given, name) for name in (
        "webhook-id", "webhook-timestamp", "webhook-signature"))
    _check_time(stamp, tolerance_s)
    expected = signature(secret, msg_id, stamp, raw)
    if not any(hmac.compare_digest(expected.encode(), candidate.encode())
               for candidate in signatures.split() if candidate.startswith("v1,")):
        raise WebhookVerificationError("no v1 signature in webhook-signature matches the "
                                       "secret: the body was altered, or signed by another")
    try:
        return WebhookEvent.model_validate_json(raw)
    except ValidationError as error:
        raise WebhookVerificationError(f"signed, but not an agentq event: {error}") from None


def signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The ``v1,`` signature of one message with one secret."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a Standard Webhooks secret "
                                       "(whsec_ and base64)") from None
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: dict[str, str], name: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise WebhookVerificationError(f"the {name} header is missing")
    return value


def _check_time(stamp: str, tolerance_s: float) -> None:
    if not stamp.isdigit():
        raise WebhookVerificationError(f"webhook-timestamp {stamp[:40]!r} is not Unix seconds")
    skew = time.time() - int(stamp)
    if skew > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {skew:.0f} s old (more than "
                                       f"{tolerance_s:g} s): a replay, or a stale delivery")
    if skew < -tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {-skew:.0f} s in the future "
                                       f"(more than {tolerance_s:g} s): check the clocks")
