"""The dashboard's forms refuse what the JSON API refuses (the same models), and sign-in
sends a user only to a page of this site. In-process: no browser is needed to post a form."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import ApiClient, Tenant
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


# Schedules ------------------------------------------------------------------------------------

def schedules_of(api: ApiClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = api.get("/v1/schedules").get_json()["items"]
    return items


def test_a_schedule_is_created_paused_resumed_fired_and_deleted_from_the_dashboard(
        app: Flask, api: ApiClient) -> None:
    browser, _ = signed_in(app, api.tenant)
    # Given a schedule made with the form (paused, so that only "Run now" fires it)
    code, page = post_form(browser, "/schedules", agent="echo", input='{"n": 1}',
                           cron="0 9 * * 1-5", timezone="Europe/Paris", overlap="allow",
                           priority="low", paused="true")
    [made] = schedules_of(api)
    assert code == 200 and f"Schedule {made['id']} created." in page
    assert {k: made[k] for k in ("agent", "input", "cron", "every_s", "timezone", "overlap",
                                 "priority", "paused")} == {
        "agent": "echo", "input": {"n": 1}, "cron": "0 9 * * 1-5", "every_s": None,
        "timezone": "Europe/Paris", "overlap": "allow", "priority": "low", "paused": True}
    row = row_of(page, made["id"])
    for shown in ("<code>0 9 * * 1-5</code>", "Europe/Paris", "allow", "status paused",
                  "none yet"):
        assert shown in row, shown
    # When it is resumed, it shows when it fires next; paused again, it does not
    _, page = post_form(browser, f"/schedules/{made['id']}/resume")
    resumed = api.get(f"/v1/schedules/{made['id']}").get_json()
    assert f"Schedule {made['id']} resumed" in page and not resumed["paused"]
    assert f'<time datetime="{resumed["next_fire_at"]}">' in row_of(page, made["id"])
    _, page = post_form(browser, f"/schedules/{made['id']}/pause")
    assert f"Schedule {made['id']} paused." in page
    assert api.get(f"/v1/schedules/{made['id']}").get_json()["paused"] is True
    # "Run now" starts a run of it, linked from the notice and from the row
    _, page = post_form(browser, f"/schedules/{made['id']}/trigger")
    found = re.search(r'fired: run <a href="/runs/(run_\w+)">', page)
    assert found, page
    run_id = found.group(1)
    assert f'href="/runs/{run_id}"' in row_of(page, made["id"])
    run = api.wait(run_id)
    assert run["status"] == "succeeded" and run["schedule_id"] == made["id"]
    assert browser.get(f"/runs/{run_id}").status_code == 200
    # Deleted, it is gone (its run is kept)
    _, page = post_form(browser, f"/schedules/{made['id']}/delete")
    assert f"Schedule {made['id']} deleted" in page and "No schedules yet." in page
    assert api.get(f"/v1/schedules/{made['id']}").status_code == 404
    assert api.run(run_id)["status"] == "succeeded"


def row_of(page: str, schedule_id: str) -> str:
    found = re.search(rf"<tr>\s*<td><code>{schedule_id}</code>.*?</tr>", page, re.S)
    assert found, f"no row for {schedule_id}"
    return found.group(0)


EVERY_HOUR = {"agent": "echo", "every_s": "3600"}


@pytest.mark.parametrize(("fields", "says"), [
    ({"agent": "echo", "cron": "0 9 * * *", "every_s": "60"}, "give cron or every_s"),
    ({"agent": "echo"}, "give cron or every_s"),
    ({"agent": "echo", "cron": "every morning"}, "is not a cron expression"),
    ({**EVERY_HOUR, "timezone": "Mars/Olympus"}, "is not an IANA time zone"),
    ({"agent": "echo", "every_s": "0.5"}, "every_s: Input should be greater than or equal to 1"),
    ({"agent": "echo", "every_s": "soon"}, "every_s: Input should be a valid number"),
    ({**EVERY_HOUR, "overlap": "sometimes"}, "overlap: Input should be"),
    ({**EVERY_HOUR, "catchup_s": "0"}, "catchup_s: Input should be greater than or equal"),
    ({**EVERY_HOUR, "priority": "urgent"}, "priority: Input should be"),
    ({**EVERY_HOUR, "agent": "nope"}, "unknown agent"),
    ({**EVERY_HOUR, "input": '{"n": '}, "input: is not JSON: Expecting value (line 1, column"),
    ({**EVERY_HOUR, "input": '{"x": NaN}'}, "cannot be stored"),
    ({**EVERY_HOUR, "input": "1" + "0" * 5000}, "input: cannot be read"),
])
def test_the_schedule_form_refuses_what_the_api_refuses(app: Flask, api: ApiClient,
                                                        fields: dict[str, str],
                                                        says: str) -> None:
    browser, _ = signed_in(app, api.tenant)
    code, page = post_form(browser, "/schedules", **fields)
    assert code == 422 and says in page, page
    assert "<details class=\"card\" open>" in page  # the form is shown again, as it was sent
    for name in ("input", "cron", "every_s", "timezone", "catchup_s"):  # the typed ones
        value = fields.get(name, "")
        if len(value) < 100:
            assert value.strip().replace('"', "&#34;") in page, name
    assert schedules_of(api) == []  # nothing was made


def test_another_tenants_schedule_is_not_found_and_a_reader_cannot_act(
        app: Flask, api: ApiClient, runtime: Runtime) -> None:
    made = api.post("/v1/schedules", json={"agent": "echo", "every_s": 3600,
                                           "paused": True}).get_json()
    other, _ = signed_in(app, make_admin(runtime))
    assert made["id"] not in other.get("/schedules").get_data(as_text=True)
    for action in ("pause", "resume", "trigger", "delete"):
        code, page = post_form(other, f"/schedules/{made['id']}/{action}")
        assert code == 404 and "not found" in page, action
    # A key of its own tenant that may only read sees it, with no way to act
    with runtime.db.transaction() as session:
        reader_key = keys.issue_key(session, tenant_id=api.tenant.id, name="reader",
                                    scopes=[keys.READ])[0]
    reader, _ = signed_in(app, Tenant(id=api.tenant.id, name=api.tenant.name, key=reader_key))
    page = reader.get("/schedules").get_data(as_text=True)
    assert made["id"] in page and "Create a schedule" not in page and "Run now" not in page
    for action in ("pause", "resume", "trigger", "delete"):
        assert post_form(reader, f"/schedules/{made['id']}/{action}")[0] == 403, action
    assert post_form(reader, "/schedules", **EVERY_HOUR)[0] == 403
    assert schedules_of(api) == [made]  # untouched, never fired
    assert api.get("/v1/runs").get_json()["items"] == []
