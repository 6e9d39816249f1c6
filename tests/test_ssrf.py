"""The SSRF guard: internal targets are refused, names are resolved once, no redirects."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from typing import Any

import pytest

from tests.harness import Receiver
from worker.base.settings import Settings
from worker.base.ssrf import Guard, Refused
from worker.delivery.notifier import Sender


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1",                      # loopback
    "10.1.2.3", "172.16.0.1", "192.168.1.1",               # private
    "169.254.169.254", "fe80::1",                          # link-local (cloud metadata)
    "100.64.0.1",                                          # CGNAT
    "224.0.0.1", "ff02::1",                                # multicast
    "0.0.0.0", "::",                                       # unspecified
    "fd00::1",                                             # IPv6 unique-local
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",                 # IPv4-mapped IPv6
    "64:ff9b::7f00:1", "64:ff9b::a00:1",                   # NAT64 of 127.0.0.1, 10.0.0.1
    "2002:7f00:1::1",                                      # 6to4 of 127.0.0.1
    "240.0.0.1", "255.255.255.255",                        # reserved, broadcast
])
def test_each_internal_address_class_is_refused(address: str) -> None:
    with pytest.raises(Refused):
        Guard([]).check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946",
                                     "1.1.1.1"])
def test_public_addresses_pass(address: str) -> None:
    Guard([]).check_address(ipaddress.ip_address(address))


def test_the_allow_list_opens_named_networks_only() -> None:
    guard = Guard(["127.0.0.0/8", "10.9.0.0/16"])
    guard.check_address(ipaddress.ip_address("127.0.0.1"))
    guard.check_address(ipaddress.ip_address("10.9.1.1"))
    with pytest.raises(Refused):
        guard.check_address(ipaddress.ip_address("10.8.1.1"))


def guarded_sender(settings: Settings) -> Sender:
    """A sender with the guard on (no allow-list), as in production."""
    return Sender(settings.model_copy(update={"webhook_allowed_cidrs": []}))


def test_a_name_that_resolves_to_loopback_is_refused_and_never_connected(
    settings: Settings, receiver: Receiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    response = guarded_sender(settings).post(f"http://localhost:{port}/internal",
                                             {"content-type": "application/json"}, b"{}")
    assert response.status_code is None
    assert response.error is not None and response.error.startswith("refused")
    # The sender returns after its last request; the receiver records before answering.
    assert receiver.at("/internal") == []


def test_a_redirect_to_an_internal_address_is_not_followed(settings: Settings,
                                                           receiver: Receiver) -> None:
    internal = Receiver()
    try:
        receiver.script("/hop", [(302, {"Location": internal.url + "/secret"})])
        # The first hop is allowed here (loopback, as the tests allow); the redirect is not.
        sender = Sender(settings)
        response = sender.post(receiver.url + "/hop", {"content-type": "application/json"},
                               json.dumps({"a": 1}).encode())
        assert response.status_code == 302
        assert not response.ok
        assert internal.received == []  # a followed redirect would be there already
    finally:
        internal.close()


def test_the_connection_goes_to_the_checked_address_with_the_original_host(
    settings: Settings, receiver: Receiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    response = Sender(settings).post(f"http://localhost:{port}/named",
                                     {"content-type": "application/json"}, b"{}")
    assert response.status_code == 200
    [request] = receiver.at("/named")
    assert request.headers["host"] == f"localhost:{port}"


def test_a_name_whose_lookup_never_answers_is_given_up_at_the_deadline(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def never_answers(*args: Any, **kwargs: Any) -> Any:
        released.wait(30)
        raise socket.gaierror("released")

    monkeypatch.setattr(socket, "getaddrinfo", never_answers)
    try:
        began = time.monotonic()
        response = Sender(settings).post("http://hooks.example.test/slow",  # 2 s in the tests
                                         {"content-type": "application/json"}, b"{}")
        took = time.monotonic() - began
    finally:
        released.set()
    assert response.status_code is None and response.error is not None
    assert response.error.startswith("timed out after 2 s: looking up 'hooks.example.test'")
    assert took < 10  # the deadline, not the resolver's (which here never answers)
