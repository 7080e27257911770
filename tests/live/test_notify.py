"""Notifications against real servers: aiosmtpd (plain, STARTTLS, implicit TLS, AUTH) and
rsyslogd (UDP, TCP; RFC 5424, RFC 3164, CEF; every facility), the outbox's retries,
backoff, give-up, re-notify limit and digests, and header injection."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sluice.alerts.definition import DefinitionIn, EntityType
from sluice.alerts.engine import AlertEvent
from sluice.alerts.records import AlertStore
from sluice.counters import Counters
from sluice.notify.email import EmailChannel
from sluice.notify.message import Notice, syslog_cef, syslog_rfc3164, syslog_rfc5424
from sluice.notify.outbox import DEAD, DELIVERED, PENDING, Outbox
from sluice.notify.syslog import SyslogChannel
from sluice.notify.webhook import WebhookChannel
from sluice.notify.worker import DeliveryWorker
from sluice.state.db import open_state
from sluice.state.models import NotificationRow
from sluice.state.preferences import FACILITIES, Preferences, PreferencesIn, SystemSettingsIn
from sluice.state.users import Users
from sluice.config import DEFAULT_DENY
from sluice.notify.destinations import DestinationPolicy, DestinationRefused

from ..support.interop import free_tcp_port
from ..support.notifyhelp import Rsyslog, SmtpServer, self_signed
from ..support.waiting import wait_until

LOOPBACK_OK = DestinationPolicy.of(["127.0.0.0/8"], DEFAULT_DENY)
HOSTILE = 'evil\r\nBcc: victim@example.org\r\n\r\n<script>"]\\|=x'


class World:
    """A state database with one user, alert records, the outbox and its channels."""

    def __init__(self, tmp_path, tls_context=None, backoff_first_s=0.2, dead_after_s=3600.0, state_url=None,
                 policy=None):
        self.db = open_state(tmp_path / "state", state_url)
        self.users = Users(self.db)
        self.alice = self.users.create("alice", "alice-password")
        self.prefs = Preferences(self.db)
        self.alerts = AlertStore(self.db)
        self.email = EmailChannel(tls_context)
        self.syslog = SyslogChannel(hostname="sluice-test.example.org")
        self.webhook = WebhookChannel()
        self.outbox = Outbox(self.db, [self.email, self.syslog, self.webhook], link="http://sluice.example.org:9640/",
                             dead_after_s=dead_after_s, backoff_first_s=backoff_first_s)
        self.alerts.on_change.append(self.outbox.on_change)
        self.alerts.after_commit.append(self.outbox.committed)
        self.counters = Counters()
        # the test's collectors listen on loopback, which an administrator allows here (by
        # default unprivileged users' destinations may not be loopback addresses)
        self.workers = {ch.name: DeliveryWorker(self.outbox, ch, self.counters, poll_s=0.1, policy=policy or LOOPBACK_OK)
                        for ch in (self.email, self.syslog, self.webhook)}
        # the API refuses control characters in titles; this one goes straight into the
        # database, to show the channels defuse what might get there anyway
        self.definition = self.alerts.create(self.alice.id, DefinitionIn(
            title="x", metric="bytes_sent", entity="host", threshold=1000, severity="HIGH"))
        from sluice.state.models import AlertDefinitionRow

        with self.db.session() as s:
            s.get(AlertDefinitionRow, self.definition.id).title = f"Exfiltration {HOSTILE}"

    def smtp(self, port: int, security: str = "none", username: str = "", password: str = "",
             host: str = "127.0.0.1") -> None:
        self.prefs.set_system(SystemSettingsIn(smtp_host=host, smtp_port=port, smtp_security=security,
                                               smtp_username=username, smtp_password=password,
                                               smtp_from="sluice@example.org"))

    def user_prefs(self, **kw) -> None:
        self.prefs.set_user(self.alice.id, PreferencesIn(**kw))

    def trigger(self, entity: str = "10.0.0.1", count: int = 3, severity: str = "HIGH") -> list[tuple[int, str]]:
        return self.alerts.apply([AlertEvent(self.definition.id, self.alice.id, EntityType.HOST, entity,
                                             f"Upper threshold exceeded on bytes sent for address {entity}.", severity,
                                             count, 1000, 5000, int(time.time() * 1_000_000))])

    def notifications(self) -> list[NotificationRow]:
        return self.outbox.listing(None, None)


# -- e-mail ----------------------------------------------------------------------------------

def test_alert_mail_carries_every_field_in_plain_and_html(tmp_path):
    w = World(tmp_path)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        w.user_prefs(email_to="alice@example.org")
        [(rid, _)] = w.trigger()
        assert w.workers["email"].run_once() == 1
        [msg] = smtp.wait_for(1)
    finally:
        smtp.stop()
    alert = w.alerts.alert(rid)
    assert msg["Subject"] == f"[Sluice] HIGH: {alert.message}"
    assert msg["From"] == "sluice@example.org" and msg["To"] == "alice@example.org"
    assert smtp.recipients == [["alice@example.org"]]
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    fields = {line.split("  ", 1)[0]: line.split("  ", 1)[1].strip() for line in text.splitlines() if "  " in line}
    assert fields["Message"] == alert.message and fields["Severity"] == "HIGH"
    assert fields["Entity"] == "host 10.0.0.1" and fields["ID"] == str(rid) and fields["COUNT (v1)"] == str(alert.v1)
    assert fields["Threshold (v2)"] == "1000" and fields["Value"] == "5000" and fields["State"] == "NOT-ACKNOWLEDGED"
    assert fields["User"] == "alice" and fields["Type"] == "ANALYTICAL"
    assert fields["First trigger"] == alert.first_trigger and fields["Last trigger"] == alert.last_trigger
    assert "Dashboard: http://sluice.example.org:9640/" in text
    assert "Exfiltration evil Bcc: victim@example.org" in text  # the title, defused to one line
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert [n.state for n in w.notifications()] == [DELIVERED]


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_mail_over_starttls_and_implicit_tls_with_auth(tmp_path, mode):
    certs = self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(certs[0]))
    w = World(tmp_path, tls_context=ctx)
    smtp = SmtpServer(mode, credentials=("sluice", "s3cret"), certs=certs).start()
    try:
        w.smtp(smtp.port, security=mode, username="sluice", password="s3cret", host="localhost")
        w.user_prefs(email_to="alice@example.org")
        w.trigger()
        w.workers["email"].run_once()
        [msg] = smtp.wait_for(1)
        assert smtp.auth_attempts == [("sluice", "s3cret")]
        assert msg["Subject"].startswith("[Sluice] HIGH: ")
        # a wrong password: the SMTP error is kept, the mail retried later
        w.smtp(smtp.port, security=mode, username="sluice", password="wrong", host="localhost")
        w.trigger("10.0.0.2")
        w.workers["email"].run_once()
        failed = [n for n in w.notifications() if n.state == PENDING]
        assert len(failed) == 1 and failed[0].attempts == 1 and "535" in failed[0].last_error
    finally:
        smtp.stop()


def test_no_auth_without_credentials_even_when_offered(tmp_path):
    w = World(tmp_path)
    smtp = SmtpServer(credentials=("sluice", "s3cret")).start()
    try:
        w.smtp(smtp.port)
        w.user_prefs(email_to="alice@example.org")
        w.trigger()
        w.workers["email"].run_once()
        assert len(smtp.wait_for(1)) == 1
        assert smtp.auth_attempts == []  # never an empty AUTH
    finally:
        smtp.stop()


def test_smtp_down_for_a_while_then_delivered_once(tmp_path, state_url):
    w = World(tmp_path, backoff_first_s=1.5, state_url=state_url)  # long enough that the next round is surely early
    port = free_tcp_port()
    w.smtp(port)
    w.user_prefs(email_to="alice@example.org")
    w.trigger()
    w.workers["email"].run_once()
    [n] = w.notifications()
    assert n.state == PENDING and n.attempts == 1 and "Connection refused" in n.last_error
    w.workers["email"].run_once()  # not due yet: backoff
    assert w.notifications()[0].attempts == 1
    smtp = SmtpServer(port=port).start()
    try:
        worker = w.workers["email"]
        worker.start()
        assert len(smtp.wait_for(1)) == 1
        time.sleep(0.5)
        worker.stop()
        assert len(smtp.messages) == 1  # exactly once
        assert w.notifications()[0].state == DELIVERED
    finally:
        smtp.stop()


def test_undeliverable_notifications_die_with_their_last_error(tmp_path, state_url):
    # Attempts at about 0, 0.1, 0.3, 0.7 and 1.5 s, then dead. dead_after_s leaves room for a
    # late first attempt on a loaded machine (at 0.5 s, a first attempt 0.4 s late was the only one).
    w = World(tmp_path, backoff_first_s=0.1, dead_after_s=2.0, state_url=state_url)
    w.smtp(free_tcp_port())
    w.user_prefs(email_to="alice@example.org")
    w.trigger()
    deadline = time.time() + 20
    while time.time() < deadline and w.notifications()[0].state != DEAD:
        w.workers["email"].run_once()
        time.sleep(0.05)
    [n] = w.notifications()
    assert n.state == DEAD and n.attempts >= 2 and "Connection refused" in n.last_error
    assert w.counters.get("notification_failures_total", channel="email") == n.attempts


def test_repeats_are_limited_to_one_per_renotify_interval(tmp_path, state_url):
    w = World(tmp_path, state_url=state_url)
    w.smtp(free_tcp_port())
    w.user_prefs(email_to="alice@example.org")
    w.trigger()
    for _ in range(5):
        w.trigger()  # still triggering: counted, not notified again
    assert [n.change for n in w.notifications()] == ["created"]
    with w.db.session() as s:  # shorter than the API allows (1 minute), to keep the test short
        from sluice.state.models import AlertDefinitionRow

        s.get(AlertDefinitionRow, w.definition.id).renotify_s = 1
    time.sleep(1.1)
    w.trigger()
    w.trigger()
    assert sorted(n.change for n in w.notifications()) == ["created", "repeat"]
    # acknowledged, then triggered again: always told
    w.alerts.acknowledge([w.alerts.alerts(w.alice.id)[0].id], "alice", 1)
    w.trigger()
    assert sorted(n.change for n in w.notifications()) == ["created", "repeat", "retriggered"]


def test_a_ten_second_window_repeats_at_most_once_a_minute_by_default(tmp_path, state_url):
    from sluice.state.models import AlertDefinitionRow, AlertRecordRow

    w = World(tmp_path, state_url=state_url)
    w.smtp(free_tcp_port())
    w.user_prefs(email_to="alice@example.org")
    with w.db.session() as s:
        s.get(AlertDefinitionRow, w.definition.id).interval = "10s"
    w.trigger()

    def as_if_notified_ago(seconds: float) -> None:
        with w.db.session() as s:
            for row in s.query(AlertRecordRow):
                row.last_notified_us = int((time.time() - seconds) * 1e6)

    as_if_notified_ago(15)  # more than the window, less than a minute: not yet
    w.trigger()
    assert [n.change for n in w.notifications()] == ["created"]
    as_if_notified_ago(61)
    w.trigger()
    assert sorted(n.change for n in w.notifications()) == ["created", "repeat"]


def test_a_system_alert_mails_the_administrators_when_raised_and_when_it_ends(tmp_path, state_url):
    from sluice.alerts.system import SystemWatch
    from sluice.config import AlertSettings

    w = World(tmp_path, state_url=state_url)
    root = w.users.create("root", "root-password", is_admin=True)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        w.prefs.set_user(root.id, PreferencesIn(email_to="root@example.org"))
        w.user_prefs(email_to="alice@example.org")  # not an administrator: not told
        counters = Counters()
        watch = SystemWatch(counters, w.alerts, AlertSettings(system_clear_after_s=0), lambda: {})
        counters.set("socket_drops", 0, port=2055)
        watch.check()
        counters.set("socket_drops", 40, port=2055)
        watch.check()
        watch.check()  # no more drops: the condition ended
        w.workers["email"].run_once()
        raised, ended = smtp.wait_for(2)
        assert [raised["To"], ended["To"]] == ["root@example.org"] * 2
        assert raised["Subject"].startswith("[Sluice] HIGH: The kernel dropped 40 datagrams on UDP port 2055")
        assert ended["Subject"].startswith("[Sluice] HIGH: Ended: The kernel dropped 40 datagrams")
        body = ended.get_body(("plain",)).get_content()
        assert body.startswith("The condition of this system alert has ended.") and "SYSTEM" in body
    finally:
        smtp.stop()


def test_a_digest_when_many_alerts_are_due_at_once(tmp_path, state_url):
    w = World(tmp_path, state_url=state_url)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        w.user_prefs(email_to="alice@example.org", email_digest=True)
        for i in range(4):
            w.trigger(f"10.0.0.{i + 1}", severity=["LOW", "HIGH", "MEDIUM", "INFO"][i])
        w.workers["email"].run_once()
        [msg] = smtp.wait_for(1)
        assert msg["Subject"] == "[Sluice] HIGH: 4 alerts"
        body = msg.get_content()
        assert all(f"address 10.0.0.{i}." in body for i in range(1, 5))
        assert {n.state for n in w.notifications()} == {DELIVERED}
    finally:
        smtp.stop()


def test_several_workers_sharing_the_database_deliver_each_notification_once(tmp_path, state_url):
    """Four delivery workers on the same channel, each with its own outbox and node name (as
    the nodes of a cluster sharing one PostgreSQL): 120 notifications are claimed, never by two,
    and each reaches the SMTP server exactly once."""
    import threading

    w = World(tmp_path, state_url=state_url)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        w.user_prefs(email_to="alice@example.org")
        entities = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(120)]
        for entity in entities:
            w.trigger(entity)
        outboxes = [Outbox(w.db, [w.email], node=f"node-{k}") for k in range(4)]
        workers = [DeliveryWorker(outbox, w.email, Counters(), poll_s=0.05) for outbox in outboxes]
        claims: list[list[int]] = [[] for _ in workers]
        for k, outbox in enumerate(outboxes):  # record what each one claims
            real_due = outbox.due

            def due(channel, limit=200, real_due=real_due, k=k):
                items = real_due(channel, limit=7)  # small claims: many rounds, many chances to collide
                claims[k].extend(item.id for item in items)
                return items

            outbox.due = due
        start = threading.Barrier(len(workers))
        threads = [threading.Thread(target=lambda wk=wk: (start.wait(), [wk.run_once() for _ in range(40)]))
                   for wk in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        msgs = smtp.wait_for(len(entities), timeout=30)
        time.sleep(0.5)
        subjects = [m["Subject"] for m in smtp.messages]
        assert len(subjects) == len(entities) and len(set(subjects)) == len(entities)  # each once
        assert sorted(m["Subject"].rsplit(" ", 1)[1].rstrip(".") for m in msgs) == sorted(entities)
        claimed = [i for per_worker in claims for i in per_worker]
        assert len(claimed) == len(set(claimed)) == len(entities)  # no notification claimed twice
        assert sum(1 for per_worker in claims if per_worker) >= 2  # the work was shared
        assert {n.state for n in w.notifications()} == {DELIVERED}
    finally:
        smtp.stop()


def test_a_claim_outlives_its_dead_worker_only_until_its_node_restarts_or_its_lease_ends(tmp_path, state_url):
    """A worker killed after claiming: another node leaves the notification alone (it may be
    being delivered), the same node restarted takes it back at once, and after the lease anyone
    may take it."""
    from sluice.notify import outbox as outbox_module
    from sluice.state.models import NotificationRow

    w = World(tmp_path, state_url=state_url)
    w.smtp(free_tcp_port())
    w.user_prefs(email_to="alice@example.org")
    w.trigger()
    dead = Outbox(w.db, [w.email], node="node-a")
    [taken] = dead.due("email")  # ... and the process dies before delivering
    assert Outbox(w.db, [w.email], node="node-b").due("email") == []
    assert Outbox(w.db, [w.email], node="node-_").due("email") == []  # "_" is no wildcard: not node-a
    restarted = Outbox(w.db, [w.email], node="node-a")
    assert [d.id for d in restarted.due("email")] == [taken.id]
    with w.db.session() as s:  # the restarted node dies too; its lease runs out
        s.get(NotificationRow, taken.id).claimed_until_us = outbox_module.now_us() - 1
    assert [d.id for d in Outbox(w.db, [w.email], node="node-b").due("email")] == [taken.id]


def test_blank_smtp_host_to_address_or_syslog_host_turns_the_channel_off(tmp_path):
    w = World(tmp_path)
    w.user_prefs(email_to="alice@example.org")  # no SMTP host yet: off for everyone
    w.trigger("10.0.0.1")
    w.smtp(25)
    w.user_prefs(email_to="", syslog_host="")  # blank To: and syslog host: both off for alice
    w.trigger("10.0.0.2")
    assert w.notifications() == []
    w.user_prefs(email_to="", syslog_host="127.0.0.1")
    w.trigger("10.0.0.3")
    assert [n.channel for n in w.notifications()] == ["syslog"]


def test_header_injection_is_impossible(tmp_path):
    w = World(tmp_path)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        w.user_prefs(email_to="alice@example.org")
        # an entity text that no decoder would produce, straight into the records
        w.trigger(entity="10.0.0.1\r\nBcc: victim@example.org")
        w.workers["email"].run_once()
        [msg] = smtp.wait_for(1)
        assert smtp.recipients == [["alice@example.org"]]
        assert msg["Bcc"] is None and "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
        assert set(msg.keys()) >= {"From", "To", "Subject", "Date", "Message-ID"}
        assert "Bcc" not in msg.keys()
    finally:
        smtp.stop()
    # the API refuses control characters in every string that reaches a header
    with pytest.raises(ValueError):
        PreferencesIn(email_to="a@example.org\r\nBcc: b@example.org")
    with pytest.raises(ValueError):
        SystemSettingsIn(smtp_from="a@example.org\nBcc: b@example.org", smtp_host="mail.example.org")


# -- syslog ----------------------------------------------------------------------------------

def notice(**kw) -> Notice:
    base = dict(id=11, alertdef=1, title=f"Title {HOSTILE}", user="alertuser", entity_type="host", entity="10.1.2.3",
                severity="MEDIUM", message="Upper threshold exceeded on sessions initiated for address 10.1.2.3.",
                state="NOT-ACKNOWLEDGED", v1=17, v2=10, value=27, first_trigger_us=1_334_109_423_569_706,
                last_trigger_us=1_334_109_423_569_706)
    return Notice(**{**base, **kw})


def test_syslog_formats_are_well_formed():
    n = notice()
    rfc5424 = syslog_rfc5424(n, "local3", "sluice.example.org").decode()
    m = re.fullmatch(r'<(\d+)>1 (\S+) (\S+) sluice - ALERT (\[.*\]) (.*)', rfc5424)
    assert m and m.group(1) == str(19 * 8 + 4) and m.group(2) == "2012-04-11T01:57:03.569706Z"
    assert 'title="Title evil Bcc: victim@example.org <script>\\"\\]\\\\|=x"' in m.group(4)
    assert m.group(5) == n.message and "\n" not in rfc5424
    # the hardening review: "Zürich" arrived as "Z?rich"; PARAM-VALUEs are UTF-8
    zurich = syslog_rfc5424(notice(title="Traffic to Zürich – 東京", user="josé"), "local3", "h").decode("utf-8")
    assert 'title="Traffic to Zürich – 東京"' in zurich and 'user="josé"' in zurich
    rfc3164 = syslog_rfc3164(n, "kern", "sluice.example.org").decode()
    assert re.fullmatch(r"<4>Apr 11 01:57:03 sluice sluice: .+ ID=11 ALERTDEF=1 severity=MEDIUM "
                        r"state=NOT-ACKNOWLEDGED user=alertuser v1=17 v2=10", rfc3164)
    cef = syslog_cef(n, "local0", "h").decode()
    assert "|1|Upper threshold exceeded on sessions initiated for address 10.1.2.3.|5|" in cef
    assert "cs3=Title evil Bcc: victim@example.org <script>\"]\\\\|\\=x" in cef and "\n" not in cef


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"))
    yield server
    server.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("fmt", ["rfc5424", "rfc3164", "cef"])
def test_rsyslog_receives_every_format_over_udp_and_tcp(tmp_path, rsyslog, fmt, transport):
    w = World(tmp_path)
    port = rsyslog.udp_port if transport == "udp" else rsyslog.tcp_port
    before = len(rsyslog.lines(0, timeout=0))
    w.user_prefs(syslog_host="127.0.0.1", syslog_port=port, syslog_facility="local4", syslog_format=fmt,
                 syslog_transport=transport)
    [(rid, _)] = w.trigger(entity=f"10.9.{len(fmt)}.{port % 250}", severity="CRITICAL")
    w.workers["syslog"].run_once()
    rows = rsyslog.lines(before + 1)
    assert len(rows) == before + 1
    got = rows[-1]
    alert = w.alerts.alert(rid)
    assert got["facility"] == "local4" and got["severity"] == "2" and got["pri"] == str(20 * 8 + 2)
    assert got["app"] == "sluice"
    msg = got["msg"].strip()
    if fmt == "rfc5424":
        assert got["msgid"] == "ALERT" and msg == alert.message
        sd = got["sd"]
        for k, v in {"id": alert.id, "alertdef": alert.alertdef, "severity": "CRITICAL", "entity": alert.entity,
                     "v1": alert.v1, "v2": alert.v2, "state": alert.state, "user": "alice"}.items():
            assert f'{k}="{v}"' in sd, (k, sd)
    elif fmt == "rfc3164":
        assert msg == (f"{alert.message} ID={alert.id} ALERTDEF={alert.alertdef} severity=CRITICAL "
                       f"state=NOT-ACKNOWLEDGED user=alice v1={alert.v1} v2={alert.v2}")
    else:
        assert msg.startswith("CEF:0|Sluice|Sluice|") and f"|{alert.alertdef}|{alert.message}|10|" in msg
        assert f"cnt={alert.v1}" in msg and f"cn1={alert.v2}" in msg and f"cs1={alert.entity}" in msg
    assert [n.state for n in w.notifications()] == [DELIVERED]


def test_rsyslog_sees_every_facility(tmp_path, rsyslog):
    channel = SyslogChannel(hostname="h")
    before = len(rsyslog.lines(0, timeout=0))
    w = World(tmp_path)
    for facility in FACILITIES:
        w.user_prefs(syslog_host="127.0.0.1", syslog_port=rsyslog.udp_port, syslog_facility=facility)
        prefs, system = w.outbox.context(w.alice.id)
        channel.deliver([notice(severity="LOW", entity=facility)], prefs, system)
    rows = rsyslog.lines(before + len(FACILITIES))[before:]
    got = {r["facility"] for r in rows}
    # rsyslog names facility 13 (audit) "audit"/"security" and 14 (alert) "alert"/"console" by version
    assert len(rows) == len(FACILITIES) and {r["severity"] for r in rows} == {"5"}
    assert sorted(int(r["pri"]) // 8 for r in rows) == list(range(24))
    assert {"kern", "user", "mail", "daemon", "local0", "local7"} <= got


def test_an_unreachable_syslog_collector_does_not_hold_up_mail(tmp_path):
    w = World(tmp_path, backoff_first_s=60)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        w.user_prefs(email_to="alice@example.org", syslog_host="127.0.0.1", syslog_port=free_tcp_port(),
                     syslog_transport="tcp")
        for worker in w.workers.values():
            worker.start()
        for i in range(3):
            w.trigger(f"10.0.0.{i + 1}")
        assert len(smtp.wait_for(3)) == 3
        # the mails are accepted before their rows are marked delivered: wait for the marks
        wait_until(lambda: {(n.channel, n.state, n.attempts > 0) for n in w.notifications()},
                   lambda states: states == {("email", DELIVERED, False), ("syslog", PENDING, True)},
                   what="mail delivered and syslog tried")
        assert all("Connection refused" in n.last_error for n in w.notifications() if n.channel == "syslog")
    finally:
        for worker in w.workers.values():
            worker.stop()
        smtp.stop()


# -- webhook ---------------------------------------------------------------------------------

def test_webhook_posts_signed_json(tmp_path):
    received: list[tuple[dict, bytes]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):  # quiet
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        w = World(tmp_path)
        w.user_prefs(webhook_url=f"http://127.0.0.1:{httpd.server_port}/hook", webhook_secret="k3y")
        [(rid, _)] = w.trigger()
        w.workers["webhook"].run_once()
    finally:
        httpd.shutdown()
    [(headers, body)] = received
    assert headers["X-Sluice-Signature"] == "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    doc = json.loads(body)
    assert doc["event"] == "alert.created" and doc["alert"]["id"] == rid and doc["alert"]["v2"] == 1000


# -- destinations of unprivileged users ------------------------------------------------------

def test_an_unprivileged_users_loopback_destinations_are_refused_and_an_administrators_are_not(tmp_path):
    """A webhook to the server's own API, or syslog to a loopback port, made the server connect
    where only it may: refused for unprivileged users (the notification is given up, saying
    why), delivered for an administrator."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(3)
    w = World(tmp_path, policy=DestinationPolicy())
    w.user_prefs(email_to="", syslog_host="127.0.0.1", syslog_port=listener.getsockname()[1])
    w.trigger()
    w.workers["syslog"].run_once()
    [row] = w.notifications()
    assert row.state == "dead" and row.last_error.startswith("destination refused: 127.0.0.1 (127.0.0.1) is a loopback")
    assert w.counters.get("notifications_refused_total") == 1
    w.users.set_admin("alice", True)
    w.trigger(entity="10.0.0.2")
    w.workers["syslog"].run_once()
    assert b"10.0.0.2" in listener.recv(65536)  # an administrator's destination is theirs to choose
    listener.close()


def test_the_destination_policy():
    policy = DestinationPolicy.of([], DEFAULT_DENY, own_ports=[9640, 2055])
    for host, port in (("127.0.0.1", 514), ("localhost", 80), ("169.254.169.254", 80), ("::1", 514),
                       ("0.0.0.0", 80), ("192.0.2.7", 9640)):
        with pytest.raises(DestinationRefused):
            policy.check(host, port)
    policy.check("192.0.2.7", 514)  # an ordinary address and port
    policy.check("no-such-host.invalid", 514)  # nothing to connect to: the delivery fails and retries
    with pytest.raises(DestinationRefused, match="http:// or https://"):
        policy.check_url("file:///etc/passwd")
    with pytest.raises(DestinationRefused, match="loopback"):
        policy.check_url("http://[::ffff:127.0.0.1]:8080/x")  # an IPv4 address in IPv6 clothing
    allowed = DestinationPolicy.of(["10.0.0.0/8", "127.0.0.1"], DEFAULT_DENY)
    allowed.check("127.0.0.1", 514) and allowed.check("10.1.2.3", 514)
    with pytest.raises(DestinationRefused, match="not among the destinations"):
        allowed.check("192.0.2.7", 514)


def test_a_webhooks_error_response_is_not_shown_to_the_user(tmp_path):
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal-secret-token-123")

        def log_message(self, *a):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        w = World(tmp_path)
        w.user_prefs(webhook_url=f"http://127.0.0.1:{httpd.server_port}/hook")
        w.trigger()
        w.workers["webhook"].run_once()
    finally:
        httpd.shutdown()
    [row] = w.notifications()
    assert row.last_error.endswith("HTTP 500") and "secret" not in row.last_error


def test_test_mails_are_limited_per_user(tmp_path):
    from sluice.notify.service import TEST_MAILS, NotifyService

    w = World(tmp_path)
    smtp = SmtpServer().start()
    try:
        w.smtp(smtp.port)
        service = NotifyService(w.db, w.alerts, Counters())
        results = [service.test_mail(w.prefs.system(), "victim@example.org", w.alice.id) for _ in range(TEST_MAILS + 2)]
        assert [r.sent for r in results] == [True] * TEST_MAILS + [False, False]
        assert "at most 3 test mails in 10 minutes" in results[-1].error
        assert len(smtp.wait_for(TEST_MAILS)) == TEST_MAILS
        assert service.test_mail(w.prefs.system(), "me@example.org", w.alice.id + 1).sent  # another user's own
    finally:
        smtp.stop()
