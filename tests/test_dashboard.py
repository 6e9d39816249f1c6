"""The dashboard, end to end in a real browser: Debian's chromium driven by Playwright,
against the API under gunicorn and a real worker.

Screenshots of each main page land in ``tests/output/dashboard/`` for review; with
``AGENTQ_UPDATE_SCREENSHOTS=1`` the run page's also replaces ``docs/dashboard-run.png``.
Without a browser these tests skip, unless ``CI`` is set: there they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from tests.conftest import ApiClient, StartWorker, Tenant, make_tenant
from tests.harness import ROOT, ApiServer, FakeLLM, Receiver, wait_for
from worker.access import keys
from worker.app import build_runtime
from worker.base.errors import ConfigurationError
from worker.base.runtime import Runtime
from worker.base.settings import Settings

pytestmark = pytest.mark.usefixtures("worker")

APPROVAL = {"type": "object", "properties": {"approved": {"type": "boolean"},
                                             "comment": {"type": ["string", "null"]}},
            "required": ["approved"], "additionalProperties": False}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = ROOT / "tests" / "output" / "dashboard"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI is set but there is no chromium: apt-get install chromium")
        pytest.skip("no chromium on this machine (make test installs Debian's when it can)")
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


class Dashboard:
    """One signed-in browser page, with every console error it saw."""

    def __init__(self, browser: Any, server: ApiServer, tenant: Tenant, **context: Any) -> None:
        self.server = server
        self.tenant = tenant
        self.context = browser.new_context(base_url=server.url, **context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.extend([m.text] if m.type == "error" else []))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self) -> None:
        self.page.goto("/")
        assert "/sign-in" in self.page.url
        self.page.get_by_label("API key").fill(self.tenant.key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url("**/runs")

    def shot(self, name: str) -> Path:
        if self.page.locator("#status-strip").count():  # its figures arrive just after
            from playwright.sync_api import expect

            workers = self.page.locator("#status-strip [data-key=workers]")
            expect(workers).not_to_have_text("\u2013")  # an en dash until they do
        path = OUTPUT / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.tenant.key}"})

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def dashboard(browser: Any, api_server: ApiServer, tenant: Tenant) -> Iterator[Dashboard]:
    board = Dashboard(browser, api_server, tenant)
    board.sign_in()
    yield board
    board.close()
    assert board.errors == [], f"console errors: {board.errors}"


def run_status(board: Dashboard, run_id: str) -> str:
    with board.api() as client:
        status: str = client.get(f"/v1/runs/{run_id}").json()["status"]
    return status


def test_a_wrong_key_is_refused_at_sign_in(browser: Any, api_server: ApiServer,
                                          tenant: Tenant) -> None:
    board = Dashboard(browser, api_server, tenant)
    board.page.goto("/runs")
    board.page.get_by_label("API key").fill("aq_not-a-key")
    board.page.get_by_role("button", name="Sign in").click()
    board.page.get_by_role("alert").get_by_text("That key is not valid").wait_for()
    board.shot("sign-in")
    board.errors = [e for e in board.errors if "401" not in e]  # the browser notes the 401
    board.close()
    assert board.errors == []


def test_sign_in_start_a_run_and_watch_its_events_arrive_live(dashboard: Dashboard) -> None:
    page = dashboard.page
    dashboard.shot("runs")
    page.get_by_text("Start a run").click()
    page.get_by_label("Agent", exact=True).select_option("demo.research")
    page.get_by_label("Input (JSON)").fill(
        '{"question": "Why is the sky blue and why are sunsets red?", "phase_s": 0.6}')
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r".*/runs/run_\w+$"))
    run_id = page.url.rsplit("/", 1)[1]
    # Events arrive while the run is still going (not on a reload)
    page.wait_for_selector("#events li .phase:text('parsing')")
    assert run_status(dashboard, run_id) in {"running", "queued"}
    page.wait_for_selector("#run-status:text('succeeded')", timeout=30_000)
    page.wait_for_selector("#stream-state:text('finished')")
    seqs = [int(s) for s in page.locator("#events li").evaluate_all(
        "items => items.map(i => i.dataset.seq)")]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 8  # no gap, no repeat
    assert page.locator("text=Rayleigh scattering").count() >= 1  # the result, in the panel
    assert page.locator("table code", has_text="evaluate:1").count() == 1  # its steps
    path = dashboard.shot("run")
    if os.environ.get("AGENTQ_UPDATE_SCREENSHOTS"):
        shutil.copy(path, ROOT / "docs" / "dashboard-run.png")


def test_the_runs_list_updates_live_and_filters(dashboard: Dashboard) -> None:
    page = dashboard.page
    with dashboard.api() as client:
        run = client.post("/v1/runs", json={"agent": "echo", "input": {"n": 1}}).json()
    page.locator("#run-rows a", has_text=run["id"]).wait_for()  # no reload needed
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_selector("#run-rows :text('No runs match.')")


def test_input_that_is_not_json_is_refused_with_where_it_went_wrong(
        dashboard: Dashboard) -> None:
    page = dashboard.page
    page.get_by_text("Start a run").click()
    page.get_by_label("Input (JSON)").fill('{"question": "unfinished"')
    page.get_by_role("button", name="Start").click()
    page.get_by_role("alert").get_by_text("The input is not JSON").wait_for()
    assert page.get_by_label("Input (JSON)").input_value() == '{"question": "unfinished"'
    assert dashboard.api().get("/v1/runs").json()["items"] == []
    dashboard.errors = [e for e in dashboard.errors if "422" not in e]


def test_cancel_a_running_run(dashboard: Dashboard) -> None:
    with dashboard.api() as client:
        run = client.post("/v1/runs", json={"agent": "sleep", "input": {"seconds": 30}}).json()
    wait_for(lambda: run_status(dashboard, run["id"]) == "running", what="the run to start")
    page = dashboard.page
    page.goto(f"/runs/{run['id']}")
    page.wait_for_selector("#stream-state:text('live')")
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector("#run-status:text('cancelled')", timeout=30_000)
    assert run_status(dashboard, run["id"]) == "cancelled"


def test_replay_a_dead_lettered_run(dashboard: Dashboard) -> None:
    with dashboard.api() as client:
        run = client.post("/v1/runs?wait=10", json={
            "agent": "flaky", "input": {"failures": 1}, "max_attempts": 1}).json()
    assert run["status"] == "dead_lettered"
    page = dashboard.page
    page.get_by_role("link", name="Dead letters").click()
    page.locator("td a", has_text=run["id"]).wait_for()
    dashboard.shot("dead-letters")
    page.get_by_role("button", name=f"Replay {run['id']}").click()
    page.wait_for_selector(".flash.ok:text('Run queued again.')")
    wait_for(lambda: run_status(dashboard, run["id"]) == "succeeded", timeout=30,
             what="the replayed run to succeed")
    # And "replay all" takes every dead letter at once
    with dashboard.api() as client:
        dead = [client.post("/v1/runs?wait=10", json={
            "agent": "flaky", "input": {"failures": 1}, "max_attempts": 1}).json()["id"]
            for _ in range(2)]
    page.reload()
    page.get_by_role("button", name="Replay all 2").click()
    page.wait_for_selector(".flash.ok:text('2 dead-lettered run(s) queued again.')")
    wait_for(lambda: all(run_status(dashboard, d) == "succeeded" for d in dead), timeout=30,
             what="every replayed run to succeed")


def test_a_schedule_is_made_fired_paused_and_deleted_from_its_page(
        dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    # Given a schedule made with the form, every hour from now
    page = dashboard.page
    page.get_by_role("link", name="Schedules").click()
    page.get_by_text("Create a schedule").click()
    page.get_by_label("Agent", exact=True).select_option("echo")
    page.get_by_label("Input (JSON)").fill('{"from": "a schedule"}')
    page.get_by_label("Or every (seconds)").fill("3600")
    page.get_by_label("Overlap").select_option("allow")
    page.get_by_role("button", name="Create schedule").click()
    page.wait_for_selector(".flash.ok:text('created.')")
    [made] = dashboard.api().get("/v1/schedules").json()["items"]
    row = page.locator("tr", has_text=made["id"])
    expect(row).to_contain_text("every 3600 s")
    expect(row.locator(f"time[datetime='{made['next_fire_at']}']")).to_have_count(1)
    # When "Run now" is pressed, the notice links to the run it started
    page.get_by_role("button", name=f"Run {made['id']} now").click()
    page.locator(".flash.ok a").click()
    page.wait_for_url(re.compile(r".*/runs/run_\w+$"))
    run_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#run-status:text('succeeded')", timeout=30_000)
    with dashboard.api() as client:
        run = client.get(f"/v1/runs/{run_id}").json()
    assert run["schedule_id"] == made["id"] and run["input"] == {"from": "a schedule"}
    # Then its row shows that run as its last; paused, it shows no next fire
    page.go_back()
    page.reload()
    expect(row.get_by_role("link", name=run_id)).to_have_count(1)
    page.get_by_text("Create a schedule").click()
    dashboard.shot("schedules")
    page.get_by_role("button", name=f"Pause {made['id']}").click()
    page.wait_for_selector(".flash.ok:text('paused.')")
    expect(row.locator(".status.paused")).to_have_text("paused")
    expect(row.locator("time")).to_have_count(0)
    assert dashboard.api().get(f"/v1/schedules/{made['id']}").json()["paused"] is True
    page.get_by_role("button", name=f"Resume {made['id']}").click()
    page.wait_for_selector(".flash.ok:text('resumed')")
    assert dashboard.api().get(f"/v1/schedules/{made['id']}").json()["paused"] is False
    page.get_by_role("button", name=f"Delete {made['id']}").click()
    page.wait_for_selector(".flash.ok:text('deleted')")
    expect(page.get_by_text("No schedules yet.")).to_be_visible()
    assert dashboard.api().get("/v1/schedules").json()["items"] == []


def test_webhook_endpoints_show_their_secret_once(dashboard: Dashboard) -> None:
    page = dashboard.page
    page.get_by_role("link", name="Webhooks").click()
    page.get_by_label("URL").fill("https://example.com/agentq-hook")
    page.get_by_role("button", name="Add endpoint").click()
    secret = page.locator("#new-secret").inner_text()
    assert secret.startswith("whsec_")
    dashboard.shot("webhooks")
    page.goto("/webhooks")
    assert page.locator("#new-secret").count() == 0 and secret not in page.content()
    assert page.locator("td", has_text="https://example.com/agentq-hook").count() == 1


def test_a_failed_delivery_shows_its_attempts_and_can_be_retried(
        dashboard: Dashboard, receiver: Receiver) -> None:
    from playwright.sync_api import expect

    # Given an endpoint that fails every attempt the schedule allows
    receiver.script("/down", [500] * 4)
    with dashboard.api() as client:
        assert client.post("/v1/webhook-endpoints",
                           json={"url": receiver.url + "/down"}).status_code == 201
        run = client.post("/v1/runs?wait=10", json={"agent": "echo"}).json()

        def dead() -> Any:
            items = client.get("/v1/deliveries", params={"run_id": run["id"]}).json()["items"]
            return items and items[0]["status"] == "dead" and items[0]
        delivery = wait_for(dead, timeout=30, what="the delivery to use up its attempts")
    # When its page is opened and "Retry now" pressed
    page = dashboard.page
    page.goto("/webhooks")
    page.get_by_role("link", name=delivery["id"]).click()
    expect(page.locator("tbody tr")).to_have_count(4)  # every attempt, with its answer
    assert page.locator("td", has_text="500").count() == 4
    dashboard.shot("delivery")
    page.get_by_role("button", name="Retry now").click()
    page.wait_for_selector(".flash.ok:text('Delivery queued to be sent again.')")

    # Then it is delivered, as its page shows
    def delivered() -> bool:
        page.reload()
        return bool(page.locator(".facts .status.delivered").count() == 1)
    wait_for(delivered, timeout=30, what="the retried delivery to arrive")
    assert page.locator("tbody tr").count() == 5


def test_hook_sources_are_added_rotated_and_deleted(dashboard: Dashboard) -> None:
    page = dashboard.page
    page.goto("/webhooks")
    page.get_by_label("Provider").select_option("github")
    page.get_by_label("Their signing secret").fill("gh-secret-" + "x" * 24)
    page.get_by_label("Agent", exact=True).select_option("echo")
    page.get_by_role("button", name="Add hook source").click()
    page.wait_for_selector(".flash.ok:text('Hook source')")
    [source] = dashboard.api().get("/v1/hook-sources").json()["items"]
    page.get_by_label("New signing secret from github").fill("gh-rotated-" + "y" * 24)
    page.get_by_role("button", name="Rotate secret").click()
    page.wait_for_selector(".flash.ok:text('Hook source secret rotated')")
    assert dashboard.api().get(f"/v1/hook-sources/{source['id']}").json()[
        "previous_secret_expires_at"]
    page.locator("tr", has_text="github").get_by_role("button", name="Delete").click()
    page.wait_for_selector(".flash.ok:text('Hook source deleted.')")
    assert dashboard.api().get("/v1/hook-sources").json()["items"] == []


def test_api_keys_are_created_shown_once_and_revoked(dashboard: Dashboard) -> None:
    page = dashboard.page
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("reader")
    page.get_by_label("runs:write").uncheck()
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text()
    dashboard.shot("keys")
    reader = httpx.Client(base_url=dashboard.server.url,
                          headers={"Authorization": f"Bearer {key}"})
    assert reader.get("/v1/runs").status_code == 200
    assert reader.post("/v1/runs", json={"agent": "echo"}).status_code == 403
    page.goto("/keys")
    assert key not in page.content()  # shown once
    page.get_by_role("button", name=f"Revoke {key[:12]}").click()
    page.wait_for_selector(".flash.ok:text('Key revoked')")
    assert reader.get("/v1/runs").status_code == 401
    # Revoking the key this session signed in with ends the session
    page.locator("tr", has_text="(this session)").get_by_role("button").click()
    page.wait_for_url("**/sign-in")


def test_a_read_only_key_can_look_but_not_act(browser: Any, api_server: ApiServer,
                                              runtime: Runtime) -> None:
    # Given a runs:read key, and a running run of its tenant's (started with another key)
    tenant = make_tenant(runtime, scopes=["runs:read"])
    with runtime.db.transaction() as session:
        writer = keys.issue_key(session, tenant_id=tenant.id, name="writer",
                                scopes=keys.SCOPES)[0]
    api = httpx.Client(base_url=api_server.url, timeout=30,
                       headers={"Authorization": f"Bearer {writer}"})
    run = api.post("/v1/runs", json={"agent": "sleep", "input": {"seconds": 30}}).json()["id"]
    wait_for(lambda: api.get(f"/v1/runs/{run}").json()["status"] == "running",
             what="the run to start")
    board = Dashboard(browser, api_server, tenant)
    board.sign_in()
    # Then the pages show no way to act
    page = board.page
    assert page.get_by_text("Start a run").count() == 0
    assert page.get_by_role("link", name="Webhooks").count() == 0
    assert page.get_by_role("link", name="API keys").count() == 0
    page.goto(f"/runs/{run}")
    page.wait_for_selector("#stream-state:text('live')")
    assert page.get_by_role("button", name="Cancel").count() == 0
    # And the actions themselves are refused, not only hidden
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    cookies = {c["name"]: c["value"] for c in board.context.cookies()}
    with httpx.Client(base_url=api_server.url, cookies=cookies) as client:
        for path in (f"/runs/{run}/cancel", "/runs", "/dead-letters/replay-all",
                     "/webhooks/endpoints", "/keys"):
            assert client.post(path, data={"csrf": csrf, "agent": "echo"}).status_code == 403
        assert client.get("/webhooks").status_code == 403
        assert client.get("/keys").status_code == 403
    assert api.get(f"/v1/runs/{run}").json()["status"] == "running"
    api.post(f"/v1/runs/{run}/cancel")  # free the worker's slot
    board.close()
    assert board.errors == []


def test_a_post_without_the_csrf_token_is_refused(dashboard: Dashboard) -> None:
    cookies = {c["name"]: c["value"] for c in dashboard.context.cookies()}
    assert "agentq_session" in cookies
    [cookie] = [c for c in dashboard.context.cookies() if c["name"] == "agentq_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    with httpx.Client(base_url=dashboard.server.url, cookies=cookies) as client:
        for token in (None, "forged"):
            form = {"agent": "echo", "input": "{}", **({"csrf": token} if token else {})}
            refused = client.post("/runs", data=form)
            assert refused.status_code == 403 and "CSRF" in refused.text
        runs = dashboard.api().get("/v1/runs").json()["items"]
        assert runs == []  # nothing was started


def test_another_tenants_run_is_not_found(dashboard: Dashboard, runtime: Runtime,
                                          api_server: ApiServer) -> None:
    other = make_tenant(runtime)
    with httpx.Client(base_url=api_server.url,
                      headers={"Authorization": f"Bearer {other.key}"}) as client:
        theirs = client.post("/v1/runs?wait=10", json={"agent": "echo"}).json()
    page = dashboard.page
    response = page.goto(f"/runs/{theirs['id']}")
    assert response is not None and response.status == 404
    assert page.get_by_role("heading", name="Not found").is_visible()
    assert all("404" in error for error in dashboard.errors)  # the browser notes the 404
    dashboard.errors.clear()
    cookies = {c["name"]: c["value"] for c in dashboard.context.cookies()}
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    with httpx.Client(base_url=api_server.url, cookies=cookies) as client:
        assert client.get(f"/runs/{theirs['id']}/events").status_code == 404
        assert client.get(f"/runs/{theirs['id']}/events?tokens=1",
                          headers={"Accept": "text/event-stream"}).status_code == 404
        assert client.get(f"/runs/{theirs['id']}/panel").status_code == 404
        assert client.post(f"/runs/{theirs['id']}/cancel", data={"csrf": csrf}).status_code \
            == 404
    with dashboard.api() as client:  # and it is untouched
        assert client.get(f"/v1/runs/{theirs['id']}").status_code == 404
    assert page.locator("#run-rows").count() == 0


def test_a_streamed_calls_text_grows_on_the_run_page_before_the_run_ends(
        dashboard: Dashboard, fake_llm: FakeLLM) -> None:
    from playwright.sync_api import expect

    # Given a streamed llm.chat run whose answer is held after 4 chunks ("echo: " and 3
    # words); one word is markup, which the page must show as text
    tag = uuid.uuid4().hex[:8]
    ask = f"{tag} <b>bold</b> " + " ".join(f"w{n}" for n in range(2, 10))
    fake_llm.pause(ask, after=4)
    with dashboard.api() as client:
        run = client.post("/v1/runs", json={"agent": "llm.chat", "input": {
            "messages": [{"role": "user", "content": ask}], "stream": True}}).json()
    page = dashboard.page
    page.goto(f"/runs/{run['id']}")
    # Then the page shows the text so far, in a block for its step, while the run goes on
    block = page.locator("#token-steps .token-step[data-step='chat']")
    text = block.locator("pre.token-text")
    expect(text).to_have_text(f"echo: {tag} <b>bold</b> w2")
    expect(block).to_have_attribute("data-state", "writing")
    assert page.locator("#live-text").is_visible()
    assert text.locator("b").count() == 0  # the model's text is never markup
    assert run_status(dashboard, run["id"]) == "running"
    dashboard.shot("run-streaming")
    # A reload mid-call gets the text so far at once (one frame), not from nothing
    page.reload()
    expect(text).to_have_text(f"echo: {tag} <b>bold</b> w2")
    assert run_status(dashboard, run["id"]) == "running"
    # When the rest is written, it grows to the whole answer, and stays once the step ends
    fake_llm.resume(ask)
    expect(block).to_have_attribute("data-state", "finished", timeout=30_000)
    page.wait_for_selector("#run-status:text('succeeded')", timeout=30_000)
    page.wait_for_selector("#stream-state:text('finished')")
    assert text.evaluate("pre => pre.textContent") == f"echo: {ask}"
    assert page.locator("#token-steps .token-step").count() == 1
    # A finished run's page has no text to grow: its answer is in the result
    page.reload()
    page.wait_for_selector("#stream-state:text('finished')")
    assert page.locator("#live-text").is_hidden()


def test_events_resume_after_the_last_event_id(dashboard: Dashboard) -> None:
    with dashboard.api() as client:
        run = client.post("/v1/runs?wait=10", json={"agent": "echo"}).json()
    cookies = {c["name"]: c["value"] for c in dashboard.context.cookies()}
    with httpx.Client(base_url=dashboard.server.url, cookies=cookies, timeout=10) as client:
        body = client.get(f"/runs/{run['id']}/events", headers={"Last-Event-ID": "1"}).text
    ids = [int(n) for n in re.findall(r"^id: (\d+)$", body, re.M)]
    assert ids and ids[0] == 2 and ids == sorted(set(ids))


def test_signing_out_and_revoking_the_key_both_end_the_session(
        browser: Any, api_server: ApiServer, runtime: Runtime) -> None:
    tenant = make_tenant(runtime)
    board = Dashboard(browser, api_server, tenant)
    board.sign_in()
    board.page.get_by_role("button", name="Sign out").click()
    board.page.wait_for_url("**/sign-in")
    board.page.goto("/runs")
    assert "/sign-in" in board.page.url
    board.sign_in()
    with board.api() as client:
        [key] = client.get("/v1/api-keys").json()["items"]
        assert client.delete(f"/v1/api-keys/{key['id']}").status_code == 204
    board.page.goto("/runs")
    assert "/sign-in" in board.page.url
    board.close()
    assert board.errors == []


def test_usable_on_a_phone(browser: Any, api_server: ApiServer, tenant: Tenant) -> None:
    board = Dashboard(browser, api_server, tenant, viewport=PHONE, is_mobile=True,
                      has_touch=True)
    board.sign_in()
    with board.api() as client:
        run = client.post("/v1/runs?wait=10", json={"agent": "echo", "input": {"a": 1}}).json()
    for path in ("/runs", f"/runs/{run['id']}", "/dead-letters", "/schedules", "/webhooks",
                 "/keys"):
        board.page.goto(path)
        overflow = board.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"{path} scrolls sideways on a phone by {overflow}px"
    board.page.goto(f"/runs/{run['id']}")
    board.page.wait_for_selector("#stream-state:text('finished')")
    board.shot("run-phone")
    # Keyboard: the skip link is the first stop, then the navigation
    board.page.keyboard.press("Tab")
    assert board.page.evaluate("document.activeElement.textContent") == "Skip to content"
    board.close()
    assert board.errors == []


def test_the_api_refuses_to_start_without_a_secret_unless_the_dashboard_is_off(
        settings: Settings) -> None:
    with pytest.raises(ConfigurationError, match="AGENTQ_SECRET_KEY is required"):
        create_app(runtime=build_runtime(settings.model_copy(update={"secret_key": None})))
    headless = create_app(runtime=build_runtime(settings.model_copy(
        update={"secret_key": None, "dashboard": False}))).test_client()
    assert headless.get("/").status_code == 404
    assert headless.get("/openapi.json").status_code == 200


# Waitpoints: a waiting run is answered from its page ----------------------------------------

def test_a_waiting_run_is_answered_with_the_form_its_schema_makes(dashboard: Dashboard) -> None:
    # Given a run waiting for an approval
    with dashboard.api() as client:
        run = client.post("/v1/runs", json={"agent": "test.wait", "input": {
            "schema": APPROVAL, "prompt": "Refund 40 EUR to order 1234?"}}).json()
    wait_for(lambda: run_status(dashboard, run["id"]) == "waiting", what="the run to wait")
    # Its page shows the prompt, the deadline and a form made from the schema
    from playwright.sync_api import expect

    page = dashboard.page
    page.goto(f"/runs/{run['id']}")
    waiting = page.locator("section.waitpoint")
    expect(waiting.get_by_role("heading")).to_have_text("Waiting for answer")
    expect(waiting.locator(".prompt")).to_have_text("Refund 40 EUR to order 1234?")
    assert waiting.locator("time[datetime]").count() == 1
    assert waiting.locator("input[type=checkbox][name='field:approved']").count() == 1
    assert waiting.locator("input[type=text][name='field:comment']").count() == 1
    expect(page.locator("#status-strip [data-key=waiting]")).to_have_text("1")
    page.wait_for_selector("#stream-state:text('live')")
    # When it is filled in and sent
    waiting.get_by_label("approved").check()
    waiting.get_by_label("comment").fill("fine by me")
    dashboard.shot("waitpoint")
    waiting.get_by_role("button", name="Send answer").click()
    page.wait_for_selector(".flash.ok:text(\"Waitpoint 'answer' completed\")")
    # Then the run goes on with the data, and the page lists the waitpoint as completed
    page.wait_for_selector("#run-status:text('succeeded')", timeout=30_000)
    with dashboard.api() as client:
        done = client.get(f"/v1/runs/{run['id']}").json()
        [point] = client.get(f"/v1/runs/{run['id']}/waitpoints").json()["items"]
    assert done["result"]["data"] == {"approved": True, "comment": "fine by me"}
    assert point["completed_by"].startswith("dashboard:")
    row = page.locator("table.waitpoints tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".status")).to_have_text("completed")
    expect(row).to_contain_text('"comment": "fine by me"')
    expect(row).to_contain_text(point["completed_by"])
    assert page.locator("section.waitpoint").count() == 0
    expect(page.locator("#status-strip [data-key=waiting]")).to_have_text("0", timeout=15_000)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def signed_in(app: Flask, tenant: Tenant) -> FlaskClient:
    """A browser without JavaScript (Flask's test client), signed in with the tenant's key."""
    browser = app.test_client()
    page = browser.get("/sign-in").get_data(as_text=True)
    answer = browser.post("/sign-in", data={"csrf": csrf_of(page), "key": tenant.key})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return browser


ORDER = {"type": "object", "properties": {
    "amount": {"type": "integer", "minimum": 1, "description": "In euros"},
    "reason": {"type": "string", "minLength": 3},
    "tier": {"enum": ["gold", "silver"]},
    "discount": {"type": ["number", "null"]},
    "rush": {"type": "boolean"},
    "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["amount", "reason", "tier"], "additionalProperties": False}


def test_a_waitpoint_answer_that_does_not_match_its_schema_is_shown_with_why(
        app: Flask, api: ApiClient, tenant: Tenant) -> None:
    run = api.submit("test.wait", {"schema": ORDER, "prompt": "Place the order?"})
    api.wait(run["id"], statuses={"waiting"})
    browser = signed_in(app, tenant)
    assert browser.get("/status.json").get_json()["waiting"] == 1
    page = browser.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert "Place the order?" in page
    for made in ('type="number" id="wp-1-1" name="field:amount"', 'min="1"', 'step="1"',
                 'type="text" id="wp-1-2" name="field:reason"',
                 '<select id="wp-1-3" name="field:tier"', '<option value="&#34;gold&#34;"',
                 'name="field:discount" value="" step="any"',
                 'type="checkbox" id="wp-1-5" name="field:rush"',
                 '<textarea id="wp-1-6" name="field:tags"', "In euros"):
        assert made in page, made
    assert 'name="data"' not in page  # no raw JSON for an object schema with properties
    action = f"/runs/{run['id']}/waitpoints/answer"
    csrf = csrf_of(page)

    def send(**fields: str) -> Any:
        return browser.post(action, data={"csrf": csrf, **fields})

    # Data that does not match: 422, the page says why, with what was sent; nothing changes
    wrong = send(**{"field:amount": "0", "field:reason": "no", "field:tier": '"gold"',
                    "field:discount": "", "field:tags": '["a"]'})
    text = wrong.get_data(as_text=True)
    assert wrong.status_code == 422, text
    assert "does not match the waitpoint&#39;s schema: 2 problems" in text
    assert "<code>data.amount</code> 0 is less than the minimum of 1" in text
    assert "<code>data.reason</code> &#39;no&#39; is too short" in text
    assert 'aria-invalid="true" aria-describedby="wp-1-1-hint wp-1-errors"' in text
    assert 'name="field:reason" value="no"' in text  # kept, to be corrected
    # Inputs that cannot be read are refused before the schema is asked
    unreadable = send(**{"field:amount": "lots", "field:reason": "fine", "field:tier": '"gold"',
                         "field:tags": "[oops"})
    text = unreadable.get_data(as_text=True)
    assert unreadable.status_code == 422
    assert "<code>data.amount</code> is not a number" in text
    assert "<code>data.tags</code> is not JSON" in text
    assert browser.post(action, data={"field:amount": "2"}).status_code == 403  # no CSRF
    [point] = api.get(f"/v1/runs/{run['id']}/waitpoints").get_json()["items"]
    assert point["status"] == "waiting" and point["data"] is None
    assert api.run(run["id"])["status"] == "waiting"

    # A matching answer completes it (a redirect back to the run, with a notice)
    sent = send(**{"field:amount": "40", "field:reason": "a refund", "field:tier": '"silver"',
                   "field:discount": "", "field:rush": "true", "field:tags": ""})
    assert sent.status_code == 302 and sent.headers["Location"] == f"/runs/{run['id']}"
    assert "Waitpoint &#39;answer&#39; completed" in browser.get(sent.headers["Location"]) \
        .get_data(as_text=True)
    done = api.wait(run["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["data"] == {"amount": 40, "reason": "a refund", "tier": "silver",
                                      "discount": None, "rush": True}
    # An answer once the run has ended is a conflict, and the first stands
    again = send(**{"field:amount": "41", "field:reason": "again", "field:tier": '"gold"'})
    assert again.status_code == 409
    assert "already ended succeeded" in again.get_data(as_text=True)
    page = browser.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert 'class="status completed"' in page and '"amount": 40' in page
    assert f'action="{action}"' not in page  # no form any more
    assert browser.get("/status.json").get_json()["waiting"] == 0


def test_a_waitpoint_without_a_schema_is_answered_as_json(app: Flask, api: ApiClient,
                                                          tenant: Tenant) -> None:
    # test.async.wait waits at "first", then at "second" (neither has a schema)
    run = api.submit("test.async.wait")
    api.wait(run["id"], statuses={"waiting"})
    browser = signed_in(app, tenant)
    page = browser.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert '<textarea id="wp-1-data" name="data"' in page and "field:" not in page
    first, csrf = f"/runs/{run['id']}/waitpoints/first", csrf_of(page)
    wrong = browser.post(first, data={"csrf": csrf, "data": '{"n": '})
    assert wrong.status_code == 422
    assert "<code>data</code> is not JSON" in wrong.get_data(as_text=True)
    assert '{&#34;n&#34;: </textarea>' in wrong.get_data(as_text=True)  # kept
    sent = browser.post(first, data={"csrf": csrf, "data": '{"n": [1, "two"]}'})
    assert sent.status_code == 302

    def at_second() -> bool:
        points = api.get(f"/v1/runs/{run['id']}/waitpoints").get_json()["items"]
        return api.run(run["id"])["status"] == "waiting" and len(points) == 2
    wait_for(at_second, what="the run to wait at its second waitpoint")
    # The first is listed as completed, the second has its form; the first again: 409
    page = browser.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert 'class="status completed"' in page and '[1, "two"]' in page
    assert f'action="/runs/{run["id"]}/waitpoints/second"' in page
    assert f'action="{first}"' not in page
    again = browser.post(first, data={"csrf": csrf, "data": "{}"})
    assert again.status_code == 409
    assert "waitpoint &#39;first&#39; is already completed" in again.get_data(as_text=True)
    assert browser.post(f"/runs/{run['id']}/waitpoints/second",
                        data={"csrf": csrf, "data": "null"}).status_code == 302
    done = api.wait(run["id"])
    assert done["result"] == {"first": {"n": [1, "two"]}, "second": None, "attempt": 3}


def test_another_tenants_waitpoint_is_not_found_and_a_reader_cannot_answer(
        app: Flask, api: ApiClient, runtime: Runtime) -> None:
    run = api.submit("test.wait", {"schema": APPROVAL})
    api.wait(run["id"], statuses={"waiting"})
    action = f"/runs/{run['id']}/waitpoints/answer"
    other = signed_in(app, make_tenant(runtime))
    csrf = csrf_of(other.get("/runs").get_data(as_text=True))
    assert other.get(f"/runs/{run['id']}").status_code == 404
    assert other.get(f"/runs/{run['id']}/waitpoints").status_code == 404
    refused = other.post(action, data={"csrf": csrf, "field:approved": "true"})
    assert refused.status_code == 404 and "not found" in refused.get_data(as_text=True)
    assert other.post(f"/runs/{run['id']}/waitpoints/nope",
                      data={"csrf": csrf}).status_code == 404
    # A key of the run's own tenant that may only read sees the prompt, not the form
    with runtime.db.transaction() as session:
        reader_key = keys.issue_key(session, tenant_id=api.tenant.id, name="reader",
                                    scopes=[keys.READ])[0]
    reader = signed_in(app, Tenant(id=api.tenant.id, name=api.tenant.name, key=reader_key))
    page = reader.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert "Waiting for" in page and "field:approved" not in page
    assert reader.post(action, data={"csrf": csrf_of(page),
                                     "field:approved": "true"}).status_code == 403
    [point] = api.get(f"/v1/runs/{run['id']}/waitpoints").get_json()["items"]
    assert point["status"] == "waiting" and api.run(run["id"])["status"] == "waiting"
    assert api.post(action.replace("/runs/", "/v1/runs/"),
                    json={"data": {"approved": False}}).status_code == 202  # free it
    assert api.wait(run["id"])["status"] == "succeeded"


# Pictures: a run's timeline, the runs ended per minute --------------------------------------

def test_a_retried_runs_timeline_shows_its_attempts_and_the_steps_each_ran_or_reused(
        dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    # Given a run whose first attempt stored step "a" then failed in "b", and whose second
    # got "a" back and ran "b"
    with dashboard.api() as client:
        run = client.post("/v1/runs?wait=10", json={"agent": "test.durable"}).json()
    assert run["status"] == "succeeded" and run["attempt"] == 2
    # When its page is opened
    page = dashboard.page
    page.goto(f"/runs/{run['id']}")
    page.wait_for_selector("#stream-state:text('finished')")
    page.wait_for_load_state("networkidle")  # the panel, fetched again after the last event
    # Then its timeline has a row per attempt, each followed by its steps, titled with what
    # they were, and the same rows in a table for screen readers
    rows = page.locator("#run-timeline svg.waterfall g.wf-row")
    expect(rows).to_have_count(5)
    titles = rows.locator("title").all_text_contents()
    for title, expected in zip(titles, [
            r"Attempt 1: failed, [\d.]+ m?s; started at 0 s",
            r"Step a \(attempt 1\): [\d.]+ m?s; started at [\d.]+ m?s",
            r"Attempt 2: succeeded, [\d.]+ m?s; started at [\d.]+ m?s",
            r"Step a \(attempt 2\): reused from attempt 1, not run again; started at .+",
            r"Step b \(attempt 2\): [\d.]+ m?s; started at .+"], strict=True):
        assert re.fullmatch(expected, title), title
    assert rows.evaluate_all("rows => rows.map(r => r.querySelector('rect').classList[1])") \
        == ["failed", "step", "succeeded", "reused", "step"]
    widths = rows.locator("rect").evaluate_all(
        "bars => bars.map(b => parseFloat(b.getAttribute('width')))")
    assert all(0 < width <= 100 for width in widths)
    svg = page.locator("#run-timeline svg.waterfall")
    assert svg.get_attribute("role") == "img"
    assert (svg.get_attribute("aria-label") or "").startswith("2 attempts and 3 steps over ")
    assert page.locator("#run-timeline .tick-label").first.text_content() == "0 s"
    assert page.locator("#run-timeline .visually-hidden tbody tr").count() == 5
    page.locator("section[aria-labelledby=timeline-title]").screenshot(
        path=str(OUTPUT / "run-timeline.png"))
    # On a phone it fits the screen, without scrolling sideways
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth"
                         " - document.documentElement.clientWidth") <= 1
    box = svg.bounding_box()
    assert box is not None and 300 < box["width"] < PHONE["width"]
    page.locator("section[aria-labelledby=timeline-title]").screenshot(
        path=str(OUTPUT / "run-timeline-phone.png"))


def test_the_timeline_grows_as_steps_finish_and_a_replay_reuses_them(
        dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    # Given a run of durable steps (parse, query:1, query:2, evaluate:1), open while it runs
    page = dashboard.page
    with dashboard.api() as client:
        run = client.post("/v1/runs", json={"agent": "demo.research", "input": {
            "question": "Why is the sky blue and why are sunsets red?", "phase_s": 2.5}}).json()
    page.goto(f"/runs/{run['id']}")
    page.wait_for_selector("#stream-state:text('live')")
    timeline = page.locator("#run-timeline")
    # Then its first step is drawn once it finishes, beside the running attempt (no reload)
    expect(timeline.locator("g.wf-row.step")).to_have_count(1, timeout=15_000)
    expect(timeline.locator(".wf-bar.running")).to_have_count(1)
    # When it is cancelled during its queries (it stops after them) and replayed
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_selector("#run-status:text('cancelled')", timeout=30_000)
    page.get_by_role("button", name="Replay").click()
    page.wait_for_selector("#run-status:text('succeeded')", timeout=30_000)
    page.wait_for_load_state("networkidle")
    # Then the second attempt got back every step the first stored, and ran the rest
    kinds = timeline.locator("g.wf-row").evaluate_all(
        "rows => rows.map(r => r.classList[1] + ':' + r.querySelector('rect').classList[1])")
    first = kinds.index("attempt:succeeded")
    assert kinds[0] == "attempt:cancelled" and first > 1, kinds
    ran_first = kinds[1:first]
    assert ran_first == ["step:step"] * len(ran_first)
    assert kinds[first + 1:] == ["reused:reused"] * len(ran_first) \
        + ["step:step"] * (4 - len(ran_first))
    expect(timeline.locator(".wf-bar.running")).to_have_count(0)
    path = OUTPUT / "run-timeline-replayed.png"
    page.locator("section[aria-labelledby=timeline-title]").screenshot(path=str(path))
    if os.environ.get("AGENTQ_UPDATE_SCREENSHOTS"):
        shutil.copy(path, ROOT / "docs" / "dashboard-waterfall.png")


def test_an_llm_calls_row_names_its_model_and_its_tokens(dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    with dashboard.api() as client:
        chat = client.post("/v1/runs?wait=10", json={"agent": "llm.chat", "input": {
            "messages": [{"role": "user", "content": "hello timeline"}]}}).json()
    assert chat["status"] == "succeeded", chat
    dashboard.page.goto(f"/runs/{chat['id']}")
    call = dashboard.page.locator("#run-timeline g.wf-row.llm")
    expect(call).to_have_count(1)
    model = chat["result"]["model"]
    expect(call.locator("text")).to_have_text(re.compile(
        rf"^chat · {re.escape(model)} · 10 in / 5 out · [\d.]+ m?s$"))
    assert f"{model}, 10 tokens in, 5 out" in (call.locator("title").text_content() or "")


def test_the_runs_page_charts_the_runs_ended_in_each_minute_of_the_last_hour(
        dashboard: Dashboard, runtime: Runtime, api_server: ApiServer) -> None:
    from playwright.sync_api import expect

    # Given a run that succeeded and one dead-lettered (and another tenant's, not counted)
    with dashboard.api() as client:
        ok = client.post("/v1/runs?wait=10", json={"agent": "echo"}).json()
        dead = client.post("/v1/runs?wait=10", json={
            "agent": "flaky", "input": {"failures": 1}, "max_attempts": 1}).json()
    assert (ok["status"], dead["status"]) == ("succeeded", "dead_lettered")
    with httpx.Client(base_url=api_server.url, timeout=30, headers={
            "Authorization": f"Bearer {make_tenant(runtime).key}"}) as other:
        theirs = other.post("/v1/runs?wait=10", json={"agent": "echo"}).json()
    assert theirs["status"] == "succeeded"
    # When the runs page is opened
    page = dashboard.page
    page.goto("/runs")
    # Then its chart has a column per minute, and the two runs are counted in theirs
    columns = page.locator("#runs-chart svg.chart g.chart-col")
    expect(columns).to_have_count(60)
    counts = columns.evaluate_all(
        "cols => cols.map(c => [+c.dataset.ago, +c.dataset.succeeded, +c.dataset.failed])")
    assert [ago for ago, _, _ in counts] == list(range(59, -1, -1))
    assert sum(ok for _, ok, _ in counts) == 1 and sum(bad for _, _, bad in counts) == 1
    busy = [i for i, (_, ok, bad) in enumerate(counts) if ok or bad]
    assert busy and all(i >= 58 for i in busy)  # this minute's, or the one before
    assert columns.locator("rect.seg.succeeded").count() == 1
    assert columns.locator("rect.seg.failed").count() == 1
    legend = page.locator("#runs-chart .legend")
    expect(legend).to_contain_text("succeeded 1")
    expect(legend).to_contain_text("failed or dead-lettered 1")
    svg = page.locator("#runs-chart svg.chart")
    assert (svg.get_attribute("aria-label") or "").startswith("In the last hour 2 runs ended")
    assert page.locator("#runs-chart .visually-hidden tbody tr").count() == len(busy)
    # The chart alone, as the page fetches it again, is the tenant's own
    cookies = {c["name"]: c["value"] for c in dashboard.context.cookies()}
    with httpx.Client(base_url=api_server.url, cookies=cookies) as client:
        assert client.get("/runs/chart").text.count('class="chart-col"') == 60
        assert client.get(f"/runs/{ok['id']}/timeline").status_code == 200
        assert client.get(f"/runs/{theirs['id']}/timeline").status_code == 404
    dashboard.shot("runs-chart")


# Child runs: a parent's page lists its children, a child's links up -------------------------

def test_a_parents_page_lists_its_children_and_a_child_links_back_up(
        dashboard: Dashboard) -> None:
    from playwright.sync_api import expect

    # Given a demo.fanout run of three questions, its page open while it goes on
    questions = ["Why is the sky blue?", "What causes tides?", "Why are plants green?"]
    with dashboard.api() as client:
        run = client.post("/v1/runs", json={"agent": "demo.fanout", "input": {
            "questions": questions, "max_concurrency": 2, "phase_s": 0}}).json()
    page = dashboard.page
    page.goto(f"/runs/{run['id']}")
    # Then once it has succeeded it lists its three children, each succeeded (no reload)
    page.wait_for_selector("#run-status:text('succeeded')", timeout=30_000)
    card = page.locator("section[aria-labelledby=children-title]")
    rows = card.locator("table.children tbody tr")
    expect(rows).to_have_count(3)
    expect(card.locator(".counts .status")).to_have_text(["succeeded 3"])
    expect(rows.locator(".status.succeeded")).to_have_count(3)
    names = rows.locator("td:first-child").all_text_contents()
    assert sorted(names) == ["research:0", "research:1", "research:2"]
    with dashboard.api() as client:
        children = client.get(f"/v1/runs/{run['id']}/children").json()["items"]
    assert {c["agent"] for c in children} == {"demo.research"}
    for child in children:
        expect(card.get_by_role("link", name=child["id"])).to_have_count(1)
    assert card.get_by_text("more:").count() == 0  # all of them are shown
    page.locator("section[aria-labelledby=children-title]").screenshot(
        path=str(OUTPUT / "run-children.png"))
    # When a child's link is followed, its page names its parent (and no other root)
    first = min(children, key=lambda c: c["child_name"])
    card.get_by_role("link", name=first["id"]).click()
    page.wait_for_url(f"**/runs/{first['id']}")
    parent = page.locator(".facts div", has=page.locator("dt", has_text="Parent"))
    expect(parent).to_contain_text(f"{run['id']} demo.fanout succeeded as research:0")
    assert page.locator(".facts dt", has_text="Root").count() == 0
    assert page.locator("section[aria-labelledby=children-title]").count() == 0
    dashboard.shot("run-child")
    # Then its Parent link leads back up
    parent.get_by_role("link", name=run["id"]).click()
    page.wait_for_url(f"**/runs/{run['id']}")
    expect(page.locator("table.children tbody tr")).to_have_count(3)


def children_table(page: str) -> str:
    found = re.search(r'<table class="children">(.*?)</table>', page, re.S)
    assert found, "no children table on the page"
    return found.group(1)


def test_a_parents_children_are_paged_and_hidden_from_other_tenants(
        app: Flask, api: ApiClient, tenant: Tenant, runtime: Runtime,
        crash_worker: StartWorker) -> None:
    # Given a parent that started 55 children, all succeeded
    crash_worker(concurrency=8)
    run = api.submit("test.parent.map", {"n": 55, "max_concurrency": 8})
    assert api.wait(run["id"], timeout=90)["status"] == "succeeded"
    browser = signed_in(app, tenant)
    # Its page shows the first 50, the count by status, and links to the next 5
    page = browser.get(f"/runs/{run['id']}").get_data(as_text=True)
    assert children_table(page).count("<tr><td><code>map:") == 50
    assert '<span class="status succeeded">succeeded 55</span>' in page
    more = re.search(r'and 5 more: <a href="([^"]+)">the next 5</a>', page)
    assert more, "no link to the rest"
    rest = browser.get(more.group(1).replace("&amp;", "&"))
    assert rest.status_code == 200
    text = rest.get_data(as_text=True)
    shown = re.findall(r"<tr><td><code>(map:\d+)</code>", children_table(page))
    after = re.findall(r"<tr><td><code>(map:\d+)</code>", children_table(text))
    assert len(after) == 5 and sorted(shown + after) == sorted(f"map:{i}" for i in range(55))
    assert "more:" not in text and "First page" in text
    # A cursor edited by hand is refused, with the first page shown
    edited = browser.get(f"/runs/{run['id']}/children?cursor=nope").get_data(as_text=True)
    assert "the cursor is not valid" in edited and children_table(edited).count("<tr>") == 51
    # And another tenant finds neither the parent's children nor a child
    other = signed_in(app, make_tenant(runtime))
    child = api.get(f"/v1/runs/{run['id']}/children?limit=1").get_json()["items"][0]
    assert other.get(f"/runs/{run['id']}/children").status_code == 404
    assert other.get(f"/runs/{child['id']}").status_code == 404
    assert other.get(f"/runs/{child['id']}/panel").status_code == 404


def test_a_grandchild_links_to_its_parent_and_its_root(
        app: Flask, api: ApiClient, tenant: Tenant, runtime: Runtime,
        crash_worker: StartWorker) -> None:
    # Given an agent that starts itself until the depth limit stops it: a chain of runs
    crash_worker(concurrency=4)
    root = api.submit("test.recursive", {})
    assert api.wait(root["id"], timeout=60)["status"] == "failed"
    chain = [root["id"]]
    while child := api.get(f"/v1/runs/{chain[-1]}/children").get_json()["items"]:
        chain.append(child[0]["id"])
    assert len(chain) == 9
    # Then the page of one two below the root names both, each a link
    page = signed_in(app, tenant).get(f"/runs/{chain[2]}").get_data(as_text=True)
    for label, target in (("Parent", chain[1]), ("Root", chain[0])):
        assert re.search(rf'<dt>{label}</dt><dd><a href="/runs/{target}"><code>{target}</code>'
                         r'</a> test.recursive <span class="status failed">', page), label
