"""The dashboard's forms refuse what the JSON API refuses (the same models), and sign-in
sends a user only to a page of this site. In-process: no browser is needed to post a form."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import Tenant
from worker.access import keys
from worker.base.runtime import Runtime

pytestmark = pytest.mark.usefixtures("worker")


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def signed_in(app: Flask, tenant: Tenant, next_: str = "") -> tuple[FlaskClient, str]:
    """A browser signed in with the tenant's key, and where sign-in sent it."""
    browser = app.test_client()
    page = browser.get("/sign-in").get_data(as_text=True)
    query = {"next": next_} if next_ else {}
    answer = browser.post("/sign-in", query_string=query,
                          data={"csrf": csrf_of(page), "key": tenant.key})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return browser, answer.headers["Location"]


@pytest.mark.parametrize("target", [
    "/\t/evil.example", "/\n/evil.example", "/\r/evil.example", "//evil.example",
    "/\\evil.example", "/\\/evil.example", "https://evil.example/", "/ /evil.example",
    "/\x1f/evil.example", "/\u00a0/evil.example", "javascript:alert(1)",
])
def test_sign_in_never_redirects_off_the_site(app: Flask, tenant: Tenant, target: str) -> None:
    _, location = signed_in(app, tenant, next_=target)
    assert location == "/runs"


def test_sign_in_goes_back_to_the_page_asked_for(app: Flask, tenant: Tenant) -> None:
    _, location = signed_in(app, tenant, next_="/dead-letters?x=1")
    assert location == "/dead-letters?x=1"


def post_form(browser: FlaskClient, path: str, **fields: str) -> tuple[int, str]:
    token = csrf_of(browser.get("/runs").get_data(as_text=True))
    answer = browser.post(path, data={"csrf": token, **fields}, follow_redirects=True)
    return answer.status_code, answer.get_data(as_text=True)


def runs_of(runtime: Runtime, tenant: Tenant) -> list[str]:
    from worker.runs import store

    with runtime.db.autocommit() as session:
        found, _ = store.page(session, tenant_id=tenant.id, where=store.RunFilter(), limit=100,
                             before=None)
    return [run.priority for run in found]


@pytest.mark.parametrize(("fields", "says"), [
    ({"agent": "echo", "input": "{}", "priority": "urgent"}, "priority"),
    ({"agent": "echo", "input": "1" + "0" * 5000}, "cannot be read"),
    ({"agent": "echo", "input": '{"x": NaN}'}, "cannot be stored"),
    ({"agent": "echo", "input": "[" * 50_000 + "]" * 50_000}, "cannot be read"),
    ({"agent": "nope", "input": "{}"}, "unknown agent"),
])
def test_the_run_form_refuses_what_the_api_refuses(app: Flask, tenant: Tenant,
                                                   runtime: Runtime, fields: dict[str, str],
                                                   says: str) -> None:
    browser, _ = signed_in(app, tenant)
    code, page = post_form(browser, "/runs", **fields)
    assert code == 422 and says in page
    assert runs_of(runtime, tenant) == []  # nothing was started


def test_the_run_form_still_starts_runs(app: Flask, tenant: Tenant, runtime: Runtime) -> None:
    browser, _ = signed_in(app, tenant)
    code, _ = post_form(browser, "/runs", agent="echo", input='{"a": 1}', priority="high")
    assert code == 200 and runs_of(runtime, tenant) == ["high"]


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "ftp://example.com/x", "http://2852039166/latest/meta-data",
    "http://0xa9.0xfe.0xa9.0xfe/", "http://10.1/", "not a url",
])
def test_the_endpoint_form_refuses_what_the_api_refuses(app: Flask, runtime: Runtime,
                                                        url: str) -> None:
    tenant = make_admin(runtime)
    browser, _ = signed_in(app, tenant)
    code, page = post_form(browser, "/webhooks/endpoints", url=url)
    assert code == 200 and "Endpoint" in page
    from worker.delivery import webhooks

    with runtime.db.autocommit() as session:
        assert webhooks.endpoints(session, tenant_id=tenant.id) == []


def test_the_hook_source_and_key_forms_use_the_api_models(app: Flask, runtime: Runtime) -> None:
    tenant = make_admin(runtime)
    browser, _ = signed_in(app, tenant)
    _, page = post_form(browser, "/hook-sources", provider="gitlab", agent="echo",
                        secret="s" * 20)
    assert "provider" in page
    _, page = post_form(browser, "/keys", name="x" * 300)
    assert "name" in page
    from worker.inbound import hooks

    with runtime.db.autocommit() as session:
        assert hooks.sources(session, tenant_id=tenant.id) == []
        assert len(keys.keys_of(session, tenant_id=tenant.id)) == 1


def make_admin(runtime: Runtime) -> Tenant:
    from tests.conftest import make_tenant

    return make_tenant(runtime)  # keys made by an operator have every scope
