"""Behaviour that is about HTTP itself, against the API under gunicorn (gevent)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Tenant
from tests.harness import ApiServer

LIMIT = 1024 * 1024  # AGENTQ_MAX_BODY_BYTES default


@pytest.fixture
def http(api_server: ApiServer, tenant: Tenant) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=api_server.url, headers=headers, timeout=10) as client:
        yield client


def _big_body() -> bytes:
    return b'{"agent": "echo", "input": {"blob": "' + b"x" * (LIMIT + 10) + b'"}}'


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    response = http.post("/v1/runs", content=_big_body())
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "AGENTQ_MAX_BODY_BYTES" in response.json()["detail"]


def test_chunked_body_over_the_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        body = _big_body()
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    # A generator body has no length, so httpx sends Transfer-Encoding: chunked.
    response = http.post("/v1/runs", content=chunks())
    assert response.status_code == 413


def test_body_under_the_limit_is_accepted(http: httpx.Client) -> None:
    response = http.post("/v1/runs", json={"agent": "echo", "input": {"blob": "x" * 1000}})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
