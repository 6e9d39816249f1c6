"""Keys and scopes, revocation, JWTs from a product's own front end, and rate limits."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from tests.conftest import ApiClient, Tenant, make_tenant
from tests.harness import BIN, ROOT, wait_for
from worker.app import build_runtime
from worker.base.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")

JWT_SECRET = "a-shared-secret-for-hs256-tokens-0123456789"
ISSUER, AUDIENCE = "https://app.example", "agentq"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_a_read_only_key_reads_but_cannot_create_or_cancel(app: Flask, runtime: Any,
                                                           api: ApiClient) -> None:
    run = api.submit("sleep", {"seconds": 2})
    reader = ApiClient(app.test_client(), make_tenant_key(runtime, api.tenant,
                                                          scopes=("runs:read",)))
    assert reader.get(f"/v1/runs/{run['id']}").status_code == 200
    refused = reader.post("/v1/runs", json={"agent": "echo"})
    assert refused.status_code == 403 and "runs:write" in refused.get_json()["detail"]
    assert reader.post(f"/v1/runs/{run['id']}/cancel").status_code == 403
    assert reader.get("/v1/webhook-endpoints").status_code == 403  # admin only


def make_tenant_key(runtime: Any, tenant: Tenant, scopes: tuple[str, ...]) -> Tenant:
    from worker.access import keys

    with runtime.db.transaction() as session:
        token, _ = keys.issue_key(session, tenant_id=tenant.id, name="t", scopes=scopes)
    return Tenant(id=tenant.id, name=tenant.name, key=token)


def test_keys_are_listed_created_and_revoked_over_the_api(api: ApiClient) -> None:
    made = api.post("/v1/api-keys", json={"name": "ci", "scopes": ["runs:read"]})
    assert made.status_code == 201
    key = made.get_json()
    assert key["key"].startswith("aq_") and key["scopes"] == ["runs:read"]
    listed = api.get("/v1/api-keys").get_json()["items"]
    assert {item["id"] for item in listed} >= {key["id"]}
    assert all("key" not in item and "key_hash" not in item for item in listed)
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert api.client.get("/v1/runs", headers=headers).status_code == 200
    assert api.client.delete(f"/v1/api-keys/{key['id']}", headers=api.headers).status_code \
        == 204
    revoked = api.client.get("/v1/runs", headers=headers)
    assert revoked.status_code == 401


def test_agentq_keys_list_and_revoke(env: dict[str, str], api: ApiClient) -> None:
    def agentq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "agentq"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    made = agentq("keys", "create", "--tenant", api.tenant.name, "--scope", "runs:read")
    key = made.stdout.strip()
    listed = json.loads(agentq("keys", "list", "--tenant", api.tenant.name, "--json").stdout)
    mine = next(row for row in listed if row["prefix"] == key[:12])
    assert mine["scopes"] == ["runs:read"] and mine["revoked_at"] is None
    assert key not in agentq("keys", "list").stdout
    headers = {"Authorization": f"Bearer {key}"}
    assert api.client.get("/v1/runs", headers=headers).status_code == 200  # now remembered
    assert agentq("keys", "revoke", mine["prefix"]).returncode == 0
    # Another process revoked it: this one hears of it over Redis, well before the cache's TTL.
    wait_for(lambda: api.client.get("/v1/runs", headers=headers).status_code == 401,
             timeout=5, what="a key revoked by the CLI to be refused")
    assert agentq("keys", "revoke", "aq_nothing").returncode == 1


@pytest.fixture
def jwt_app(settings: Settings) -> Iterator[FlaskClient]:
    configured = settings.model_copy(update={
        "jwt_secret": JWT_SECRET, "jwt_public_key": RSA_PUBLIC, "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE})
    yield create_app(runtime=build_runtime(configured)).test_client()


def token(tenant: str, *, key: Any = JWT_SECRET, algorithm: str = "HS256",
          **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, "sub": "user-1",
            "tenant": tenant, **claims}
    return jwt.encode(body, key, algorithm=algorithm)


def call(client: FlaskClient, bearer: str) -> int:
    return client.get("/v1/runs", headers={"Authorization": f"Bearer {bearer}"}).status_code


def test_jwts_are_accepted(jwt_app: FlaskClient, tenant: Tenant) -> None:
    assert call(jwt_app, token(tenant.name)) == 200
    assert call(jwt_app, token(tenant.name, key=RSA_KEY, algorithm="RS256")) == 200
    created = jwt_app.post("/v1/runs", json={"agent": "echo"},
                           headers={"Authorization": f"Bearer {token(tenant.name)}"})
    assert created.status_code == 202


@pytest.mark.parametrize("case", [
    "wrong audience", "wrong issuer", "expired", "wrong signature", "alg none", "no tenant",
    "hs256 signed with the public key",
])
def test_jwts_are_refused(jwt_app: FlaskClient, tenant: Tenant, case: str) -> None:
    bad = {
        "wrong audience": lambda: token(tenant.name, aud="someone-else"),
        "wrong issuer": lambda: token(tenant.name, iss="https://evil.example"),
        "expired": lambda: token(tenant.name, exp=int(time.time()) - 10),
        "wrong signature": lambda: token(tenant.name, key="not-the-secret-but-long-enough-xx"),
        "alg none": lambda: jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "tenant": tenant.name,
                                        "exp": int(time.time()) + 300}, None,
                                       algorithm="none"),
        "no tenant": lambda: token("no-such-tenant"),
        "hs256 signed with the public key": lambda: _confused(tenant.name),
    }[case]()
    assert call(jwt_app, bad) == 401


def _confused(tenant: str) -> str:
    """The key-confusion attack: HS256 keyed with the RSA public key."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "tenant": tenant,
                             "exp": int(time.time()) + 300}).encode())
    signature = hmac.new(RSA_PUBLIC.encode(), f"{header}.{claims}".encode(),
                         hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def test_a_burst_over_the_rate_limit_is_429_with_retry_after(settings: Settings,
                                                             runtime: Any) -> None:
    limited = create_app(runtime=build_runtime(settings.model_copy(
        update={"rate_limit_per_minute": 5}))).test_client()
    tenant = make_tenant(runtime)
    headers = {"Authorization": f"Bearer {tenant.key}"}
    codes = [limited.get("/v1/runs", headers=headers).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    response = limited.get("/v1/runs", headers=headers)
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.mimetype == "application/problem+json"
    # Another key has a budget of its own
    other = make_tenant(runtime)
    assert limited.get("/v1/runs", headers={"Authorization": f"Bearer {other.key}"}) \
        .status_code == 200
