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

    change: str = CREATED  # created, retriggered, updated, repeat, acknowledged, deleted, test
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


def mail_subject(n: Notice) -> str:
    return one_line(f"[Sluice] {n.severity}: {n.message}")


def mail_text(n: Notice) -> str:
    width = max(len(k) for k, _ in n.fields())
    lines = [f"{k.ljust(width)}  {one_line(v)}" for k, v in n.fields()]
    lead = {
        "retriggered": "An acknowledged alert triggered again.",
        "repeat": "This alert is still triggering.",
        "test": "This is a test: your Sluice e-mail notifications work.",
    }.get(n.change, "A new alert.")
    link = f"\nDashboard: {n.link}\n" if n.link else ""
    return f"{lead}\n\n" + "\n".join(lines) + f"\n{link}\n-- \nSluice {__version__}\n"


def mail_html(n: Notice) -> str:
    rows = "".join(
        f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(one_line(v))}</td></tr>" for k, v in n.fields()
    )
    link = f'<p><a href="{html.escape(n.link)}">Open the dashboard</a></p>' if n.link else ""
    return (
        f"<!doctype html><html><body><h2>{html.escape(one_line(n.message))}</h2>"
        f"<table cellpadding=4>{rows}</table>{link}<p>Sluice {html.escape(__version__)}</p></body></html>"
    )


def digest_subject(notices: list[Notice]) -> str:
    top = max(notices, key=lambda n: list(SYSLOG_SEVERITY).index(n.severity))
    return one_line(f"[Sluice] {top.severity}: {len(notices)} alerts")


def digest_text(notices: list[Notice]) -> str:
    parts = [f"{len(notices)} alerts:\n"]
    for n in notices:
        parts.append(
            f"- {n.severity} {one_line(n.message)} (ID={n.id} ALERTDEF={n.alertdef} "
            f"v1={n.v1} v2={n.v2}, last {n.last_trigger_at.isoformat(timespec='seconds')})"
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


def syslog_rfc5424(n: Notice, facility: str, hostname: str) -> bytes:
    params = {
        "id": n.id,
        "alertdef": n.alertdef,
        "severity": n.severity,
        "entityType": n.entity_type,
        "entity": n.entity,
        "v1": n.v1,
        "v2": n.v2,
        "value": n.value,
        "state": n.state,
        "user": n.user,
        "type": n.type,
        "title": n.title,
        "change": n.change,
    }
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    ts = n.last_trigger_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{_pri(facility, n.severity)}>1 {ts} {_ascii_name(hostname, 255)} sluice - ALERT {sd} "
    return header.encode("ascii", "replace") + one_line(n.message).encode("utf-8")


def syslog_rfc3164(n: Notice, facility: str, hostname: str) -> bytes:
    """Strict RFC 3164: ``<PRI>Mmm dd hh:mm:ss HOST TAG: CONTENT``, ASCII, at most 1024 bytes."""
    t = n.last_trigger_at
    stamp = f"{t:%b} {t.day:2d} {t:%H:%M:%S}"
    host = _ascii_name(hostname.split(".")[0], 64)
    content = (
        f"{one_line(n.message)} ID={n.id} ALERTDEF={n.alertdef} severity={n.severity} "
        f"state={n.state} user={one_line(n.user)} v1={n.v1} v2={n.v2}"
    )
    line = f"<{_pri(facility, n.severity)}>{stamp} {host} sluice: {content}"
    return line.encode("ascii", "replace")[:1024]


def _cef_header(value: object) -> str:
    return one_line(value).replace("\\", "\\\\").replace("|", "\\|")


def _cef_ext(value: object) -> str:
    return one_line(value).replace("\\", "\\\\").replace("=", "\\=")


def syslog_cef(n: Notice, facility: str, hostname: str) -> bytes:
    """ArcSight CEF in an RFC 3164 envelope, as SIEMs expect it."""
    ext = {
        "rt": n.last_trigger_us // 1000,
        "cnt": n.v1,
        "cn1": n.v2,
        "cn1Label": "threshold",
        "cn2": n.value,
        "cn2Label": "value",
        "cs1": n.entity,
        "cs1Label": n.entity_type,
        "cs2": n.state,
        "cs2Label": "state",
        "cs3": n.title,
        "cs3Label": "title",
        "suser": n.user,
        "externalId": n.id,
    }
    cef = (
        f"CEF:0|Sluice|Sluice|{_cef_header(__version__)}|{n.alertdef}|{_cef_header(n.message)}|"
        f"{CEF_SEVERITY[n.severity]}|" + " ".join(f"{k}={_cef_ext(v)}" for k, v in ext.items())
    )
    t = n.last_trigger_at
    host = _ascii_name(hostname.split(".")[0], 64)
    return f"<{_pri(facility, n.severity)}>{t:%b} {t.day:2d} {t:%H:%M:%S} {host} sluice: {cef}".encode()


SYSLOG_FORMATS = {"rfc5424": syslog_rfc5424, "rfc3164": syslog_rfc3164, "cef": syslog_cef}


# -- webhook ------------------------------------------------------------------------------


def webhook_body(n: Notice) -> dict[str, Any]:
    return {"event": f"alert.{n.change}", "alert": n.payload()}
