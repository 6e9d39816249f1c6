"""Webhook deliveries under slow receivers and races: each attempt ends by its deadline, one
tenant's slow receivers cannot take every sender, and every outcome write is fenced by the
attempt it records (a deleted endpoint stays deleted, a late failure never undoes a later
success, a retry by hand never starts a second send alongside the first)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, insert, select, update

from tests.conftest import ApiClient, make_tenant
from tests.harness import Receiver
from worker.base.errors import Conflict
from worker.base.models import Delivery, DeliveryStatus
from worker.base.runtime import Runtime
from worker.base.settings import Settings
from worker.delivery import webhooks
from worker.delivery.notifier import Sender

pytestmark = pytest.mark.usefixtures("worker")


class Dripper:
    """A receiver that accepts, then sends its answer one byte a second, forever."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/drip"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        answer = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n" + b"x-pad: " + b"y" * 1000
        try:
            conn.recv(65536)
            for byte in answer:
                conn.sendall(bytes([byte]))
                time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def dripper() -> Iterator[Dripper]:
    server = Dripper()
    yield server
    server.close()


def test_an_attempt_against_a_dripping_receiver_ends_by_its_deadline(
        settings: Settings, dripper: Dripper) -> None:
    sender = Sender(settings)  # AGENTQ_WEBHOOK_TIMEOUT_S=2 in the tests
    started = time.monotonic()
    response = sender.post(dripper.url, {"content-type": "application/json"}, b"{}")
    took = time.monotonic() - started
    assert response.status_code is None and "timed out" in (response.error or "")
    assert took < settings.webhook_timeout_s + 1, f"the attempt took {took:.1f} s"


# Fenced outcome writes ---------------------------------------------------------------------

def delivery_for(runtime: Runtime, api: ApiClient, url: str,
                 endpoint: str | None = None) -> tuple[str, str]:
    """A pending delivery of a (parked) run to ``endpoint`` (or a new one at ``url``);
    (id, endpoint id). Marked dispatched, so the session's sweeper leaves it to the test
    for a while."""
    if endpoint is None:
        endpoint = api.post("/v1/webhook-endpoints", json={"url": url}).get_json()["id"]
    run = api.submit("test.parked")["id"]
    delivery_id = f"msg_test_{time.time_ns()}"
    with runtime.db.transaction() as session:
        session.execute(insert(Delivery).values(
            id=delivery_id, tenant_id=api.tenant.id, run_id=run, endpoint_id=endpoint, url=url,
            event_type="run.succeeded", format="standard", payload={"type": "run.succeeded"},
            status="pending", attempts=0, next_attempt_at=func.now(),
            dispatched_at=func.now()))
    return delivery_id, endpoint


def hold(runtime: Runtime, delivery_id: str, hold_s: float = 30.0,
         per_tenant: int = 8) -> webhooks.Sending | None:
    with runtime.db.autocommit() as session:
        return webhooks.hold(session, delivery_id=delivery_id, hold_s=hold_s,
                             per_tenant=per_tenant)


def answered(status: int | None) -> webhooks.Response:
    return webhooks.Response(status, 5.0, datetime.now(UTC),
                             error=None if status == 200 else "HTTP 500")


def record(runtime: Runtime, sending: webhooks.Sending,
           response: webhooks.Response) -> DeliveryStatus | None:
    with runtime.db.transaction() as session:
        return webhooks.record(session, sending=sending, response=response,
                               schedule=[0.3, 0.3], disable_after_s=3600).status


def state(runtime: Runtime, delivery_id: str) -> Delivery:
    with runtime.db.autocommit() as session:
        return session.get_one(Delivery, delivery_id)


def test_deleting_an_endpoint_during_a_send_is_not_undone(
        api: ApiClient, runtime: Runtime, receiver: Receiver) -> None:
    delivery_id, endpoint = delivery_for(runtime, api, receiver.url + "/gone")
    sending = hold(runtime, delivery_id)
    assert sending is not None
    # When the endpoint is deleted while the attempt is on its way, and the attempt fails
    assert api.client.delete(f"/v1/webhook-endpoints/{endpoint}",
                             headers=api.headers).status_code == 204
    assert record(runtime, sending, answered(500)) is None  # superseded
    # Then the delivery stays dead, and nothing holds it again
    after = state(runtime, delivery_id)
    assert after.status == "dead" and after.last_error == "the endpoint was deleted"
    with runtime.db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
            status="pending", next_attempt_at=func.now(), locked_until=None))
    assert hold(runtime, delivery_id) is None  # a deleted endpoint's delivery is never held


def test_a_late_failure_of_an_expired_attempt_never_undoes_a_later_success(
        api: ApiClient, runtime: Runtime, receiver: Receiver) -> None:
    delivery_id, _ = delivery_for(runtime, api, receiver.url + "/late")
    first = hold(runtime, delivery_id)
    assert first is not None and first.attempt == 1
    with runtime.db.transaction() as session:  # its hold expires while it is still sending
        session.execute(update(Delivery).where(Delivery.id == delivery_id).values(
            locked_until=func.now() - timedelta(seconds=1)))
    second = hold(runtime, delivery_id)
    assert second is not None and second.attempt == 2
    assert record(runtime, second, answered(200)) == DeliveryStatus.DELIVERED
    # When the first attempt's failure arrives at last
    assert record(runtime, first, answered(500)) is None
    # Then the delivery is still delivered, with nothing scheduled, and both attempts kept
    after = state(runtime, delivery_id)
    assert after.status == "delivered" and after.next_attempt_at is None
    assert after.locked_until is None
    log = api.get(f"/v1/deliveries/{delivery_id}").get_json()["attempt_log"]
    assert [item["attempt"] for item in log] == [1, 2]


def test_a_retry_by_hand_is_refused_while_an_attempt_is_being_sent(
        api: ApiClient, runtime: Runtime, receiver: Receiver) -> None:
    delivery_id, _ = delivery_for(runtime, api, receiver.url + "/busy")
    sending = hold(runtime, delivery_id)
    assert sending is not None
    refused = api.post(f"/v1/deliveries/{delivery_id}/retry")
    assert refused.status_code == 409 and "being sent" in refused.get_json()["detail"]
    assert hold(runtime, delivery_id) is None  # no second sender either
    with runtime.db.transaction() as session, pytest.raises(Conflict):
        webhooks.retry(session, tenant_id=api.tenant.id, delivery_id=delivery_id)
    assert record(runtime, sending, answered(200)) == DeliveryStatus.DELIVERED


def test_a_disabled_endpoints_deliveries_are_not_held(api: ApiClient, runtime: Runtime,
                                                       receiver: Receiver) -> None:
    delivery_id, endpoint = delivery_for(runtime, api, receiver.url + "/off")
    other_id, _ = delivery_for(runtime, api, receiver.url + "/off", endpoint)
    sending = hold(runtime, delivery_id)
    assert sending is not None
    # When the receiver answers 410 Gone, the endpoint is disabled
    assert record(runtime, sending, webhooks.Response(410, 5.0, datetime.now(UTC),
                                                      error="HTTP 410")) == DeliveryStatus.DEAD
    # Then its other deliveries are dead too, and would not be held anyway
    assert state(runtime, other_id).status == "dead"
    assert hold(runtime, other_id) is None
    assert api.get(f"/v1/webhook-endpoints/{endpoint}").get_json()["disabled_at"]


# One tenant's slow receivers ------------------------------------------------------------------

def test_a_tenant_holds_at_most_its_share_of_senders(runtime: Runtime, app: object,
                                                     receiver: Receiver) -> None:
    from flask import Flask

    assert isinstance(app, Flask)
    slow = ApiClient(app.test_client(), make_tenant(runtime))
    calm = ApiClient(app.test_client(), make_tenant(runtime))
    held = [delivery_for(runtime, slow, receiver.url + "/slow")[0] for _ in range(3)]
    # Given a tenant with two deliveries being sent (its share, here)
    assert all(hold(runtime, item, per_tenant=2) is not None for item in held[:2])
    # Then its third is not held, and is left for the sweeper to send once there is room
    assert hold(runtime, held[2], per_tenant=2) is None
    assert state(runtime, held[2]).dispatched_at is None
    with runtime.db.autocommit() as session:
        due = webhooks.due(session, grace_s=0, lost_after_s=60, limit=100, per_tenant=2)
    assert held[2] not in due
    # While another tenant's delivery is held at once
    theirs, _ = delivery_for(runtime, calm, receiver.url + "/calm")
    assert hold(runtime, theirs, per_tenant=2) is not None
    # And when one of the first two ends, it hands its place on to the third, at once
    with runtime.db.autocommit() as session:
        sending = webhooks.Sending(held[0], "", 1, 0, "standard", "", {}, None, [],
                                   slow.tenant.id)
        handed = webhooks.record(session, sending=sending, response=answered(200),
                                 schedule=[0.3], disable_after_s=3600)
    assert handed.status == DeliveryStatus.DELIVERED and handed.next_id == held[2]
    assert state(runtime, held[2]).dispatched_at is not None


def test_deliveries_are_admin_only(runtime: Runtime, app: object) -> None:
    from flask import Flask

    assert isinstance(app, Flask)
    writer = make_tenant(runtime, scopes=["runs:read", "runs:write"])
    client = ApiClient(app.test_client(), writer)
    assert client.get("/v1/deliveries").status_code == 403
    assert client.get("/v1/deliveries/msg_x").status_code == 403
    assert client.post("/v1/deliveries/msg_x/retry").status_code == 403
    with runtime.db.autocommit() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.tenant_id == writer.id)) == 0


def test_holds_made_at_once_still_keep_to_the_tenants_share(runtime: Runtime, app: object,
                                                            receiver: Receiver) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from flask import Flask

    assert isinstance(app, Flask)
    tenant = ApiClient(app.test_client(), make_tenant(runtime))
    endpoint = tenant.post("/v1/webhook-endpoints",
                           json={"url": receiver.url + "/burst"}).get_json()["id"]
    burst = [delivery_for(runtime, tenant, "", endpoint)[0] for _ in range(12)]
    start = Barrier(len(burst))

    def take(delivery_id: str) -> bool:
        start.wait(timeout=10)
        return hold(runtime, delivery_id, per_tenant=2) is not None

    with ThreadPoolExecutor(len(burst)) as pool:
        assert sum(pool.map(take, burst)) == 2


def test_one_tenants_backlog_never_fills_the_sweepers_batch(runtime: Runtime, app: object,
                                                           receiver: Receiver) -> None:
    from flask import Flask

    assert isinstance(app, Flask)
    busy = ApiClient(app.test_client(), make_tenant(runtime))
    calm = ApiClient(app.test_client(), make_tenant(runtime))
    run = busy.submit("test.parked")["id"]
    theirs, _ = delivery_for(runtime, calm, receiver.url + "/calm")
    try:
        with runtime.db.transaction() as session:
            now = session.scalar(select(func.now()))
            session.execute(insert(Delivery), [dict(
                id=f"msg_busy_{i:04d}_{time.time_ns()}", tenant_id=busy.tenant.id, run_id=run,
                url=receiver.url + "/busy", event_type="run.succeeded", format="standard",
                payload={}, status="pending", attempts=0,
                next_attempt_at=now - timedelta(seconds=10),  # due before the calm tenant's
                locked_until=now + timedelta(seconds=60) if i < 7 else None)
                for i in range(40)])
            session.execute(update(Delivery).where(Delivery.id == theirs).values(
                dispatched_at=None))
        with runtime.db.autocommit() as session:
            batch = webhooks.due(session, grace_s=0, lost_after_s=60, limit=10, per_tenant=8)
        assert theirs in batch
        assert sum(item.startswith("msg_busy") for item in batch) == 1  # its room: 8 - 7
    finally:
        with runtime.db.transaction() as session:
            session.execute(update(Delivery).where(Delivery.tenant_id.in_(
                [busy.tenant.id, calm.tenant.id])).values(status="dead", locked_until=None))


class Proxy:
    """A forward HTTP proxy on loopback that records the requests it carries."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.carried: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                proxy.carried.append(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in {"proxy-connection", "connection"}}
                answer = httpx.post(self.path, content=body, headers=headers, timeout=5)
                self.send_response(answer.status_code)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("named", [False, True])
def test_deliveries_go_through_the_configured_proxy(settings: Settings, receiver: Receiver,
                                                    named: bool) -> None:
    proxy = Proxy()
    try:
        url = proxy.url.replace("127.0.0.1", "localhost") if named else proxy.url
        sender = Sender(settings.model_copy(update={"webhook_proxy": url}))
        response = sender.post(receiver.url + "/proxied", {"content-type": "application/json"},
                               b"{}")
        assert response.status_code == 200, response.error
        assert proxy.carried and proxy.carried[0].endswith("/proxied")
        assert len(receiver.at("/proxied")) == 1
    finally:
        proxy.close()
