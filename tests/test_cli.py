"""``agentq keys create`` prints the key alone; only its hash is stored."""

from __future__ import annotations

import hashlib
import subprocess

import httpx
from sqlalchemy import select

from tests.conftest import Services
from tests.harness import BIN, ROOT, ApiServer
from worker.models import ApiKey, Tenant
from worker.runtime import Runtime


def agentq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentq"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_keys_create_prints_only_the_key_and_stores_its_hash(
    env: dict[str, str], runtime: Runtime, api_server: ApiServer
) -> None:
    result = agentq("keys", "create", "--tenant", "acme-cli", "--name", "ci", env=env)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n" and key.startswith("aq_")
    with runtime.db.transaction() as session:
        stored = session.scalars(
            select(ApiKey).join(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(Tenant.name == "acme-cli")
        ).all()
    assert len(stored) == 1
    assert stored[0].key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in {stored[0].prefix, stored[0].key_hash} and len(stored[0].prefix) < 16
    # And the key works over HTTP
    response = httpx.get(f"{api_server.url}/v1/runs",
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200


def test_migrate_is_idempotent(env: dict[str, str], services: Services) -> None:
    result = agentq("migrate", env=env)
    assert result.returncode == 0, result.stderr
