"""Standard Webhooks signatures (https://www.standardwebhooks.com/), as Svix makes them.

A secret is ``whsec_`` + base64 of random bytes. A signature is ``v1,`` + base64 of
HMAC-SHA256, keyed with the decoded secret, over ``"{msg_id}.{timestamp}.{body}"``; when
several secrets are live (a rotation's overlap) the header holds one per secret, separated
by spaces, and a receiver holding any of them accepts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def key_bytes(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for; ValueError if it is not base64."""
    return base64.b64decode(secret.removeprefix(PREFIX), validate=True)


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``v1,`` signature of one message with one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(live: list[str], msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` header: a signature per live secret, space-separated."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in live)


def verify(secret: str, msg_id: str, timestamp: int | str, body: bytes, header: str) -> bool:
    """True if any ``v1`` signature in ``header`` is right (constant-time compares)."""
    expected = sign(secret, msg_id, timestamp, body).encode()
    return any(
        hmac.compare_digest(expected, candidate.encode())
        for candidate in header.split()
        if candidate.startswith("v1,")
    )


def live_secrets(current: str | None, previous: str | None,
                 previous_expires_at: datetime | None) -> list[str]:
    """The secrets that sign now: the current one, and the previous during its overlap."""
    secrets = [current] if current else []
    if previous and previous_expires_at and previous_expires_at > datetime.now(UTC):
        secrets.append(previous)
    return secrets
