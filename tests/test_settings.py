"""Settings are read once, validated at start, and a bad one is named in a one-line error."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import BIN
from worker.base.errors import ConfigurationError
from worker.base.settings import load_dev_settings, load_settings

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("given", [
    "postgres://u:p@db:5432/agentq",
    "postgresql://u:p@db:5432/agentq",
    "postgresql+psycopg://u:p@db:5432/agentq",
])
def test_database_url_is_taken_as_managed_services_give_it(given: str) -> None:
    settings = load_settings(database_url=given, redis_url=REDIS)
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/agentq"


def test_missing_database_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="DATABASE_URL is required"):
        load_settings(redis_url=REDIS)


def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigurationError) as raised:
        load_settings(database_url="mysql://x/y", redis_url="http://nope")
    message = str(raised.value)
    assert "DATABASE_URL must be a PostgreSQL URL" in message
    assert "REDIS_URL must be a Redis URL" in message
    assert "AGENTQ_MAX_BODY_BYTES" in message


def test_variables_read_under_their_own_names_are_named_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given aliased variables missing or wrong in the environment itself (not overrides)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "http://nope")
    monkeypatch.setenv("PORT", "0")
    # Then each is named as it is set: DATABASE_URL, not AGENTQ_DATABASE_URL
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert re.search(r"(: |; )DATABASE_URL is required but not set", str(raised.value))
    assert re.search(r"(: |; )REDIS_URL must be a Redis URL", str(raised.value))
    with pytest.raises(ConfigurationError, match=r"(: |; )PORT Input should be greater"):
        load_dev_settings()


def test_agents_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_AGENTS", "mypkg.agents, other.agents")
    settings = load_settings(database_url="postgres://x/y", redis_url=REDIS)
    assert settings.agents == ["mypkg.agents", "other.agents"]


def test_broker_defaults_to_redis_and_can_be_rabbitmq() -> None:
    assert load_settings(database_url="postgres://x/y", redis_url=REDIS).celery_broker_url == REDIS
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    assert load_settings(database_url="postgres://x/y", redis_url=REDIS,
                         broker_url=amqp).celery_broker_url == amqp


@pytest.mark.parametrize("command", [
    ["celery", "-A", "worker", "worker"],
    ["gunicorn", "--check-config", "api:create_app()"],
    ["agentq", "keys", "create", "--tenant", "t"],
])
def test_processes_refuse_to_start_without_their_settings(command: list[str],
                                                          tmp_path: Path) -> None:
    # Not in the checkout: agentq would read the .agentq/env a `make dev` there left.
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=tmp_path,
                            env={"PATH": str(BIN)}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DATABASE_URL is required but not set" in result.stderr + result.stdout


def test_llm_limits_are_read_per_model_and_a_bad_one_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_LLM_LIMITS", "gpt-4o=500rpm:30000tpm, *=5rps")
    limits = load_settings(database_url="postgres://x/y", redis_url=REDIS).llm_limits
    assert (limits["gpt-4o"].requests, limits["gpt-4o"].tokens) == (500, 30000)
    assert (limits["*"].requests, limits["*"].request_window_s) == (5, 1.0)
    monkeypatch.setenv("AGENTQ_LLM_LIMITS", "gpt-4o=500 a minute")
    with pytest.raises(ConfigurationError, match=r"AGENTQ_LLM_LIMITS.*rpm, rps, tpm or tps"):
        load_settings(database_url="postgres://x/y", redis_url=REDIS)
