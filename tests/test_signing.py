"""Standard Webhooks signatures: the specification's known answer, and an independent check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from worker.base import signing

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'


def spec_verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The specification, written out independently of agentq's code."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(version == "v1" and hmac.compare_digest(signature, expected)
               for version, _, signature in (part.partition(",") for part in
                                             headers["webhook-signature"].split(" ")))


def test_known_answer() -> None:
    assert signing.sign(SECRET, MSG_ID, TIMESTAMP, BODY) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_an_independent_implementation_verifies_agentq_signatures() -> None:
    secret = signing.new_secret()
    header = signing.signature_header([secret], "msg_1", 1700000000, b'{"a":1}')
    headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
               "webhook-signature": header}
    assert spec_verify(secret, headers, b'{"a":1}')
    assert not spec_verify(secret, headers, b'{"a":2}')
    assert not spec_verify(signing.new_secret(), headers, b'{"a":1}')


def test_with_two_live_secrets_either_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    header = signing.signature_header([new, old], "msg_2", 1700000001, b"{}")
    assert len(header.split(" ")) == 2
    headers = {"webhook-id": "msg_2", "webhook-timestamp": "1700000001",
               "webhook-signature": header}
    assert spec_verify(old, headers, b"{}") and spec_verify(new, headers, b"{}")
    assert signing.verify(old, "msg_2", 1700000001, b"{}", header)


def test_secrets_are_whsec_and_at_least_24_random_bytes() -> None:
    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    assert secret != signing.new_secret()


def test_the_standardwebhooks_library_verifies_agentq_signatures() -> None:
    from standardwebhooks.webhooks import Webhook

    secret, body = signing.new_secret(), b'{"type":"run.succeeded"}'
    now = int(time.time())
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(now),
               "webhook-signature": signing.signature_header([secret], "msg_x", now, body)}
    assert Webhook(secret).verify(body, headers) == {"type": "run.succeeded"}
