"""Who is calling, and what they may do: every ``/v1`` request names its tenant.

Credentials: an API key (``Authorization: Bearer aq_…``), or, if configured, a JWT from the
product's own front end. Scopes: ``runs:read`` for reading, ``runs:write`` for creating,
cancelling and replaying, ``admin`` for webhook endpoints, hook sources and API keys.
Each key has a request rate limit, counted in Redis so all API processes share it.
"""

from __future__ import annotations

from flask import g, request

from api.deps import principal, runtime
from api.errors import Problem, unauthorized
from worker.access import keys, ratelimit
from worker.access.cache import KeyCache

# Credentials must never travel in URLs (they end up in logs and browser history).
_CREDENTIAL_PARAMS = frozenset({"api_key", "apikey", "key", "token", "access_token", "auth"})
SUBPROTOCOL_PREFIX = "bearer."


def require_key() -> None:
    """Authenticate; reading needs ``runs:read``, anything else ``runs:write``."""
    _refuse_query_credentials()
    _authenticate(_header_token())
    require_scope(keys.READ if request.method in {"GET", "HEAD"} else keys.WRITE)


def require_admin() -> None:
    """Authenticate; the ``admin`` scope is needed for everything here."""
    _refuse_query_credentials()
    _authenticate(_header_token())
    require_scope(keys.ADMIN)


def require_websocket_key() -> None:
    """As ``require_key`` for reading; browsers, which cannot set headers on a WebSocket,
    may send the key as the subprotocol ``bearer.<key>`` instead."""
    _refuse_query_credentials()
    _authenticate(_header_token() or _subprotocol_token())
    require_scope(keys.READ)


def require_scope(scope: str) -> None:
    if scope not in principal().scopes:
        raise Problem(403, "Forbidden", f"this credential lacks the {scope!r} scope",
                      slug="forbidden")


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
    rt = runtime()
    jwt_enabled = bool(rt.settings.jwt_secret or rt.settings.jwt_public_key)
    if token.count(".") == 2 and jwt_enabled:
        with rt.db.autocommit() as session:
            caller = keys.authenticate_jwt(session, token=token, settings=rt.settings)
    else:
        key_hash, cache = keys.hash_key(token), KeyCache.of(rt)
        caller = cache.get(key_hash)
        if caller is None:
            generation = cache.generation  # before the lookup: see KeyCache
            with rt.db.autocommit() as session:
                caller = keys.authenticate(session, token=token)
            if caller is not None:
                cache.put(key_hash, caller, generation=generation)
    if caller is None:
        raise unauthorized("the credential is not valid (unknown, revoked, or expired)")
    g.principal = caller
    ratelimit.spend(rt.bus.redis, bucket=caller.key_id,
                    per_minute=rt.settings.rate_limit_per_minute)
