"""Bearer API keys: every ``/v1`` request names its tenant, and nothing else does."""

from __future__ import annotations

from flask import g, request

from api.deps import runtime
from api.errors import unauthorized
from worker import keys

# Credentials must never travel in URLs (they end up in logs and browser history).
_CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "auth"})


SUBPROTOCOL_PREFIX = "bearer."


def require_key() -> None:
    """Authenticate the request's bearer key, or refuse it with 401."""
    _refuse_query_credentials()
    _authenticate(_header_token())


def require_websocket_key() -> None:
    """As ``require_key``; browsers, which cannot set headers on a WebSocket, may send the
    key as the subprotocol ``bearer.<key>`` instead."""
    _refuse_query_credentials()
    _authenticate(_header_token() or _subprotocol_token())


def _refuse_query_credentials() -> None:
    if _CREDENTIAL_PARAMS & {name.lower() for name in request.args}:
        raise unauthorized("credentials in the query string are refused; send the key in "
                           "the Authorization header instead")


def _header_token() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _subprotocol_token() -> str:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for protocol in (item.strip() for item in offered.split(",")):
        if protocol.startswith(SUBPROTOCOL_PREFIX):
            return protocol.removeprefix(SUBPROTOCOL_PREFIX)
    return ""


def _authenticate(token: str) -> None:
    if not token:
        raise unauthorized("send your API key as 'Authorization: Bearer <key>'")
    with runtime().db.transaction() as session:
        caller = keys.authenticate(session, token=token)
    if caller is None:
        raise unauthorized("the API key is not valid (unknown or revoked)")
    g.principal = caller
