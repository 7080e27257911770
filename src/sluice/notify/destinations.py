"""Where unprivileged users may send notifications (webhook, syslog).

A user's destination is a connection the server makes for them: without a bound, a user
could make it reach what only the server reaches (its own API on loopback, a cloud metadata
service on a link-local address, ports of internal hosts). Every address the destination's
name resolves to is checked, when the user saves it and again before each delivery (a name
may resolve elsewhere later). Administrators' destinations are not checked.

An address is refused when it lies in a ``deny`` network (by default loopback, link-local,
unspecified and multicast), or the port is one of the server's own, unless an ``allow``
network holds it; with ``allow`` networks set, an address outside all of them is refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import DEFAULT_DENY

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DestinationRefused(ValueError):
    """The destination is not allowed for this user; the message says which address and why,
    and that an administrator may allow it."""


@dataclass(frozen=True)
class DestinationPolicy:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_DENY)
    own_ports: frozenset[int] = frozenset()

    @classmethod
    def of(cls, allow: Iterable[str], deny: Iterable[str], own_ports: Iterable[int] = ()) -> DestinationPolicy:
        return cls(
            tuple(ipaddress.ip_network(n, strict=False) for n in allow),
            tuple(ipaddress.ip_network(n, strict=False) for n in deny),
            frozenset(own_ports),
        )

    def check(self, host: str, port: int) -> None:
        """Raise ``DestinationRefused`` unless every address ``host`` resolves to may be used. A
        name that does not resolve (now) passes: there is nothing to connect to, and the
        delivery, which checks again, fails and is retried."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            allowed = any(address in net for net in self.allow)
            if allowed:
                continue
            if self.allow:
                raise DestinationRefused(
                    f"{host} ({address}) is not among the destinations an administrator allows "
                    "([notify] destinations_allow)"
                )
            if any(address in net for net in self.deny):
                raise DestinationRefused(
                    f"{host} ({address}) is a loopback, link-local or otherwise reserved address, refused for "
                    "notifications; an administrator may allow it ([notify] destinations_allow)"
                )
            if port in self.own_ports:
                raise DestinationRefused(
                    f"{host}:{port}: port {port} is one of this server's own, refused for notifications; "
                    "an administrator may allow the address ([notify] destinations_allow)"
                )

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DestinationRefused(f"{url}: a webhook is an http:// or https:// URL with a host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise DestinationRefused(f"{url}: the port is not a number from 1 to 65535") from None
        self.check(parts.hostname, port)
