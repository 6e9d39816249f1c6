"""Keep outbound webhooks off internal networks (server-side request forgery).

A target's host is resolved once; every address it resolves to must be public (or inside
``AGENTQ_WEBHOOK_ALLOWED_CIDRS``), and the connection then goes to one of those checked
addresses, so a second lookup cannot rebind the name to an internal one. Refused:
loopback, private, link-local (169.254.0.0/16: cloud metadata), CGNAT (100.64.0.0/10),
multicast, unspecified and reserved addresses, IPv6 unique-local and link-local, and IPv4
hidden in IPv6 (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4, Teredo).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker.base import deadlines
from worker.base.errors import InvalidRequest
from worker.base.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The target is on a network webhooks may not reach."""


class Unresolved(Exception):
    """The target's name was not looked up in time."""


@dataclass(frozen=True)
class Target:
    """Where to connect (a checked address) and what to call the host (Host, TLS SNI)."""

    address: IPAddress
    host: str
    port: int


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


class Guard:
    """Decides which addresses webhooks may connect to."""

    def __init__(self, allowed_cidrs: list[str]) -> None:
        self.allowed = [ipaddress.ip_network(cidr, strict=False) for cidr in allowed_cidrs]

    @classmethod
    def of(cls, settings: Settings) -> Guard:
        """The guard of ``AGENTQ_WEBHOOK_ALLOWED_CIDRS`` (made once per list)."""
        return _guard(tuple(settings.webhook_allowed_cidrs))

    def check_address(self, address: IPAddress) -> None:
        """Raise Refused unless ``address`` is public or explicitly allowed."""
        if any(address in network for network in self.allowed):
            return
        if isinstance(address, ipaddress.IPv6Address):
            inner = _embedded_ipv4(address)
            if inner is not None:
                self.check_address(inner)
                return
        if not address.is_global or address.is_multicast:
            raise Refused(f"{address} is not a public address (loopback, private, link-local, "
                          "or reserved); allow it with AGENTQ_WEBHOOK_ALLOWED_CIDRS")

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is a literal address that may not be reached."""
        try:
            host = urlsplit(url).hostname or ""
            host.encode("idna")  # each label 1 to 63 characters, as DNS can carry it
        except (ValueError, UnicodeError):
            raise Refused(f"{url!r} is not a usable URL") from None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: checked when it is resolved, at every delivery
        self.check_address(address)

    def resolve(self, url: str, *, timeout_s: float | None = None) -> Target:
        """Resolve the URL's host once (given up after ``timeout_s``, or what is left of the
        request's deadline: ``Unresolved``) and check every address it has."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # a port out of range, a malformed IPv6 literal
            raise Refused(f"{url!r} is not a usable URL") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise Refused(f"{url!r} is not an http(s) URL")
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            pass
        else:  # no lookup
            self.check_address(literal)
            return Target(address=literal, host=parts.hostname, port=port)
        try:
            infos = deadlines.lookup(parts.hostname, port, timeout=timeout_s)
        except TimeoutError as error:
            raise Unresolved(str(error)) from None
        except (socket.gaierror, UnicodeError) as error:  # UnicodeError: a label too long
            raise Refused(f"cannot resolve {parts.hostname!r}: {error}") from None
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            self.check_address(address)
        return Target(address=addresses[0], host=parts.hostname, port=port)


def refuse_internal(url: str, *, guard: Guard, field: str) -> None:
    """Refuse a URL that names an internal address outright (names are checked at send)."""
    try:
        guard.check_url(url)
    except Refused as refused:
        raise InvalidRequest(f"{field} points at an internal network",
                             [{"field": field, "message": str(refused)}]) from None


@functools.cache
def _guard(allowed_cidrs: tuple[str, ...]) -> Guard:
    return Guard(list(allowed_cidrs))
