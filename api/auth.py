"""Bearer API keys: every ``/v1`` request names its tenant, and nothing else does."""

from __future__ import annotations

from flask import g, request

from api.deps import runtime
from api.errors import unauthorized
from worker import keys

# Credentials must never travel in URLs (they end up in logs and browser history).
_CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "auth"})


def require_key() -> None:
    """Authenticate the request's bearer key, or refuse it with 401."""
    if _CREDENTIAL_PARAMS & {name.lower() for name in request.args}:
        raise unauthorized("credentials in the query string are refused; send the key in "
                           "the Authorization header instead")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("send your API key as 'Authorization: Bearer <key>'")
    with runtime().db.transaction() as session:
        caller = keys.authenticate(session, token=token)
    if caller is None:
        raise unauthorized("the API key is not valid (unknown or revoked)")
    g.principal = caller
