"""How each platform signs its webhooks, and what its deliveries mean.

Signatures are checked on the raw body, exactly as received, with constant-time compares;
timestamps must be within ``TOLERANCE_S`` of now. Only then is the body parsed.

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``; the delivery id
  is ``X-GitHub-Delivery`` (the same on redelivery), the event ``X-GitHub-Event``.
- Slack: ``X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:{ts}:{body}")>`` with
  ``X-Slack-Request-Timestamp``; JSON (Events API) or form-encoded (slash commands,
  interactivity) bodies. A button whose value is ``{"run_id", "waitpoint", "data"}`` answers
  that waitpoint (``Resume``) instead of starting a run.
- Stripe: ``Stripe-Signature: t=…,v1=…[,v1=…]`` over ``"{t}.{body}"``; any ``v1`` may match;
  other schemes are ignored.
- Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from worker.base import jsonb, signing

TOLERANCE_S = 300
MIN_SECRET_CHARS = 16


class Rejected(Exception):
    """The delivery is not authentic (bad or missing signature, stale timestamp)."""


class Unreadable(Exception):
    """The delivery is authentic but its body cannot be understood."""


@dataclass(frozen=True)
class Inbound:
    """What a verified delivery says."""

    event_type: str
    delivery_id: str | None = None
    payload: Any = None
    text: str | None = None  # for the agent, normalised
    response_url: str | None = None  # Slack: where the answer goes
    answer: dict[str, Any] | None = None  # a handshake answered at once, with no run
    action: str | None = None  # a sub-type an event filter may name ("opened")
    extra: dict[str, Any] = field(default_factory=dict)
    resume: Resume | None = None  # a button press that answers a waitpoint, no run


@dataclass(frozen=True)
class Resume:
    """A Slack button that answers a waitpoint: the run and waitpoint its value names, the
    data to complete it with, and who pressed it."""

    run_id: str
    waitpoint: str
    data: Any
    by: str


def ephemeral(text: str) -> dict[str, Any]:
    """A Slack answer only the person who pressed the button sees."""
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


_MAX_DELIVERY_ID = 200


def checked(inbound: Inbound) -> Inbound:
    """Refuse (Unreadable) a delivery whose fields are not what its platform sends: ids,
    types and URLs are strings of sensible length (a sender may be anyone with the secret,
    or a platform's bug)."""
    for name in ("event_type", "delivery_id", "text", "response_url", "action"):
        value = getattr(inbound, name)
        if value is not None and not isinstance(value, str):
            raise Unreadable(f"the delivery's {name.replace('_', ' ')} is not a string")
    if not inbound.event_type:
        raise Unreadable("the delivery names no event type")
    if inbound.answer is None and not 0 < len(inbound.delivery_id or "") <= _MAX_DELIVERY_ID:
        raise Unreadable(f"the delivery id must be 1 to {_MAX_DELIVERY_ID} characters")
    return inbound


class Provider(Protocol):
    def check_secret(self, secret: str) -> str | None: ...
    def verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
        ...
    def parse(self, headers: Mapping[str, str], body: bytes) -> Inbound: ...


def normalize_text(text: str) -> str:
    """Decode HTML entities, drop control characters, fold whitespace."""
    decoded = html.unescape(text)
    visible = "".join(
        ch if unicodedata.category(ch) != "Cc" else (" " if ch.isspace() else "")
        for ch in decoded
    )
    return re.sub(r"\s+", " ", visible).strip()


def _hex_hmac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


_TIMESTAMP = re.compile(r"-?[0-9]{1,12}")  # Unix seconds, in ASCII digits


def _fresh(timestamp: str | None, now: float) -> int:
    if not timestamp or not _TIMESTAMP.fullmatch(timestamp.strip()):
        raise Rejected("missing or malformed timestamp")
    value = int(timestamp)
    if abs(now - value) > TOLERANCE_S:
        raise Rejected(f"timestamp is more than {TOLERANCE_S} s from now (replayed?)")
    return value


def _json(body: bytes) -> Any:
    """The body as JSON that can be stored: NaN, Infinity and U+0000 are refused too."""
    try:
        payload = json.loads(body, parse_constant=_no_constant)
        jsonb.check(payload, what="the body")
    except jsonb.Unstorable as error:
        raise Unreadable(str(error)) from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Unreadable("the body is not JSON") from None
    return payload


def _no_constant(name: str) -> Any:
    raise jsonb.Unstorable("the body", f"{name}, which is not JSON")


def _plain_secret(secret: str) -> str | None:
    if len(secret) < MIN_SECRET_CHARS:
        return f"the secret is too short to be safe: use at least {MIN_SECRET_CHARS} characters"
    return None


class GitHub:
    def check_secret(self, secret: str) -> str | None:
        return _plain_secret(secret)

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
        given = headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + _hex_hmac(secret.encode(), body)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise Rejected("X-Hub-Signature-256 does not match")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Inbound:
        event = headers.get("X-GitHub-Event", "")
        delivery = headers.get("X-GitHub-Delivery", "")
        if not event or not delivery:
            raise Unreadable("X-GitHub-Event and X-GitHub-Delivery are required")
        payload = _json(body)
        fields = payload if isinstance(payload, dict) else {}
        if event == "ping":
            return Inbound(event, delivery, payload, answer={"pong": True,
                                                             "zen": fields.get("zen")})
        return Inbound(event, delivery, payload, action=fields.get("action"))


class Slack:
    def check_secret(self, secret: str) -> str | None:
        return _plain_secret(secret)

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
        timestamp = _fresh(headers.get("X-Slack-Request-Timestamp"), now)
        expected = "v0=" + _hex_hmac(secret.encode(), f"v0:{timestamp}:".encode() + body)
        if not hmac.compare_digest(expected.encode(),
                                   headers.get("X-Slack-Signature", "").encode()):
            raise Rejected("X-Slack-Signature does not match")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Inbound:
        if "application/x-www-form-urlencoded" in headers.get("Content-Type", ""):
            return self._form(body)
        payload = _json(body)
        if not isinstance(payload, dict):
            raise Unreadable("the body is not a JSON object")
        if payload.get("type") == "url_verification":
            return Inbound("url_verification", answer={"challenge": payload.get("challenge")})
        event = payload.get("event")
        event = event if isinstance(event, dict) else {}
        event_id = payload.get("event_id")
        if not event_id:
            raise Unreadable("an Events API callback needs event_id")
        text = event.get("text")
        return Inbound(event.get("type") or payload.get("type", "event_callback"), event_id,
                       payload, text=normalize_text(text) if isinstance(text, str) else None)

    def _form(self, body: bytes) -> Inbound:
        fields = {key: values[0] for key, values in
                  parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}
        try:
            jsonb.check(fields, what="the form")
        except jsonb.Unstorable as error:
            raise Unreadable(str(error)) from None
        if "payload" in fields:  # interactivity: buttons, menus, modals
            payload = _json(fields["payload"].encode())
            if not isinstance(payload, dict):
                raise Unreadable("an interaction's payload is a JSON object")
            trigger = payload.get("trigger_id") or payload.get("action_ts")
            if not trigger:
                raise Unreadable("an interaction needs trigger_id")
            kind = payload.get("type", "interaction")
            answered = _waitpoint_value(payload) if kind == "block_actions" else None
            if isinstance(answered, str):  # ours, but not right: say so, start nothing
                return Inbound(kind, trigger, payload, answer=ephemeral(answered))
            return Inbound(kind, trigger, payload, response_url=payload.get("response_url"),
                           resume=answered)
        if "command" not in fields or "trigger_id" not in fields:
            raise Unreadable("a slash command needs command and trigger_id")
        return Inbound("slash_command", fields["trigger_id"], fields,
                       text=normalize_text(fields.get("text", "")),
                       response_url=fields.get("response_url"), action=fields["command"])


_RUN_ID = re.compile(r"run_[A-Za-z0-9]{1,60}")
_WAITPOINT_NAME = re.compile(r"[^\x00-\x1f]{1,200}")


def _waitpoint_value(payload: dict[str, Any]) -> Resume | str | None:
    """The waitpoint a block_actions press answers: a Resume; a message saying what is
    wrong with a value that means to answer one (it has "waitpoint"); None for any other
    press (it starts a run, as every interaction does)."""
    actions = payload.get("actions")
    action = actions[0] if isinstance(actions, list) and actions else None
    raw = action.get("value") if isinstance(action, dict) else None
    if not isinstance(raw, str) or '"waitpoint"' not in raw:
        return None
    try:
        value = _json(raw.encode())  # NaN, U+0000 and deep nesting refused too
    except Unreadable as unreadable:
        return f"This button's value cannot answer a waitpoint: {unreadable}."
    if not isinstance(value, dict) or "waitpoint" not in value:
        return None
    run_id, name = value.get("run_id"), value.get("waitpoint")
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        return 'This button\'s value needs "run_id": the id of the run that waits.'
    if not isinstance(name, str) or not _WAITPOINT_NAME.fullmatch(name):
        return 'This button\'s value needs "waitpoint": the name the agent waits on.'
    user = payload.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    who = user_id if isinstance(user_id, str) and user_id else "unknown"
    return Resume(run_id, name, value.get("data"), by=f"slack:{who}"[:200])


class Stripe:
    def check_secret(self, secret: str) -> str | None:
        return _plain_secret(secret)

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
        parts = [item.partition("=") for item in headers.get("Stripe-Signature", "").split(",")]
        timestamps = [value for key, _, value in parts if key.strip() == "t"]
        candidates = [value.strip() for key, _, value in parts if key.strip() == "v1"]
        if not timestamps or not candidates:
            raise Rejected("Stripe-Signature needs t= and at least one v1=")
        timestamp = _fresh(timestamps[0], now)
        expected = _hex_hmac(secret.encode(), f"{timestamp}.".encode() + body).encode()
        if not any(hmac.compare_digest(expected, candidate.encode())
                   for candidate in candidates):
            raise Rejected("no v1 signature in Stripe-Signature matches")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Inbound:
        payload = _json(body)
        if not isinstance(payload, dict) or not payload.get("id") or not payload.get("type"):
            raise Unreadable("a Stripe event needs id and type")
        return Inbound(payload["type"], payload["id"], payload)


class Standard:
    def check_secret(self, secret: str) -> str | None:
        try:
            key = signing.key_bytes(secret)
        except ValueError:
            return "the secret must be whsec_ followed by base64 (as Standard Webhooks makes it)"
        if len(key) < 16:
            return "the secret is too short to be safe: use at least 16 random bytes"
        return None

    def verify(self, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
        msg_id = headers.get("webhook-id", "")
        timestamp = _fresh(headers.get("webhook-timestamp"), now)
        if not msg_id or not signing.verify(secret, msg_id, timestamp, body,
                                            headers.get("webhook-signature", "")):
            raise Rejected("webhook-signature does not match")

    def parse(self, headers: Mapping[str, str], body: bytes) -> Inbound:
        payload = _json(body)
        kind = payload.get("type") if isinstance(payload, dict) else None
        return Inbound(kind if isinstance(kind, str) else "webhook", headers["webhook-id"],
                       payload)


PROVIDERS: dict[str, Provider] = {
    "github": GitHub(), "slack": Slack(), "stripe": Stripe(), "standard": Standard(),
}


def verify(provider: str, secrets: list[str], headers: Mapping[str, str], body: bytes,
           now: float | None = None) -> None:
    """Accept the delivery if any live secret signs it; raise Rejected otherwise."""
    check = PROVIDERS[provider]
    moment = time.time() if now is None else now
    failure: Rejected | None = None
    for secret in secrets:
        try:
            check.verify(secret, headers, body, moment)
            return
        except Rejected as rejected:
            failure = rejected
    raise failure or Rejected("no secret to check the signature with")
