"""Notifications from a running ``sluice serve``: the test mail on saving preferences, the
dashboard stream with resume, a kill -9 between outbox write and delivery, and one alert
from exporter traffic to mail, syslog, stream and ``ns2hostsb -al`` alike."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time

import httpx

from sluice.alerts.records import AlertOut, alert_line

from ..support.exporters import export
from ..support.interop import free_tcp_port, free_udp_port
from ..support.notifyhelp import Rsyslog, SmtpServer
from ..support.pcapgen import scan_pcap
from ..support.server import ADMIN, ns2, start_server
from ..support.waiting import wait_until


def start(tmp_path, http: int, netflow: int, state_url: str | None = None) -> subprocess.Popen:
    env = {"SLUICE_STATE__URL": state_url} if state_url else {}
    # retries come round quickly; the test's collectors are on loopback, which an administrator allows
    return start_server(tmp_path, http, netflow, SLUICE_NOTIFY__POLL_S="0.2",
                        SLUICE_NOTIFY__DESTINATIONS_ALLOW='["127.0.0.0/8"]', **env)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def client(http: int, who=ADMIN) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=who, timeout=10)


def scan(tmp_path, netflow: int, name: str, target: str = "10.9.0.10", ports: int = 80) -> None:
    work = tmp_path / name
    work.mkdir()
    scan_pcap(work / "t.pcap", target, ports, time.time() - 5)
    export(work, "softflowd", "9", netflow)


class Stream:
    """An SSE client on its own thread, collecting (id, data) of ``alert`` events."""

    def __init__(self, http: int, who=ADMIN, last_event_id: str | None = None):
        self.events: list[tuple[int, dict]] = []
        self._stop = threading.Event()
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self._thread = threading.Thread(target=self._run, args=(http, who, headers), daemon=True)
        self.connected = threading.Event()
        self._thread.start()
        assert self.connected.wait(10)

    def _run(self, http: int, who, headers: dict) -> None:  # type: ignore[no-untyped-def]
        try:
            self._read(http, who, headers)
        except httpx.HTTPError:
            pass  # the server went away (stopped by the test): the stream simply ends

    def _read(self, http: int, who, headers: dict) -> None:  # type: ignore[no-untyped-def]
        with httpx.stream("GET", f"http://127.0.0.1:{http}/api/v1/alerts/stream", auth=who, headers=headers,
                          timeout=httpx.Timeout(10, read=None)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            event: dict[str, str] = {}
            for line in r.iter_lines():
                self.connected.set()
                if self._stop.is_set():
                    return
                if not line:
                    if event.get("event") == "alert":
                        self.events.append((int(event["id"]), json.loads(event["data"])))
                    event = {}
                    continue
                key, _, value = line.partition(": ")
                event[key] = value

    def close(self) -> None:
        self._stop.set()


def test_saving_preferences_sends_a_test_mail_and_reports_failure(tmp_path):
    http, netflow = free_tcp_port(), free_udp_port()
    smtp = SmtpServer().start()
    proc = start(tmp_path, http, netflow)
    try:
        with client(http) as c:
            r = c.put("/api/v1/settings", json={"smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                                                "smtp_from": "sluice@example.org"})
            assert r.status_code == 200 and r.json()["test_mail"] is None  # no To: of the admin's yet
            r = c.put("/api/v1/preferences", json={"email_to": "admin@example.org"})
            assert r.json()["test_mail"] == {"sent": True, "to": "admin@example.org", "error": None}
            [msg] = smtp.wait_for(1)
            assert msg["Subject"] == "[Sluice] INFO: Sluice test mail: e-mail notifications reach you."
            assert msg["To"] == "admin@example.org" and "test" in msg.get_body(("plain",)).get_content()
            smtp.stop()
            r = c.put("/api/v1/preferences", json={"email_to": "admin@example.org"})
            result = r.json()["test_mail"]
            assert r.status_code == 200 and result["sent"] is False and "Connection refused" in result["error"]
            # header injection through the API: refused with the reason
            r = c.put("/api/v1/preferences", json={"email_to": "a@example.org\r\nBcc: b@example.org"})
            assert r.status_code == 422 and "control characters" in r.text
    finally:
        stop(proc)
        smtp.stop()


def test_kill_9_between_outbox_write_and_delivery_delivers_once_after_restart(tmp_path, state_url):
    http, netflow, smtp_port = free_tcp_port(), free_udp_port(), free_tcp_port()
    proc = start(tmp_path, http, netflow, state_url)
    try:
        with client(http) as c:
            c.put("/api/v1/settings", json={"smtp_host": "127.0.0.1", "smtp_port": smtp_port,
                                            "smtp_from": "sluice@example.org"})
            c.put("/api/v1/preferences", json={"email_to": "admin@example.org"})  # SMTP is down: test mail fails
            c.post("/api/v1/alert-definitions", json={"title": "scan", "metric": "unique_ports", "entity": "host",
                                                      "threshold": 50, "interval": "5m", "severity": "HIGH"})
            scan(tmp_path, netflow, "a", ports=60)
            pending = wait_until(lambda: [n for n in c.get("/api/v1/notifications").json() if n["attempts"] >= 1],
                                 what="a failed delivery attempt")
            assert all(n["state"] == "pending" and "Connection refused" in n["last_error"] for n in pending)
            expected = len(c.get("/api/v1/notifications", params={"state": "pending"}).json())
            assert expected == 2  # the scanner and the target
    finally:
        proc.kill()  # kill -9: the notifications are written, not delivered
        proc.wait(10)
    smtp = SmtpServer(port=smtp_port).start()
    proc = start(tmp_path, http, netflow, state_url)
    try:
        msgs = smtp.wait_for(expected, timeout=40)
        assert len(msgs) == expected
        time.sleep(2.0)
        assert len(smtp.messages) == expected  # exactly once each
        assert sorted(m["Subject"] for m in msgs) == sorted(
            f"[Sluice] HIGH: Upper threshold exceeded on unique ports for address {a}." for a in ("10.5.0.66", "10.9.0.10"))
        with client(http) as c:
            states = {n["state"] for n in c.get("/api/v1/notifications").json()}
            assert states == {"delivered"}
        if state_url:  # the server kept them in PostgreSQL, not in a file of its own
            import sqlalchemy

            engine = sqlalchemy.create_engine(state_url)
            with engine.connect() as con:
                rows = con.execute(sqlalchemy.text("SELECT state, count(*) FROM notifications GROUP BY state")).all()
            engine.dispose()
            assert dict(rows)["delivered"] >= expected
            assert not (tmp_path / "var" / "state.db").exists()
    finally:
        stop(proc)
        smtp.stop()


def test_stream_resumes_from_the_last_event_id_without_gaps(tmp_path):
    http, netflow = free_tcp_port(), free_udp_port()
    proc = start(tmp_path, http, netflow)
    try:
        with client(http) as c:
            c.post("/api/v1/alert-definitions", json={"title": "scan", "metric": "unique_ports", "entity": "host",
                                                      "threshold": 50, "interval": "5m"})
            first = Stream(http)
            scan(tmp_path, netflow, "a", ports=60)
            wait_until(lambda: len(first.events) >= 2, what="two stream events")
            first.close()
            seen = list(first.events)
            last_id = seen[-1][0]
            alerts = c.get("/api/v1/alerts").json()
            assert {e["alert"]["entity"] for _, e in seen} == {a["entity"] for a in alerts}
            assert {e["change"] for _, e in seen} == {"created"}
            # while disconnected: acknowledge both, delete one
            c.post("/api/v1/alerts/acknowledge", json={"ids": [a["id"] for a in alerts]})
            c.delete(f"/api/v1/alerts/{alerts[0]['id']}")
            resumed = Stream(http, last_event_id=str(last_id))
            wait_until(lambda: len(resumed.events) >= 3, what="the missed events")
            time.sleep(0.5)
            resumed.close()
            changes = [(e["change"], e["alert"]["id"]) for _, e in resumed.events]
            assert sorted(changes) == sorted([("acknowledged", alerts[0]["id"]), ("acknowledged", alerts[1]["id"]),
                                              ("deleted", alerts[0]["id"])])
            ids = [i for i, _ in resumed.events]
            assert ids == sorted(ids) and ids[0] > last_id and len(set(ids)) == len(ids)
            # another user's stream carries none of it
            c.post("/api/v1/users", json={"username": "other", "password": "other-user-pw"})
            with httpx.stream("GET", f"http://127.0.0.1:{http}/api/v1/alerts/stream", params={"after": 0},
                              auth=("other", "other-user-pw"), timeout=httpx.Timeout(10, read=2)) as r:
                text = ""
                try:
                    for chunk in r.iter_text():
                        text += chunk
                except httpx.ReadTimeout:
                    pass
            assert "event: alert" not in text
    finally:
        stop(proc)


def test_one_alert_reaches_mail_syslog_stream_and_cli_alike(tmp_path):
    http, netflow = free_tcp_port(), free_udp_port()
    smtp = SmtpServer().start()
    syslog = Rsyslog(tmp_path)
    proc = start(tmp_path, http, netflow)
    try:
        with client(http) as c:
            c.put("/api/v1/settings", json={"smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                                            "smtp_from": "sluice@example.org"})
            c.post("/api/v1/users", json={"username": "alertuser", "password": "alertuser-pw"})
        who = ("alertuser", "alertuser-pw")
        with client(http, who) as me:
            assert me.put("/api/v1/preferences", json={
                "email_to": "alertuser@example.org", "syslog_host": "127.0.0.1", "syslog_port": syslog.udp_port,
                "syslog_facility": "local5", "syslog_format": "rfc5424"}).json()["test_mail"]["sent"]
            smtp.wait_for(1)  # the test mail
            d = me.post("/api/v1/alert-definitions", json={
                "title": "Scanners", "metric": "unique_ports", "entity": "host", "threshold": 50, "interval": "5m",
                "severity": "CRITICAL", "prefilter": "SRVIP == 10.9.0.10"}).json()
            stream = Stream(http, who)
            scan(tmp_path, netflow, "a", ports=70)
            mails = smtp.wait_for(3)
            lines = syslog.lines(2)
            wait_until(lambda: len(stream.events) >= 2, what="stream events")
            stream.close()
            alerts = {a["entity"]: a for a in me.get("/api/v1/alerts").json()}
        assert set(alerts) == {"10.5.0.66", "10.9.0.10"}
        cli = ns2("ns2hostsb", "-s", f"127.0.0.1:{http}", "-un", who[0], "-up", who[1], "-al", "-at", "-5m")
        cli_lines = cli.stdout.splitlines()
        for entity, a in alerts.items():
            assert alert_line(AlertOut(**a)) in cli_lines
            mail = next(m for m in mails[1:] if entity + "." in m["Subject"])
            assert mail["Subject"] == f"[Sluice] CRITICAL: {a['message']}"
            body = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
            for label, value in [("ID", a["id"]), ("ALERTDEF", d["id"]), ("Threshold (v2)", 50), ("Alert", "Scanners"),
                                 ("User", "alertuser"), ("Severity", "CRITICAL")]:
                assert re.search(rf"^{re.escape(label)}\s+{re.escape(str(value))}$", body, re.M), (label, body)
            line = next(r for r in lines if f'entity="{entity}"' in r["sd"])
            assert line["facility"] == "local5" and line["severity"] == "2" and line["msg"].strip() == a["message"]
            assert f'id="{a["id"]}"' in line["sd"] and f'alertdef="{d["id"]}"' in line["sd"] and 'v2="50"' in line["sd"]
            event = next(e for _, e in stream.events if e["alert"]["entity"] == entity)
            assert (event["change"], event["alert"]["id"], event["alert"]["alertdef"], event["alert"]["v2"]) == (
                "created", a["id"], d["id"], 50)
            assert event["alert"]["message"] == a["message"]
    finally:
        stop(proc)
        syslog.stop()
        smtp.stop()


def test_the_server_stops_promptly_with_a_stream_open(tmp_path):
    http, netflow = free_tcp_port(), free_udp_port()
    proc = start(tmp_path, http, netflow)
    stream = Stream(http)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(20) == 0
    finally:
        stream.close()
        if proc.poll() is None:
            proc.kill()
    assert time.time() - t0 < 15
