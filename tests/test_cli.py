"""``agentq keys create`` prints the key alone; only its hash is stored. In a checkout where
``make dev`` wrote ``.agentq/env``, commands use its servers with no variables set."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import select

from agentq import dev
from tests.conftest import ApiClient, Services, StartWorker
from tests.harness import BIN, ROOT, ApiServer
from worker.base.models import ApiKey, Tenant
from worker.base.runtime import Runtime


def agentq(*args: str, env: dict[str, str],
           cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentq"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def checkout(root: Path, **variables: str) -> Path:
    """A checkout at ``root`` whose ``.agentq/env`` holds ``variables``, written as
    ``make dev`` writes it; returns a directory inside it to run commands from."""
    (root / ".git").mkdir(parents=True)
    (root / ".agentq").mkdir()
    dev._write_env(root / ".agentq" / "env", **variables)
    (root / "docs").mkdir()
    return root / "docs"


def without_servers(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in {"DATABASE_URL", "REDIS_URL", "BROKER_URL"}}


def tenant_exists(runtime: Runtime, name: str) -> bool:
    with runtime.db.transaction() as session:
        return session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None


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


def test_a_checkout_where_make_dev_ran_needs_no_variables(
    tmp_path: Path, env: dict[str, str], services: Services, runtime: Runtime
) -> None:
    # Given make dev's .agentq/env in the checkout, and a shell with no DATABASE_URL
    inside = checkout(tmp_path, DATABASE_URL=services.database_url,
                      REDIS_URL=services.redis_url, AGENTQ_SECRET_KEY="x" * 40)
    # When a key is made from a directory inside the checkout
    result = agentq("keys", "create", "--tenant", "acme-devenv", env=without_servers(env),
                    cwd=inside)
    # Then it is made in make dev's database, and stderr says where the URLs came from
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("aq_") and tenant_exists(runtime, "acme-devenv")
    # (AGENTQ_SECRET_KEY is set in the tests' environment, so the file's is not used)
    assert result.stderr == ("agentq: using ../.agentq/env (make dev's servers) for "
                             "DATABASE_URL, REDIS_URL\n")


def test_variables_already_set_win_over_make_devs_env(
    tmp_path: Path, env: dict[str, str], services: Services, runtime: Runtime
) -> None:
    # Given a file naming a database nobody listens on, and DATABASE_URL set in the shell
    inside = checkout(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:9/none",
                      REDIS_URL=services.redis_url)
    shell = {**without_servers(env), "DATABASE_URL": services.database_url}
    # When a key is made
    result = agentq("keys", "create", "--tenant", "acme-shell", env=shell, cwd=inside)
    # Then the shell's database is used, and the file only fills in what the shell lacks
    assert result.returncode == 0, result.stderr
    assert tenant_exists(runtime, "acme-shell")
    assert result.stderr == "agentq: using ../.agentq/env (make dev's servers) for REDIS_URL\n"


def test_with_neither_file_nor_variable_the_error_names_database_url(tmp_path: Path) -> None:
    # Given a checkout without .agentq/env, below a directory that has one
    (tmp_path / ".agentq").mkdir()
    dev._write_env(tmp_path / ".agentq" / "env", DATABASE_URL="postgresql://x@127.0.0.1:9/y")
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    # When a key is made there with nothing set
    result = agentq("keys", "create", "--tenant", "t", env={"PATH": str(BIN)}, cwd=project)
    # Then the other checkout's file is not read, and one line names DATABASE_URL and the fix
    assert result.returncode == 2
    assert result.stderr == ("Error: invalid configuration: DATABASE_URL is required but not "
                             "set; set it, or start `make dev` here first (agentq then reads "
                             "the .agentq/env it writes)\n")


def test_agentq_dev_does_not_read_the_env_it_wrote(tmp_path: Path) -> None:
    # Given the file a stopped make dev left, naming its embedded servers
    inside = checkout(tmp_path, DATABASE_URL="postgresql://x@127.0.0.1:9/y",
                      REDIS_URL="redis://127.0.0.1:9/0")
    # When agentq dev starts again (stopped at once by a bad PORT)
    result = agentq("dev", env={"PATH": str(BIN), "PORT": "0"}, cwd=inside)
    # Then it did not take those servers for ones it was given to use
    assert result.returncode == 2
    assert result.stderr == ("Error: invalid configuration: PORT Input should be greater "
                             "than 0\n")


def test_runs_tree_prints_a_fanout_from_any_run_in_it(env: dict[str, str], api: ApiClient,
                                                     worker: object) -> None:
    # Given a demo.fanout run that started three children
    run = api.submit("demo.fanout", {"questions": ["Why is the sky blue?", "What causes tides?",
                                                   "Why are plants green?"],
                                     "max_concurrency": 2, "phase_s": 0})
    assert api.wait(run["id"], timeout=60)["status"] == "succeeded"
    children = api.get(f"/v1/runs/{run['id']}/children").get_json()["items"]
    # When the tree of one of the children is asked for
    shown = agentq("runs", "tree", children[1]["id"], env=env)
    # Then it is printed from the root down, the children under it, the one asked marked
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"{run['id']}  -  demo.fanout  succeeded"] + [
        f"  {c['id']}  {c['child_name']}  demo.research  succeeded"
        + ("  <- this run" if c is children[1] else "") for c in children]
    assert shown.stderr == ""
    # And --json nests the same tree
    nested = json.loads(agentq("runs", "tree", run["id"], "--json", env=env).stdout)
    assert (nested["run_id"], nested["tenant_id"], nested["cut"]) == (
        run["id"], api.tenant.id, False)
    root = nested["tree"]
    assert (root["id"], root["agent"], root["depth"], root["not_shown"]) == (
        run["id"], "demo.fanout", 0, 0)
    assert [(c["id"], c["child_name"], c["status"], c["depth"], c["children"])
            for c in root["children"]] == [
        (c["id"], c["child_name"], "succeeded", 1, []) for c in children]
    # An unknown run is one line and exit code 1
    unknown = agentq("runs", "tree", "run_nope", env=env)
    assert unknown.returncode == 1 and unknown.stderr == "Error: no such run: run_nope\n"


def test_runs_tree_indents_a_deep_tree_and_cuts_one_past_the_limit(
        env: dict[str, str], api: ApiClient, crash_worker: StartWorker) -> None:
    # Given a chain of nine runs: an agent that starts itself until the depth limit
    crash_worker(concurrency=4)
    root = api.submit("test.recursive", {})
    assert api.wait(root["id"], timeout=60)["status"] == "failed"
    chain = [api.run(root["id"])]
    while found := api.get(f"/v1/runs/{chain[-1]['id']}/children").get_json()["items"]:
        chain.append(found[0])
    assert len(chain) == 9
    lines = [f"{'  ' * depth}{run['id']}  {run['child_name'] or '-'}  test.recursive  failed"
             for depth, run in enumerate(chain)]
    # When a run four down is asked for, the whole chain is shown, indented by depth
    shown = agentq("runs", "tree", chain[4]["id"], env=env)
    assert shown.returncode == 0, shown.stderr
    lines[4] += "  <- this run"
    assert shown.stdout.splitlines() == lines
    # And cut at 3 runs, the tree still leads to the run asked for, and says what it left out
    cut = agentq("runs", "tree", chain[6]["id"], "--limit", "3", env=env)
    assert cut.returncode == 0, cut.stderr
    lines[4] = lines[4].removesuffix("  <- this run")
    assert cut.stdout.splitlines() == [*lines[:6], lines[6] + "  <- this run",
                                       "              ... 1 more not shown"]
    assert cut.stderr == ("the tree is cut at 3 runs (--limit): the others are counted under "
                          "their parents as not shown\n")
    nested = json.loads(agentq("runs", "tree", root["id"], "--json", "--limit", "2",
                               env=env).stdout)
    assert nested["cut"] is True
    assert nested["tree"]["children"][0]["not_shown"] == 1
    assert nested["tree"]["children"][0]["children"] == []
