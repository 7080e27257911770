"""The web page in a real browser: Debian's chromium driven by Playwright against a live
``sluice serve`` fed by exporter traffic (``sluice simulate`` and softflowd).

Screenshots of each page are taken into a temporary directory; ``make screenshots`` runs
this file with ``SLUICE_SCREENSHOTS=docs/screenshots`` to refresh the ones the README shows
(tests never write into the checkout).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from ..support.env import require_tool
from ..support.notifyhelp import SmtpServer
from ..support.pcapgen import scan_pcap
from ..support.server import ADMIN, SLUICE
from ..support.exporters import export

SHOTS = Path(os.environ.get("SLUICE_SCREENSHOTS") or tempfile.mkdtemp(prefix="sluice-shots-"))
OPERATOR = ("operator", "operator-password")


@pytest.fixture(scope="module")
def browser():
    chromium = require_tool("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def login(page: Page, base: str, who: tuple[str, str]) -> None:
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_label("User name").fill(who[0])
    page.get_by_label("Password").fill(who[1])
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who")).to_contain_text(who[0])


def shot(page: Page, name: str) -> None:
    """Save a screenshot for the docs, after checking the page's accessibility basics and
    that no dashboard widget shows an error (a screenshot must show a working page)."""
    assert_accessible(page)
    failing = page.locator("section.widget .body .error")
    assert failing.count() == 0, [failing.nth(i).inner_text() for i in range(failing.count())]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def assert_accessible(page: Page) -> None:
    """Every control has an accessible name, every button text or a label, images of charts
    a description, and the page a language and a main landmark."""
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                     && !e.getAttribute('aria-labelledby') && !(e.tagName === 'BUTTON' && e.textContent.trim()))
        .map(e => e.outerHTML.slice(0, 80))""")
    assert unnamed == [], unnamed
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.locator("main").count() == 1
    charts = page.evaluate("[...document.querySelectorAll('.chart')].filter(e => !e.getAttribute('aria-label')).length")
    assert charts == 0


def scan(tmp_path, netflow: int, target: str, name: str) -> None:
    work = tmp_path / name
    work.mkdir()
    scan_pcap(work / "t.pcap", target, 60, time.time() - 5)
    export(work, "softflowd", "9", netflow)


def widget(page: Page, title: str):
    return page.locator("section.widget").filter(has=page.get_by_role("heading", name=title, exact=True))


def test_the_dashboard_in_a_real_browser(server, browser, tmp_path):
    ports, _ = server
    base = f"http://127.0.0.1:{ports['http']}"
    sim = subprocess.Popen([SLUICE, "simulate", "--netflow-port", str(ports["netflow"]), "--ipfix-port",
                            str(ports["ipfix"]), "--sflow-port", str(ports["sflow"]), "--duration", "4", "--rate", "300"])
    smtp = SmtpServer().start()
    api = httpx.Client(base_url=base, auth=ADMIN, timeout=10)
    try:
        api.post("/api/v1/users", json={"username": OPERATOR[0], "password": OPERATOR[1]}).raise_for_status()
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        errors: list[str] = []  # any script error on any page fails the test
        context.on("page", lambda p: p.on("pageerror", lambda e: errors.append(str(e))))
        # a script or style the Content-Security-Policy refuses is an error of the page
        context.on("page", lambda p: p.on("console", lambda m: errors.append(m.text)
                                          if "Content Security Policy" in m.text else None))
        page = context.new_page()
        login(page, base, ADMIN)
        expect(page.locator("#who")).to_contain_text("administrator")
        shot(page, "login-done")

        # two Alerts widgets with different minimum severities
        for title, severity in [("Urgent", "HIGH"), ("Everything", "INFO")]:
            page.get_by_label("Add a widget").select_option("alerts")
            page.get_by_role("button", name="Add", exact=True).click()
            new = page.locator('section.widget[data-type="alerts"]').last
            new.get_by_label("Title").fill(title)
            new.get_by_label("Title").press("Enter")  # change event: saved
            expect(widget(page, title)).to_have_count(1)
            widget(page, title).get_by_label("Minimum severity").select_option(severity)
            expect(widget(page, title).get_by_label("Minimum severity")).to_have_value(severity)
        page.evaluate("window.__noReload = true")
        expect(page.locator("#stream-state")).to_have_text("Live")

        # alerts from exporter traffic: a LOW one and a HIGH one
        for name, sev, target in [("low scan", "LOW", "10.9.0.10"), ("high scan", "HIGH", "10.9.0.11")]:
            api.post("/api/v1/alert-definitions", json={
                "title": name, "metric": "unique_ports", "entity": "host", "threshold": 50, "interval": "5m",
                "severity": sev, "prefilter": f"SRVIP == {target}"}).raise_for_status()
        scan(tmp_path, ports["netflow"], "10.9.0.10", "low")
        scan(tmp_path, ports["netflow"], "10.9.0.11", "high")
        urgent, everything = widget(page, "Urgent"), widget(page, "Everything")
        expect(urgent.locator("tr[data-alert]")).to_have_count(2, timeout=20_000)  # scanner + 10.9.0.11
        expect(everything.locator("tr[data-alert]")).to_have_count(4, timeout=20_000)
        expect(urgent.locator("tr[data-alert]")).to_contain_text(["HIGH", "HIGH"])
        expect(urgent).not_to_contain_text("10.9.0.10")
        expect(everything).to_contain_text("10.9.0.10")
        assert page.evaluate("window.__noReload") is True  # it all came live, no reload
        expect(everything.locator(".alerts-count")).to_have_text("4 alerts, 4 not acknowledged")
        shot(page, "dashboard")

        # acknowledge from the widget
        row = urgent.locator("tr[data-alert]").filter(has_text="10.9.0.11")
        alert_id = int(row.get_attribute("data-alert"))
        row.get_by_role("button", name=f"Acknowledge alert {alert_id}").click()
        # the state cell exactly: "NOT-ACKNOWLEDGED" contains "ACKNOWLEDGED" and passed before the click landed
        expect(row.locator("td.state")).to_have_text("ACKNOWLEDGED")
        states = {a["id"]: a["state"] for a in api.get("/api/v1/alerts").json()}
        assert states[alert_id] == "ACKNOWLEDGED"

        # an empty row's menu: from the keyboard, and with a right-click, schedules a new alert;
        # a live update in between redraws the table and must leave the keyboard focus in place
        everything.locator("tr.empty").first.focus()
        other = everything.locator("tr[data-alert]").filter(has_text="10.9.0.10").first
        other_id = int(other.get_attribute("data-alert"))
        api.post("/api/v1/alerts/acknowledge", json={"ids": [other_id]}).raise_for_status()
        expect(other.locator("td.state")).to_have_text("ACKNOWLEDGED")  # came over the live stream: redrawn
        page.keyboard.press("Enter")
        expect(page.get_by_role("menuitem", name="Schedule new alert…")).to_be_focused()
        page.keyboard.press("Escape")
        expect(page.locator("#menu")).to_be_hidden()
        everything.locator("tr.empty").first.click(button="right")
        page.get_by_role("menuitem", name="Schedule new alert…").click()
        expect(page).to_have_url(base + "/alerts/new")

        # a hundred more alerts scroll inside the widget instead of growing the page
        from sluice.alerts.definition import EntityType
        from sluice.alerts.engine import AlertEvent
        from sluice.alerts.records import AlertStore
        from sluice.state.db import open_state

        definition = next(d for d in api.get("/api/v1/alert-definitions").json() if d["title"] == "low scan")
        AlertStore(open_state(tmp_path / "var")).apply([
            AlertEvent(definition["id"], definition["user_id"], EntityType.HOST, f"10.77.0.{i}", f"Many {i}.", "LOW", 1, 50, 60,
                       int(time.time() * 1_000_000)) for i in range(100)])
        page.goto(base + "/")
        everything = widget(page, "Everything")
        expect(everything.locator(".alerts-count")).to_contain_text("104 alerts", timeout=20_000)
        assert everything.bounding_box()["height"] < 900  # it was 7,900 pixels with ~100
        state = everything.locator("td.state").first
        assert state.evaluate("e => e.scrollWidth <= e.clientWidth")  # NOT-ACKNOWLEDGED is not cut
        page.goto(base + "/alerts/new")

        # the editor: FlowTraq's sentence, the prefilter checked live
        page.get_by_label("Metric").select_option("sessions_initiated")
        page.get_by_label("Entity").select_option("host")
        page.get_by_label("Threshold", exact=True).fill("1000")
        page.get_by_label("Interval").select_option("30m")
        page.get_by_label("Severity").select_option("HIGH")
        page.get_by_label("Title").fill("Busy client")
        page.get_by_label("Prefilter").fill("SRVPORT ==")
        expect(page.locator("#prefilter-status")).to_contain_text("^")
        expect(page.get_by_label("Prefilter")).to_have_attribute("aria-invalid", "true")
        shot(page, "editor")
        page.get_by_label("Prefilter").fill("SRVPORT == 443 && PROTO == tcp")
        expect(page.locator("#prefilter-status")).to_contain_text("valid filter")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#editor-result")).to_contain_text("Saved: alert definition")
        busy = [d for d in api.get("/api/v1/alert-definitions").json() if d["title"] == "Busy client"]
        assert len(busy) == 1 and (busy[0]["metric"], busy[0]["threshold"], busy[0]["interval"], busy[0]["severity"],
                                   busy[0]["prefilter"]) == ("sessions_initiated", 1000, "30m", "HIGH",
                                                             "SRVPORT == 443 && PROTO == tcp")
        def new_definition(title: str, select: dict[str, str], fill: dict[str, str]) -> list[dict]:
            """Save a definition in the editor (its selects, then its fields); the API's view."""
            page.goto(base + "/alerts/new")
            for label, option in select.items():
                page.get_by_label(label, exact=True).select_option(option)
            for label, text in {**fill, "Title": title}.items():
                page.get_by_label(label, exact=True).fill(text)
            page.get_by_role("button", name="Save").click()
            expect(page.locator("#editor-result")).to_contain_text("Saved: alert definition")
            return [d for d in api.get("/api/v1/alert-definitions").json() if d["title"] == title]

        # a flood detector's sentence: a rate over a ten-second window
        flood = new_definition("Flood", {"Metric": "packets_received", "Threshold unit": "per second",
                                         "Interval": "10s"}, {"Threshold": "100000"})
        assert [(d["metric"], d["threshold"], d["per_second"], d["interval"]) for d in flood] == [
            ("packets_received", 100000, True, "10s")]
        page.goto(base + f"/alerts/{flood[0]['id']}/edit")
        expect(page.get_by_label("Threshold unit")).to_have_value("1")  # the editor reads it back
        # a lower threshold: watched servers that must keep answering
        dns = new_definition("DNS must answer", {"Metric": "sessions_received", "Threshold type": "falls below"},
                             {"Threshold": "1", "Watched entities (a threshold to fall below)": "10.1.0.53, 10.1.0.54"})
        expect(page.locator("#which-entities")).to_have_text("the watched")  # the sentence follows the type
        assert [(d["threshold_type"], d["watch"]) for d in dns] == [("lower", ["10.1.0.53", "10.1.0.54"])]
        page.goto(base + f"/alerts/{dns[0]['id']}/edit")
        expect(page.get_by_label("Watched entities")).to_have_value("10.1.0.53, 10.1.0.54")
        # a baseline: five times each host's usual bytes, at least 10 MB
        unusual = new_definition("Unusual senders", {"Threshold type": "baseline", "Interval": "1h"},
                                 {"Threshold": "5", "Baseline: at least": "10000000"})
        assert [(d["threshold_type"], d["threshold"], d["min_volume"], d["baseline_days"]) for d in unusual] == [
            ("baseline", 5, 10_000_000, 7)]
        page.goto(base + "/alerts")
        expect(page.locator("#definitions")).to_contain_text("Busy client")
        expect(page.locator("#definitions")).to_contain_text("per second over 10s")
        expect(page.locator("#definitions")).to_contain_text("host 10.1.0.53, 10.1.0.54 falls below 1 over")
        expect(page.locator("#definitions")).to_contain_text("exceeds 5 times its usual value")
        # each definition's window and what evaluating it has cost (the API's cpu_seconds)
        expect(page.locator("#definitions")).to_contain_text(re.compile(r"\d entities, [\d,]+ kB, [\d.,]+ s of CPU"))
        shot(page, "definitions")

        # preferences as the administrator: SMTP for everyone, a test mail on saving
        page.goto(base + "/preferences")
        expect(page.get_by_label("SMTP server")).to_be_enabled()
        page.get_by_label("SMTP server").fill("127.0.0.1")
        page.get_by_label("SMTP port").fill(str(smtp.port))
        page.get_by_label("From:").fill("sluice@example.org")
        page.get_by_label("To: (yours)").fill("admin@example.org")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#prefs-result")).to_contain_text("A test mail went to admin@example.org")
        assert [m["To"] for m in smtp.wait_for(1)] == ["admin@example.org"]
        page.get_by_role("tab", name="Syslog").click()
        expect(page.get_by_label("Facility")).to_be_visible()
        page.get_by_role("tab", name="E-mail").click()
        shot(page, "preferences-admin")

        # reports: choose, run, drill in; the view is in the URL
        page.goto(base + "/explore")
        page.get_by_label("Top").select_option("port")
        page.get_by_label("by").select_option("sessions")
        page.get_by_role("button", name="Run").click()
        expect(page).to_have_url(re.compile(r"entity=port&metric=sessions"))
        expect(page.locator("#report caption")).to_contain_text("Top ports by sessions")
        expect(page.locator("#report tbody tr").first).to_be_visible()
        page.locator("#report tbody a").first.click()
        expect(page.locator("#sessions tbody tr").first).to_be_visible()
        expect(page.locator("#sessions-title")).to_contain_text("SRVPORT ==")
        shot(page, "explore")
        page.goto(base + "/users")
        expect(page.locator("#users")).to_contain_text(OPERATOR[0])
        shot(page, "users")

        # preferences as a normal user: only their own To:; the server refuses SMTP changes
        other = browser.new_context(viewport={"width": 1280, "height": 800})
        other.on("page", lambda p: p.on("pageerror", lambda e: errors.append(str(e))))
        other.on("page", lambda p: p.on("console", lambda m: errors.append(m.text)
                                        if "Content Security Policy" in m.text else None))
        op = other.new_page()
        login(op, base, OPERATOR)
        expect(op.locator("#who")).not_to_contain_text("administrator")
        op.goto(base + "/preferences")
        expect(op.get_by_label("SMTP server")).to_be_disabled()
        expect(op.get_by_label("From:")).to_be_disabled()
        op.get_by_label("To: (yours)").fill("operator@example.org")
        op.get_by_role("button", name="Save").click()
        expect(op.locator("#prefs-result")).to_contain_text("A test mail went to operator@example.org")
        shot(op, "preferences-user")
        # API tokens: made (shown once), used, listed, revoked
        op.get_by_label("Name", exact=True).fill("nightly")
        op.get_by_label("Expires after (days)").fill("30")
        op.get_by_role("button", name="Make a token").click()
        token = op.locator("#token-value").inner_text()
        assert token.startswith("sl_")
        expect(op.locator("#tokens")).to_contain_text("nightly")
        bearer = {"Authorization": f"Bearer {token}"}
        assert op.request.get(base + "/api/v1/me", headers=bearer).json()["username"] == OPERATOR[0]
        op.get_by_role("button", name="Revoke nightly").click()
        expect(op.locator("#token-result")).to_contain_text("Revoked nightly.")
        expect(op.locator("#tokens")).to_contain_text("No tokens.")
        assert op.request.get(base + "/api/v1/me", headers=bearer).status == 401
        csrf = op.locator('meta[name="csrf-token"]').get_attribute("content")
        refused = op.request.put(base + "/api/v1/settings", data={"smtp_host": "evil.example.org"},
                                 headers={"X-CSRF-Token": csrf})
        assert refused.status == 403
        assert api.get("/api/v1/settings").json()["smtp_host"] == "127.0.0.1"
        assert op.request.get(base + "/users").status == 403  # the page says it is for administrators
        expect(op.goto(base + "/users") and op.locator("main")).to_contain_text("for administrators")
        other.close()
        context.close()
        assert errors == []
    finally:
        api.close()
        smtp.stop()
        sim.wait(30)



def test_an_answer_that_comes_late_does_not_replace_what_was_asked_for_after_it(server, browser):
    """Reports: the page's first report (top hosts) is answered after the one the user then
    asked for (top ports), and a drill-down's sessions after the next drill-down's. The page
    shows what was asked for last. (A slow first answer once replaced the ports with hosts,
    and a click meant for a port drilled into a host.)"""
    ports, _ = server
    base = f"http://127.0.0.1:{ports['http']}"
    subprocess.run([SLUICE, "simulate", "--netflow-port", str(ports["netflow"]), "--ipfix-port", str(ports["ipfix"]),
                    "--sflow-port", str(ports["sflow"]), "--duration", "2", "--rate", "300"], check=True, timeout=30)
    with httpx.Client(base_url=base, auth=ADMIN, timeout=10) as api:
        deadline = time.time() + 20
        while len(api.get("/api/v1/reports", params={"entity": "port", "metric": "sessions"}).json()) < 2:
            assert time.time() < deadline, "the simulated traffic never made two ports"
            time.sleep(0.3)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    login(page, base, ADMIN)
    held = []  # the requests whose answers are held back
    holding_for = ["/explore"]  # the page whose first request is held

    def hold_first(route):
        # A request of the page before (a dashboard widget's report, slow to leave on a busy
        # machine) is cancelled by the next navigation and never answered: not that one.
        if not held and urlsplit(route.request.headers.get("referer", "")).path == holding_for[0]:
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(r"/api/v1/reports\?"), hold_first)
    page.goto(base + "/explore")  # asks for the top hosts; held
    page.get_by_label("Top").select_option("port")
    page.get_by_label("by").select_option("sessions")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#report caption")).to_contain_text("Top ports by sessions")
    assert len(held) == 1 and "entity=host" in held[0].request.url
    with page.expect_response(re.compile(r"entity=host")):
        held.pop().continue_()
    page.wait_for_timeout(200)  # time for the late answer to be drawn, if it were
    expect(page.locator("#report caption")).to_contain_text("Top ports by sessions")
    links = page.locator("#report tbody a")
    assert links.count() >= 2 and all(links.nth(i).get_attribute("data-drill").startswith("SRVPORT ==")
                                       for i in range(links.count()))

    page.unroute(re.compile(r"/api/v1/reports\?"))
    page.route(re.compile(r"/api/v1/sessions\?"), hold_first)
    first, second = links.nth(0).get_attribute("data-drill"), links.nth(1).get_attribute("data-drill")
    links.nth(0).click()  # held
    links.nth(1).click()
    expect(page.locator("#sessions-title")).to_have_text(f"Sessions where {second}")
    assert len(held) == 1
    with page.expect_response(re.compile(r"/api/v1/sessions\?")):
        held.pop().continue_()
    page.wait_for_timeout(200)
    expect(page.locator("#sessions-title")).to_have_text(f"Sessions where {second}")
    assert first != second

    # the editor's check of a prefilter as it is typed: the verdict on "SRVPORT ==" comes late
    page.unroute(re.compile(r"/api/v1/sessions\?"))
    holding_for[0] = "/alerts/new"
    page.route(re.compile(r"/api/v1/filter/check\?"), hold_first)
    page.goto(base + "/alerts/new")
    page.get_by_label("Prefilter").fill("SRVPORT ==")
    page.wait_for_timeout(600)  # past the typing pause: its check is asked for, and held
    assert len(held) == 1
    page.get_by_label("Prefilter").fill("SRVPORT == 443")
    expect(page.locator("#prefilter-status")).to_contain_text("valid filter")
    with page.expect_response(re.compile(r"/api/v1/filter/check\?")):
        held.pop().continue_()
    page.wait_for_timeout(200)
    expect(page.locator("#prefilter-status")).to_contain_text("valid filter")
    expect(page.get_by_label("Prefilter")).to_have_attribute("aria-invalid", "false")
    context.close()


def test_an_overloaded_server_says_so_in_metrics_status_and_on_the_dashboard(browser, tmp_path):
    """Pushed past capacity (a flood far faster than it decodes, into a small socket buffer),
    the server sheds load: the kernel's drops are counted, the status and the dashboard say
    "overloaded" with the flows lost per second, and memory stays bounded."""
    import socket
    import threading

    import numpy as np

    from sluice.flows.schema import FlowBatch
    from sluice.simulate.encode import NetflowV5Encoder

    from ..support.interop import free_tcp_port, free_udp_port
    from ..support.server import metrics, start_server

    http, netflow = free_tcp_port(), free_udp_port()
    proc = start_server(tmp_path, http, netflow, SLUICE_COLLECT__RECEIVE_BUFFER_BYTES="65536")
    base = f"http://127.0.0.1:{http}"
    stop = threading.Event()
    try:
        rng, now_ms = np.random.default_rng(4), int(time.time() * 1000)
        n = 60_000
        addr = lambda ints: np.concatenate(  # noqa: E731
            [np.tile(np.array([0] * 10 + [255, 255], np.uint8), (n, 1)),
             ints.astype(">u4").view(np.uint8).reshape(-1, 4)], axis=1)
        flows = FlowBatch.build(n, src_addr=addr(0x0A010000 + rng.integers(0, 5000, n)),
                                dst_addr=addr(0x0A100000 + rng.integers(0, 60000, n)),
                                src_port=rng.integers(1024, 65536, n), dst_port=443, protocol=6, tcp_flags=0x1B,
                                bytes=1500, packets=6, time_start_ms=now_ms - 200, time_end_ms=now_ms)
        datagrams = NetflowV5Encoder().encode(flows, now_ms)

        def flood() -> None:  # as fast as this process sends, until the checks are done
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(("127.0.0.1", netflow))
                while not stop.is_set():
                    for d in datagrams:
                        sock.send(d)

        flooding = threading.Thread(target=flood, daemon=True)
        flooding.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            status = httpx.get(base + "/api/v1/status", auth=ADMIN, timeout=5).json()
            # overloaded, and some datagram read (until one is, the loss is told in datagrams)
            if status["overload"]["overloaded"] and status["overload"]["flows_lost_per_second"] > 0:
                break
            time.sleep(0.5)
        overload = status["overload"]
        assert overload["overloaded"] and overload["datagrams_dropped"] > 0, overload
        assert overload["flows_lost_per_second"] > 0 and "flows/s lost" in overload["message"]
        values = metrics(http)
        assert sum(v for k, v in values.items() if k.startswith("sluice_socket_drops")) > 0
        assert values["sluice_overloaded"] == 1 and values["sluice_flows_lost_per_second"] > 0
        assert status["flows"] > 0
        peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text()).group(1))
        assert peak_kb < 2 * 2**20, peak_kb  # the bound: 2 GiB

        page = browser.new_page()
        login(page, base, ADMIN)
        banner = page.locator("#overload")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text(re.compile(r"overloaded: about [\d,]+ flows/s lost"))
        expect(page.locator("section.widget[data-type=status]")).to_contain_text("flows/s lost")
        page.close()
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)


# -- the routes behind the page, without a browser ---------------------------------------------

def test_pages_send_strangers_to_the_login_page_and_layouts_are_per_user(tmp_path):
    from fastapi.testclient import TestClient

    from ..support.app import ADMIN as A, ALICE, BOB, make_app

    app, users, store = make_app(tmp_path)
    with TestClient(app) as c:
        for path in ["/", "/alerts", "/alerts/new", "/alerts/3/edit", "/explore?entity=port", "/preferences", "/users"]:
            r = c.get(path, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2F"), path
        assert c.get("/login").status_code == 200
        # after logging in, only a plain path of this site: the review's open redirects go home
        def after_login(target: str) -> str:
            page = c.get("/login", params={"next": target}).text
            return html.unescape(re.search(r'data-next="([^"]*)"', page).group(1))  # login.js goes there

        for hostile in ["//evil.example.org", "/\\127.0.0.1:18080/x", "/\t/evil.example.org/x",
                        "/\n/evil.example.org", "https://evil.example.org/", "javascript:alert(1)", "/ /x", ""]:
            assert after_login(hostile) == "/", hostile
        for fine in ["/alerts/3/edit", "/explore?entity=port&metric=bytes", "/preferences#smtp"]:
            assert after_login(fine) == fine
        assert c.get("/api/v1/dashboard").status_code == 401
        # each user has their own layout; the default until they save one
        default = c.get("/api/v1/dashboard", auth=ALICE).json()
        assert [w["type"] for w in default["widgets"]] == ["alerts", "traffic", "top", "status"]
        mine = {"widgets": [{"type": "alerts", "id": "urgent", "title": "Urgent", "min_severity": "HIGH"},
                            {"type": "top", "id": "ports", "entity": "port", "metric": "sessions", "frame": "-1h"}]}
        assert c.put("/api/v1/dashboard", json=mine, auth=ALICE).status_code == 200
        assert c.get("/api/v1/dashboard", auth=ALICE).json()["widgets"][0]["min_severity"] == "HIGH"
        assert c.get("/api/v1/dashboard", auth=BOB).json() == default
        bad = [{"widgets": [{"type": "clock", "id": "x"}]},
               {"widgets": [{"type": "alerts", "id": "a"}, {"type": "status", "id": "a"}]},
               {"widgets": [{"type": "alerts", "id": "<script>"}]},
               {"widgets": [{"type": "top", "id": "t", "frame": "yesterday"}]}]
        for layout in bad:
            assert c.put("/api/v1/dashboard", json=layout, auth=ALICE).status_code == 422, layout
        # the editor's live filter check
        ok = c.get("/api/v1/filter/check", params={"filter": "SRVPORT == 443"}, auth=A).json()
        assert ok == {"ok": True, "error": None, "position": None, "pointer": None}
        bad_filter = c.get("/api/v1/filter/check", params={"filter": "SRVPORT =="}, auth=A).json()
        assert bad_filter["ok"] is False and bad_filter["position"] == 11 and "^" in bad_filter["pointer"]
        # a page shows who is logged in, and whether they are an administrator
        assert 'id="who">alice<' in c.get("/", auth=ALICE).text
        assert "administrator</span>" in c.get("/", auth=A).text
    store.close()
