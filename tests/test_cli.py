"""``agentq keys create`` prints the key alone; only its hash is stored."""

from __future__ import annotations

import hashlib
import json
import subprocess

import httpx
from sqlalchemy import select

from tests.conftest import ApiClient, Services
from tests.harness import BIN, ROOT, ApiServer
from worker.base.models import ApiKey, Tenant
from worker.base.runtime import Runtime


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


def test_dlq_list_replay_and_purge(env: dict[str, str], api: ApiClient, worker: object) -> None:
    # Given two dead-lettered runs of one tenant
    ids = [api.submit("flaky", {"failures": 9}, max_attempts=1)["id"] for _ in range(2)]
    for run_id in ids:
        assert api.wait(run_id)["status"] == "dead_lettered"
    tenant = ["--tenant", api.tenant.name]
    # When an operator lists them
    listed = agentq("dlq", "list", *tenant, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {run["id"] for run in json.loads(listed.stdout)} == set(ids)
    table = agentq("dlq", "list", *tenant, env=env).stdout
    assert ids[0] in table and "RetryableError" in table
    # And replays one: it is queued again with its attempts kept
    replayed = agentq("dlq", "replay", ids[0], env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.split() == [ids[0]]
    assert api.wait(ids[0], statuses={"dead_lettered"}, timeout=30)["attempt"] == 2
    # And purges the other: it leaves the list, its history stays
    purged = agentq("dlq", "purge", ids[1], env=env)
    assert purged.returncode == 0 and "1 run(s) purged" in purged.stderr
    remaining = {run["id"] for run in json.loads(
        agentq("dlq", "list", *tenant, "--json", env=env).stdout)}
    assert remaining == {ids[0]}
    assert api.run(ids[1])["status"] == "dead_lettered"


def test_dlq_replay_all_and_bad_usage(env: dict[str, str], api: ApiClient,
                                      worker: object) -> None:
    run_id = api.submit("flaky", {"failures": 1}, max_attempts=1)["id"]
    assert api.wait(run_id)["status"] == "dead_lettered"
    result = agentq("dlq", "replay", "--all", "--tenant", api.tenant.name, env=env)
    assert result.stdout.split() == [run_id]
    assert api.wait(run_id, statuses={"succeeded"}, timeout=30)["result"] == {"attempt": 2}
    usage = agentq("dlq", "replay", env=env)
    assert usage.returncode == 2 and "pass --all" in usage.stderr
    unknown = agentq("dlq", "replay", "run_nope", env=env)
    assert unknown.returncode == 1 and "no such run: run_nope" in unknown.stderr
