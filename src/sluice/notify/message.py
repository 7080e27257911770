"""What a notification says, rendered for each channel: mail (plain and HTML), syslog
(RFC 5424, RFC 3164, CEF) and webhook JSON.

The content is a snapshot of the alert record taken when the notification was written, so a
retry days later still tells what happened then. Every user-typed string (the definition's
title, user names) passes through ``one_line`` before it reaches a header, a syslog field or
a CEF extension: no line breaks, no control characters.
"""

from __future__ import annotations

import html
import re
from typing import Any

from .. import __version__
from ..alerts.records import CREATED, AlertOut
from ..state.preferences import FACILITIES

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

#: syslog severity of each alert severity (issue 6): INFO 6 … CRITICAL 2
SYSLOG_SEVERITY = {"INFO": 6, "LOW": 5, "MEDIUM": 4, "HIGH": 3, "CRITICAL": 2}
#: CEF severity (0-10)
CEF_SEVERITY = {"INFO": 1, "LOW": 3, "MEDIUM": 5, "HIGH": 8, "CRITICAL": 10}
#: the structured-data id of RFC 5424 messages (32473 is the IANA example enterprise number)
SD_ID = "sluice@32473"
#: a notice told again because its alert is still triggering (re-notify interval)
REPEAT = "repeat"


def one_line(text: object) -> str:
    """A value safe for one header or field: control characters (CR, LF, tabs) become spaces."""
    return _CONTROL.sub(" ", str(text)).strip()


class Notice(AlertOut):
    """One alert, as a notification tells of it: the record's view and what changed."""

    change: str = CREATED  # created, retriggered, updated, repeat, acknowledged, deleted, cleared, test
    link: str = ""

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Notice:
        return cls.model_validate(payload)  # fields it does not know (older payloads) are ignored

    def payload(self) -> dict[str, Any]:
        return self.model_dump()

    def fields(self) -> list[tuple[str, str]]:
        """Every field of the alert record, labelled, for mail bodies."""
        return [
            ("Alert", self.title),
            ("Message", self.message),
            ("Severity", self.severity),
            ("Entity", f"{self.entity_type} {self.entity}"),
            ("COUNT (v1)", str(self.v1)),
            ("Threshold (v2)", str(self.v2)),
            ("Value", str(self.value)),
            ("State", self.state),
            ("First trigger", self.first_trigger_at.isoformat(timespec="microseconds")),
            ("Last trigger", self.last_trigger_at.isoformat(timespec="microseconds")),
            ("ID", str(self.id)),
            ("ALERTDEF", str(self.alertdef)),
            ("Type", self.type),
            ("User", self.user),
        ]


# -- e-mail -------------------------------------------------------------------------------


def mail_subject(notice: Notice) -> str:
    return one_line(f"[Sluice] {notice.severity}: {notice.message}")


def mail_text(notice: Notice) -> str:
    width = max(len(key) for key, _ in notice.fields())
    lines = [f"{key.ljust(width)}  {one_line(value)}" for key, value in notice.fields()]
    lead = {
        "retriggered": "An acknowledged alert triggered again.",
        "cleared": "The condition of this system alert has ended.",
        "repeat": "This alert is still triggering.",
        "test": "This is a test: your Sluice e-mail notifications work.",
    }.get(notice.change, "A new alert.")
    link = f"\nDashboard: {notice.link}\n" if notice.link else ""
    return f"{lead}\n\n" + "\n".join(lines) + f"\n{link}\n-- \nSluice {__version__}\n"


def mail_html(notice: Notice) -> str:
    rows = "".join(
        f"<tr><th align=left>{html.escape(key)}</th><td>{html.escape(one_line(value))}</td></tr>"
        for key, value in notice.fields()
    )
    link = f'<p><a href="{html.escape(notice.link)}">Open the dashboard</a></p>' if notice.link else ""
    return (
        f"<!doctype html><html><body><h2>{html.escape(one_line(notice.message))}</h2>"
        f"<table cellpadding=4>{rows}</table>{link}<p>Sluice {html.escape(__version__)}</p></body></html>"
    )


def digest_subject(notices: list[Notice]) -> str:
    top = max(notices, key=lambda notice: list(SYSLOG_SEVERITY).index(notice.severity))
    return one_line(f"[Sluice] {top.severity}: {len(notices)} alerts")


def digest_text(notices: list[Notice]) -> str:
    parts = [f"{len(notices)} alerts:\n"]
    for notice in notices:
        parts.append(
            f"- {notice.severity} {one_line(notice.message)} (ID={notice.id} ALERTDEF={notice.alertdef} "
            f"v1={notice.v1} v2={notice.v2}, last {notice.last_trigger_at.isoformat(timespec='seconds')})"
        )
    link = notices[0].link
    return "\n".join(parts) + (f"\n\nDashboard: {link}\n" if link else "\n")


# -- syslog -------------------------------------------------------------------------------


def _pri(facility: str, severity: str) -> int:
    return FACILITIES.index(facility) * 8 + SYSLOG_SEVERITY[severity]


def _sd_value(value: object) -> str:
    """RFC 5424 §6.3.3: escape '"', '\\' and ']' in PARAM-VALUE."""
    return one_line(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _ascii_name(text: str, limit: int) -> str:
    """A header token: printable US-ASCII without spaces (RFC 5424 HOSTNAME/APP-NAME)."""
    return (re.sub(r"[^!-~]", "-", text) or "-")[:limit]


def syslog_rfc5424(notice: Notice, facility: str, hostname: str) -> bytes:
    params = {
        "id": notice.id,
        "alertdef": notice.alertdef,
        "severity": notice.severity,
        "entityType": notice.entity_type,
        "entity": notice.entity,
        "v1": notice.v1,
        "v2": notice.v2,
        "value": notice.value,
        "state": notice.state,
        "user": notice.user,
        "type": notice.type,
        "title": notice.title,
        "change": notice.change,
    }
    sd = "[" + SD_ID + "".join(f' {key}="{_sd_value(value)}"' for key, value in params.items()) + "]"
    ts = notice.last_trigger_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{_pri(facility, notice.severity)}>1 {ts} {_ascii_name(hostname, 255)} sluice - ALERT "
    # the header is US-ASCII; PARAM-VALUEs and the MSG are UTF-8 (RFC 5424 §6.3.3, §6.4)
    return header.encode("ascii", "replace") + f"{sd} ".encode() + one_line(notice.message).encode()


def syslog_rfc3164(notice: Notice, facility: str, hostname: str) -> bytes:
    """Strict RFC 3164: ``<PRI>Mmm dd hh:mm:ss HOST TAG: CONTENT``, ASCII, at most 1024 bytes."""
    when = notice.last_trigger_at
    stamp = f"{when:%b} {when.day:2d} {when:%H:%M:%S}"
    host = _ascii_name(hostname.split(".")[0], 64)
    content = (
        f"{one_line(notice.message)} ID={notice.id} ALERTDEF={notice.alertdef} severity={notice.severity} "
        f"state={notice.state} user={one_line(notice.user)} v1={notice.v1} v2={notice.v2}"
    )
    line = f"<{_pri(facility, notice.severity)}>{stamp} {host} sluice: {content}"
    return line.encode("ascii", "replace")[:1024]


def _cef_header(value: object) -> str:
    return one_line(value).replace("\\", "\\\\").replace("|", "\\|")


def _cef_ext(value: object) -> str:
    return one_line(value).replace("\\", "\\\\").replace("=", "\\=")


def syslog_cef(notice: Notice, facility: str, hostname: str) -> bytes:
    """ArcSight CEF in an RFC 3164 envelope, as SIEMs expect it."""
    ext = {
        "rt": notice.last_trigger_us // 1000,
        "cnt": notice.v1,
        "cn1": notice.v2,
        "cn1Label": "threshold",
        "cn2": notice.value,
        "cn2Label": "value",
        "cs1": notice.entity,
        "cs1Label": notice.entity_type,
        "cs2": notice.state,
        "cs2Label": "state",
        "cs3": notice.title,
        "cs3Label": "title",
        "suser": notice.user,
        "externalId": notice.id,
    }
    cef = (
        f"CEF:0|Sluice|Sluice|{_cef_header(__version__)}|{notice.alertdef}|{_cef_header(notice.message)}|"
        f"{CEF_SEVERITY[notice.severity]}|" + " ".join(f"{key}={_cef_ext(value)}" for key, value in ext.items())
    )
    when = notice.last_trigger_at
    host = _ascii_name(hostname.split(".")[0], 64)
    return f"<{_pri(facility, notice.severity)}>{when:%b} {when.day:2d} {when:%H:%M:%S} {host} sluice: {cef}".encode()


SYSLOG_FORMATS = {"rfc5424": syslog_rfc5424, "rfc3164": syslog_rfc3164, "cef": syslog_cef}


# -- webhook ------------------------------------------------------------------------------


def webhook_body(notice: Notice) -> dict[str, Any]:
    return {"event": f"alert.{notice.change}", "alert": notice.payload()}
