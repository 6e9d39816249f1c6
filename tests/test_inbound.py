"""Inbound webhooks: signed the way each platform signs, verified on the raw body,
deduplicated, answered before the agent starts."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from sqlalchemy import select

from tests.conftest import ApiClient, Tenant
from tests.harness import ApiServer, Receiver, wait_for
from tests.test_signing import spec_verify
from worker.base import signing
from worker.base.models import InboundEvent, Run
from worker.base.runtime import Runtime
from worker.inbound import providers

pytestmark = pytest.mark.usefixtures("worker")

GITHUB_SECRET = "It's a Secret to Everybody"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
STRIPE_SECRET = "whsec_test_secret_for_stripe_123456"


def github(secret: str, body: bytes, *, event: str = "issues",
           delivery: str | None = None) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "Content-Type": "application/json"}


def slack(secret: str, body: bytes, *, ts: int | None = None,
          content_type: str = "application/json") -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    base = f"v0:{stamp}:".encode() + body
    return {"X-Slack-Request-Timestamp": str(stamp), "Content-Type": content_type,
            "X-Slack-Signature": "v0=" + hmac.new(secret.encode(), base,
                                                  hashlib.sha256).hexdigest()}


def stripe(secret: str, body: bytes, *, t: int | None = None,
           signatures: list[str] | None = None) -> dict[str, str]:
    stamp = int(time.time()) if t is None else t
    right = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    parts = [f"t={stamp}"] + [f"v1={s}" for s in (signatures or [right])]
    return {"Stripe-Signature": ",".join(parts), "Content-Type": "application/json"}


def source(api: ApiClient, provider: str, secret: str, agent: str = "echo",
           **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/hook-sources", json={"provider": provider, "secret": secret,
                                                  "agent": agent, **fields})
    assert response.status_code == 201, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def stored(runtime: Runtime, source_id: str) -> list[InboundEvent]:
    with runtime.db.transaction() as session:
        return list(session.scalars(select(InboundEvent).where(
            InboundEvent.source_id == source_id)))


def runs_of(runtime: Runtime, tenant: Tenant) -> list[Run]:
    with runtime.db.transaction() as session:
        return list(session.scalars(select(Run).where(Run.tenant_id == tenant.id)))


@pytest.fixture
def hooks(api_server: ApiServer) -> Iterator[httpx.Client]:
    """A client with no API key: platforms have none."""
    with httpx.Client(base_url=api_server.url, timeout=15) as client:
        yield client


def test_github_known_answer() -> None:
    headers = {"X-Hub-Signature-256":
               "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}
    providers.verify("github", [GITHUB_SECRET], headers, b"Hello, World!")
    with pytest.raises(providers.Rejected):
        providers.verify("github", [GITHUB_SECRET], headers, b"Hello, World?")


def test_a_github_delivery_starts_a_run_and_a_redelivery_does_not(
    api: ApiClient, hooks: httpx.Client, runtime: Runtime
) -> None:
    hook = source(api, "github", GITHUB_SECRET, agent="echo")
    assert hook["url"] == f"/hooks/{hook['id']}"
    body = json.dumps({"action": "opened", "issue": {"title": "Crash on start"}}).encode()
    headers = github(GITHUB_SECRET, body, delivery="d-1")
    first = hooks.post(hook["url"], content=body, headers=headers)
    assert first.status_code == 200, first.text
    run_id = first.json()["run_id"]
    done = api.wait(run_id)
    assert done["status"] == "succeeded"
    assert done["input"] == {"provider": "github", "event": "issues", "delivery_id": "d-1",
                             "payload": {"action": "opened", "issue": {"title": "Crash on start"}}}
    # GitHub redelivers with the same X-GitHub-Delivery: the same run, nothing new
    again = hooks.post(hook["url"], content=body, headers=headers)
    assert again.status_code == 200 and again.json() == {"run_id": run_id, "duplicate": True}
    assert len(stored(runtime, hook["id"])) == 1
    assert len(runs_of(runtime, api.tenant)) == 1


def test_github_ping_is_answered_without_a_run(api: ApiClient, hooks: httpx.Client,
                                               runtime: Runtime) -> None:
    hook = source(api, "github", GITHUB_SECRET)
    body = b'{"zen": "Keep it logically awesome."}'
    response = hooks.post(hook["url"], content=body, headers=github(GITHUB_SECRET, body,
                                                                       event="ping"))
    assert response.status_code == 200 and response.json()["pong"] is True
    assert runs_of(runtime, api.tenant) == []


def test_a_tampered_body_is_401_and_nothing_is_stored(api: ApiClient, hooks: httpx.Client,
                                                      runtime: Runtime) -> None:
    hook = source(api, "github", GITHUB_SECRET)
    body = b'{"amount": 10}'
    response = hooks.post(hook["url"], content=b'{"amount": 99}',
                          headers=github(GITHUB_SECRET, body))
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert stored(runtime, hook["id"]) == [] and runs_of(runtime, api.tenant) == []


def test_the_right_signature_over_reserialised_json_fails(api: ApiClient,
                                                          hooks: httpx.Client) -> None:
    hook = source(api, "github", GITHUB_SECRET)
    sent = b'{"a": 1,  "b": [1, 2]}'
    reserialised = json.dumps(json.loads(sent), separators=(",", ":")).encode()
    response = hooks.post(hook["url"], content=sent,
                          headers=github(GITHUB_SECRET, reserialised))
    assert response.status_code == 401


@pytest.mark.parametrize(("offset", "status"), [(0, 200), (-301, 401), (300, 200), (301, 401)])
def test_slack_timestamps(api: ApiClient, hooks: httpx.Client, offset: int,
                          status: int) -> None:
    hook = source(api, "slack", SLACK_SECRET)
    body = json.dumps({"type": "event_callback", "event_id": f"Ev{uuid.uuid4().hex}",
                       "event": {"type": "app_mention", "text": "hi"}}).encode()
    response = hooks.post(hook["url"], content=body,
                          headers=slack(SLACK_SECRET, body, ts=int(time.time()) + offset))
    assert response.status_code == status, response.text


def test_slack_url_verification_is_answered(api: ApiClient, hooks: httpx.Client) -> None:
    hook = source(api, "slack", SLACK_SECRET)
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = json.dumps({"type": "url_verification", "challenge": challenge}).encode()
    response = hooks.post(hook["url"], content=body, headers=slack(SLACK_SECRET, body))
    assert response.json() == {"challenge": challenge}


def test_a_slack_retry_makes_no_second_run(api: ApiClient, hooks: httpx.Client,
                                           runtime: Runtime) -> None:
    hook = source(api, "slack", SLACK_SECRET, agent="test.emit")
    body = json.dumps({"type": "event_callback", "event_id": "Ev0PV52K21",
                       "event": {"type": "app_mention",
                                 "text": "<@U0LAN0Z89> is it   everything?\u0007"}}).encode()
    first = hooks.post(hook["url"], content=body, headers=slack(SLACK_SECRET, body))
    retry = hooks.post(hook["url"], content=body,
                       headers={**slack(SLACK_SECRET, body), "X-Slack-Retry-Num": "1",
                                "X-Slack-Retry-Reason": "http_timeout"})
    assert retry.json() == {"run_id": first.json()["run_id"], "duplicate": True}
    assert len(runs_of(runtime, api.tenant)) == 1
    run = api.run(first.json()["run_id"])
    assert run["input"]["text"] == "<@U0LAN0Z89> is it everything?"


def test_a_slack_slash_command_runs_and_answers_its_response_url(
    api: ApiClient, hooks: httpx.Client, receiver: Receiver
) -> None:
    hook = source(api, "slack", SLACK_SECRET, agent="test.emit")
    form = urlencode({"command": "/ask", "text": "why &amp; how\n\n is  the sky blue?",
                      "trigger_id": f"13345224609.{uuid.uuid4().hex}", "user_id": "U2147483697",
                      "response_url": receiver.url + "/slack-response"}).encode()
    response = hooks.post(hook["url"], content=form, headers=slack(
        SLACK_SECRET, form, content_type="application/x-www-form-urlencoded"))
    assert response.status_code == 200, response.text
    run = api.wait(response.json()["run_id"])
    assert run["input"]["event"] == "slash_command"
    assert run["input"]["text"] == "why & how is the sky blue?"
    [answer] = wait_for(lambda: receiver.at("/slack-response"), what="the Slack answer")
    assert json.loads(answer.body) == {"response_type": "in_channel",
                                       "text": json.dumps({"emitted": 3}, indent=2)}


def test_stripe_signatures(api: ApiClient, hooks: httpx.Client) -> None:
    hook = source(api, "stripe", STRIPE_SECRET)
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "invoice.paid",
                       "data": {"object": {"amount_paid": 2000}}}).encode()
    good = stripe(STRIPE_SECRET, body)["Stripe-Signature"].split("v1=")[1]
    # Two v1 values: any may match (one is from a rolled secret)
    two = stripe(STRIPE_SECRET, body, signatures=["0" * 64, good])
    assert hooks.post(hook["url"], content=body, headers=two).status_code == 200
    # Only v0 (another scheme): refused
    only_v0 = {"Stripe-Signature": f"t={int(time.time())},v0={good}",
               "Content-Type": "application/json"}
    assert hooks.post(hook["url"], content=body, headers=only_v0).status_code == 401
    stale = stripe(STRIPE_SECRET, body, t=int(time.time()) - 301)
    assert hooks.post(hook["url"], content=body, headers=stale).status_code == 401


def test_standard_webhooks_are_verified_and_deduplicated(
    api: ApiClient, hooks: httpx.Client, runtime: Runtime
) -> None:
    secret = signing.new_secret()
    hook = source(api, "standard", secret)
    body = b'{"type": "order.created", "data": {"id": 7}}'
    stamp = int(time.time())
    headers = {"webhook-id": "msg_abc", "webhook-timestamp": str(stamp),
               "webhook-signature": signing.sign(secret, "msg_abc", stamp, body),
               "content-type": "application/json"}
    assert spec_verify(secret, headers, body)
    first = hooks.post(hook["url"], content=body, headers=headers)
    assert first.status_code == 200
    assert hooks.post(hook["url"], content=body, headers=headers).json()["duplicate"] is True
    assert api.wait(first.json()["run_id"])["input"]["event"] == "order.created"
    forged = {**headers, "webhook-signature": signing.sign(signing.new_secret(), "msg_abc",
                                                           stamp, body)}
    assert hooks.post(hook["url"], content=body, headers=forged).status_code == 401


def test_two_identical_deliveries_in_parallel_make_one_run(
    api: ApiClient, hooks: httpx.Client, runtime: Runtime
) -> None:
    hook = source(api, "github", GITHUB_SECRET)
    body = b'{"action": "created"}'
    headers = github(GITHUB_SECRET, body, delivery="parallel-1")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: hooks.post(hook["url"], content=body,
                                                     headers=headers), range(8)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert len(runs_of(runtime, api.tenant)) == 1


def test_events_not_chosen_are_ignored_and_recorded(api: ApiClient, hooks: httpx.Client,
                                                    runtime: Runtime) -> None:
    hook = source(api, "github", GITHUB_SECRET, events=["pull_request.opened"])
    body = b'{"action": "closed"}'
    ignored = hooks.post(hook["url"], content=body,
                         headers=github(GITHUB_SECRET, body, event="pull_request"))
    assert ignored.json() == {"ignored": True, "duplicate": False}
    [event] = stored(runtime, hook["id"])
    assert event.ignored and event.run_id is None
    opened = b'{"action": "opened"}'
    taken = hooks.post(hook["url"], content=opened,
                       headers=github(GITHUB_SECRET, opened, event="pull_request"))
    assert "run_id" in taken.json()


def test_the_200_arrives_before_the_agent_starts(api: ApiClient, hooks: httpx.Client,
                                                 settings: Any) -> None:
    hook = source(api, "github", GITHUB_SECRET, agent="test.block")
    body = b'{"action": "opened"}'
    started = time.monotonic()
    response = hooks.post(hook["url"], content=body, headers=github(GITHUB_SECRET, body))
    assert response.status_code == 200 and time.monotonic() - started < 2
    run_id = response.json()["run_id"]
    assert api.run(run_id)["status"] in {"queued", "running"}  # the agent is still blocked
    redis.Redis.from_url(settings.redis_url).set(f"test:release:{run_id}", 1, ex=60)
    assert api.wait(run_id)["result"]["released"] == "yes"


def test_the_result_reaches_the_sources_reply_url_signed(
    api: ApiClient, hooks: httpx.Client, receiver: Receiver
) -> None:
    assert api.post("/v1/hook-sources", json={
        "provider": "github", "secret": GITHUB_SECRET, "agent": "echo",
        "reply": receiver.url + "/reply"}).status_code == 422  # no tenant secret yet
    secret = api.post("/v1/webhook-secret").get_json()["secret"]
    hook = source(api, "github", GITHUB_SECRET, reply=receiver.url + "/reply")
    body = b'{"action": "opened", "n": 5}'
    run_id = hooks.post(hook["url"], content=body, headers=github(GITHUB_SECRET, body)).json()[
        "run_id"]
    [reply] = wait_for(lambda: receiver.at("/reply"), what="the reply")
    assert spec_verify(secret, reply.headers, reply.body)
    message = json.loads(reply.body)
    assert message["type"] == "run.succeeded" and message["data"]["id"] == run_id
    assert message["data"]["result"]["payload"] == {"action": "opened", "n": 5}


@pytest.mark.parametrize(("fields", "problem"), [
    ({"provider": "github", "secret": "", "agent": "echo"}, "secret"),
    ({"provider": "github", "secret": "short", "agent": "echo"}, "secret"),
    ({"provider": "standard", "secret": "not-base64!", "agent": "echo"}, "secret"),
    ({"provider": "github", "secret": GITHUB_SECRET, "agent": "nope"}, "agent"),
    ({"provider": "gitlab", "secret": GITHUB_SECRET, "agent": "echo"}, "provider"),
    ({"provider": "github", "agent": "echo"}, "secret"),
])
def test_unsafe_or_unknown_sources_are_refused(api: ApiClient, fields: dict[str, Any],
                                               problem: str) -> None:
    response = api.post("/v1/hook-sources", json=fields)
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == problem


def test_an_unknown_hook_is_404_with_no_hint(hooks: httpx.Client) -> None:
    response = hooks.post("/hooks/hs_nothing", content=b"{}")
    assert response.status_code == 404
    assert "hs_" not in response.json()["detail"].replace("hs_nothing", "")


def test_hook_sources_are_isolated_and_deletable(api: ApiClient, other_api: ApiClient,
                                                 hooks: httpx.Client) -> None:
    hook = source(api, "github", GITHUB_SECRET)
    assert "secret" not in hook
    assert other_api.get(f"/v1/hook-sources/{hook['id']}").status_code == 404
    assert other_api.get("/v1/hook-sources").get_json()["items"] == []
    assert [item["id"] for item in api.get("/v1/hook-sources").get_json()["items"]] == \
        [hook["id"]]
    assert api.client.delete(f"/v1/hook-sources/{hook['id']}",
                             headers=api.headers).status_code == 204
    body = b"{}"
    assert hooks.post(hook["url"], content=body,
                      headers=github(GITHUB_SECRET, body)).status_code == 404


def test_rotation_accepts_old_and_new_secret_during_the_overlap(
    api: ApiClient, hooks: httpx.Client
) -> None:
    hook = source(api, "github", GITHUB_SECRET)
    new_secret = "a-brand-new-secret-of-enough-length"
    rotated = api.post(f"/v1/hook-sources/{hook['id']}/rotate-secret",
                       json={"secret": new_secret})
    assert rotated.status_code == 200 and rotated.get_json()["previous_secret_expires_at"]
    for secret in (GITHUB_SECRET, new_secret):
        body = json.dumps({"with": secret[:5]}).encode()
        assert hooks.post(hook["url"], content=body,
                          headers=github(secret, body)).status_code == 200


APPROVAL = {"type": "object", "properties": {"approved": {"type": "boolean"}},
            "required": ["approved"], "additionalProperties": False}


def press(hooks: httpx.Client, hook: dict[str, Any], value: Any, *, user: str = "U2147483697",
          response_url: str | None = None, trigger: str | None = None,
          secret: str = SLACK_SECRET) -> httpx.Response:
    """A Slack button press (block_actions) whose value is ``value`` (JSON-encoded unless a
    string)."""
    payload = {"type": "block_actions", "trigger_id": trigger or f"1334.{uuid.uuid4().hex}",
               "user": {"id": user, "username": "ada"}, "response_url": response_url,
               "actions": [{"type": "button", "action_id": "approve",
                            "value": value if isinstance(value, str) else json.dumps(value)}]}
    form = urlencode({"payload": json.dumps(payload)}).encode()
    return hooks.post(hook["url"], content=form, headers=slack(
        secret, form, content_type="application/x-www-form-urlencoded"))


def test_a_slack_button_answers_a_waitpoint_once_and_tells_the_channel(
    api: ApiClient, hooks: httpx.Client, receiver: Receiver, runtime: Runtime
) -> None:
    # The source starts runs on mentions only: a button press answering a waitpoint is
    # not an event to start a run from, whatever the filter says.
    hook = source(api, "slack", SLACK_SECRET, events=["app_mention"])
    run = api.submit("test.wait", {"name": "approval", "schema": APPROVAL})
    api.wait(run["id"], statuses={"waiting"})
    value = {"run_id": run["id"], "waitpoint": "approval", "data": {"approved": True}}
    trigger = f"1334.{uuid.uuid4().hex}"
    url = receiver.url + "/slack-button"

    pressed = press(hooks, hook, value, trigger=trigger, response_url=url)
    assert pressed.status_code == 200, pressed.text
    assert "U2147483697" in pressed.json()["text"]
    done = api.wait(run["id"])
    assert done["status"] == "succeeded" and done["result"]["data"] == {"approved": True}
    [point] = api.get(f"/v1/runs/{run['id']}/waitpoints").get_json()["items"]
    assert point["completed_by"] == "slack:U2147483697"
    [told] = wait_for(lambda: receiver.at("/slack-button"), what="the channel's message")
    assert json.loads(told.body)["text"].startswith("<@U2147483697> answered 'approval'")
    [event] = stored(runtime, hook["id"])
    assert event.run_id == run["id"] and event.delivery_id == trigger

    # Slack's retry of the same press: nothing changes
    again = press(hooks, hook, value, trigger=trigger, response_url=url)
    assert again.status_code == 200 and again.json()["text"] == "That press was received."
    # A second press (someone else, later): told, only them, that it was answered already
    late = press(hooks, hook, {**value, "data": {"approved": False}}, user="U0G9QF9C6",
                 response_url=url)
    assert late.status_code == 200 and "already ended" in late.json()["text"]
    told = wait_for(lambda: receiver.at("/slack-button")[1:], what="the late answer")[0]
    assert json.loads(told.body)["response_type"] == "ephemeral"
    assert api.run(run["id"])["result"]["data"] == {"approved": True}
    assert [r.id for r in runs_of(runtime, api.tenant)] == [run["id"]]  # no run started


def test_a_slack_button_refuses_what_it_cannot_answer_with_a_line_never_an_error(
    api: ApiClient, other_api: ApiClient, hooks: httpx.Client, runtime: Runtime
) -> None:
    hook = source(api, "slack", SLACK_SECRET)
    mine = api.submit("test.wait", {"name": "approval", "schema": APPROVAL})
    theirs = other_api.submit("test.wait", {"name": "approval"})
    api.wait(mine["id"], statuses={"waiting"})
    other_api.wait(theirs["id"], statuses={"waiting"})

    def refused(value: Any) -> str:
        response = press(hooks, hook, value)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["response_type"] == "ephemeral"
        text: str = body["text"]
        return text

    # another tenant's run is not found through this tenant's source
    assert "not found" in refused({"run_id": theirs["id"], "waitpoint": "approval",
                                   "data": {}})
    assert "not match" in refused({"run_id": mine["id"], "waitpoint": "approval",
                                   "data": {"approved": "yes"}})
    assert "not found" in refused({"run_id": mine["id"], "waitpoint": "nope", "data": {}})
    assert "run_id" in refused({"waitpoint": "approval", "data": {}})
    assert "run_id" in refused({"run_id": ["x"], "waitpoint": "approval"})
    assert "waitpoint" in refused({"run_id": mine["id"], "waitpoint": 7})
    assert "not JSON" in refused('{"waitpoint": ')
    start = '{"run_id": "' + mine["id"] + '", "waitpoint": "approval", "data": '
    assert "NaN" in refused(start + "NaN}")
    assert "U+0000" in refused(start + '"\\u0000"}')
    # a press signed with another secret changes nothing either
    forged = press(hooks, hook, {"run_id": mine["id"], "waitpoint": "approval",
                                 "data": {"approved": True}}, secret="x" * 32)
    assert forged.status_code == 401
    assert api.run(mine["id"])["status"] == "waiting"
    assert other_api.run(theirs["id"])["status"] == "waiting"
    assert [r.id for r in runs_of(runtime, api.tenant)] == [mine["id"]]
    assert stored(runtime, hook["id"]) == []
