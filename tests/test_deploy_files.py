"""The Procfile and docker-compose.yml are valid; agentq accepts every command in them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.harness import BIN, ROOT

# The Compose Specification's schema lives beside the project (../shared), never copied in.
_SCHEMA_PLACES = (ROOT.parent / "shared", Path("/work/shared"))
COMPOSE_SCHEMA = next(
    (place / "vendor-data" / "compose-spec.json" for place in _SCHEMA_PLACES
     if (place / "vendor-data" / "compose-spec.json").exists()),
    _SCHEMA_PLACES[0] / "vendor-data" / "compose-spec.json",
)


def _compose() -> dict[str, object]:
    document: dict[str, object] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def _procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def _dry_run(command: str) -> str:
    """The command, changed to validate its arguments without serving."""
    program = command.split(" ", 1)[0]
    if program == "gunicorn":
        return command.replace("gunicorn ", "gunicorn --check-config ", 1)
    if program in {"celery", "agentq"}:
        return command + " --help"
    raise AssertionError(f"unexpected program in {command!r}")


def _accepted(command: str, env: dict[str, str]) -> None:
    result = subprocess.run(["bash", "-c", _dry_run(command)], cwd=ROOT,
                            env={**env, "PATH": f"{BIN}:{os.environ['PATH']}", "PORT": "8000"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{command!r} refused:\n{result.stdout}\n{result.stderr}"


def test_compose_file_matches_the_compose_specification() -> None:
    if not COMPOSE_SCHEMA.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{COMPOSE_SCHEMA} is missing")
        pytest.skip(f"{COMPOSE_SCHEMA} is not on this machine")
    jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text())).validate(_compose())


def test_compose_runs_every_process_and_bakes_in_no_secret() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert {"postgres", "redis", "migrate", "api", "worker", "cpu", "notifier", "beat",
            "flower"} <= set(services)
    # --scale worker=3 needs a worker with no fixed name or published port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD:?" in text


@pytest.mark.parametrize("service", ["migrate", "api", "worker", "urgent", "cpu", "notifier",
                                     "beat", "flower"])
def test_compose_commands_are_accepted(service: str, env: dict[str, str]) -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    _accepted(shlex.join(services[service]["command"]), env)


@pytest.mark.parametrize("process", ["web", "worker", "urgent", "cpu", "notifier", "beat",
                                     "flower"])
def test_procfile_commands_are_accepted(process: str, env: dict[str, str]) -> None:
    _accepted(_procfile()[process], env)


def test_procfile_web_listens_on_port() -> None:
    assert "$PORT" in _procfile()["web"]


def test_dockerfile_installs_what_the_commands_need() -> None:
    dockerfile = Path(ROOT / "Dockerfile").read_text()
    for needed in ("alembic.ini", "migrations", "api", "worker", "agentq"):
        assert f"COPY {needed}" in dockerfile or f" {needed} " in dockerfile
