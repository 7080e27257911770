"""Syslog to the user's collector (SIEM): RFC 5424 (default), RFC 3164 or CEF, over UDP or
TCP with octet-counting framing (RFC 6587)."""

from __future__ import annotations

import socket
from typing import Optional

from ..state.models import SystemSettings, UserPreferences
from .channel import DeliveryError
from .destinations import DestinationPolicy
from .message import SYSLOG_FORMATS, Notice

TIMEOUT_S = 5.0


class SyslogChannel:
    name = "syslog"

    def __init__(self, hostname: Optional[str] = None):
        self.hostname = hostname or socket.gethostname()

    def destination(self, prefs: Optional[UserPreferences], system: SystemSettings) -> Optional[str]:
        if prefs is None or not prefs.syslog_host:
            return None
        return f"{prefs.syslog_transport}://{prefs.syslog_host}:{prefs.syslog_port}"

    def check(self, prefs: UserPreferences, policy: DestinationPolicy) -> None:
        policy.check(prefs.syslog_host, prefs.syslog_port)

    def deliver(self, notices: list[Notice], prefs: UserPreferences, system: SystemSettings) -> None:
        fmt = SYSLOG_FORMATS[prefs.syslog_format]
        lines = [fmt(notice, prefs.syslog_facility, self.hostname) for notice in notices]
        target = (prefs.syslog_host, prefs.syslog_port)
        try:
            infos = socket.getaddrinfo(
                *target, type=socket.SOCK_DGRAM if prefs.syslog_transport == "udp" else socket.SOCK_STREAM
            )
            family, kind, proto, _, address = infos[0]
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(TIMEOUT_S)
                if prefs.syslog_transport == "udp":
                    for line in lines:
                        sock.sendto(line, address)
                else:
                    sock.connect(address)
                    sock.sendall(b"".join(b"%d %s" % (len(line), line) for line in lines))
        except OSError as exc:
            raise DeliveryError(
                f"syslog {prefs.syslog_transport}://{prefs.syslog_host}:{prefs.syslog_port}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
