"""SYSTEM alerts: the server about itself, raised for every administrator while a condition
holds and cleared when it ends; with the real counters and state database, and end to end
with softflowd stopping mid-run."""

from __future__ import annotations

import re
import time

import httpx

from sluice.alerts.records import CLEARED, CREATED, RETRIGGERED, UPDATED, AlertStore, alert_line
from sluice.alerts.system import SystemWatch
from sluice.config import AlertSettings
from sluice.counters import Counters
from sluice.state.db import open_state
from sluice.state.users import Users

from ..support.exporters import export
from ..support.interop import free_tcp_port, free_udp_port
from ..support.pcapgen import standard_conversations, write_pcap
from ..support.server import ADMIN, ns2, start_server
from ..support.waiting import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def watch_of(tmp_path, state_url, failed: dict):
    db = open_state(tmp_path, state_url)
    users = Users(db)
    admins = [users.create("root1", "root1-password", is_admin=True), users.create("root2", "root2-password",
                                                                                   is_admin=True)]
    users.create("alice", "alice-password")
    store = AlertStore(db)
    seen: list[tuple[str, str, str]] = []  # (user, entity, change) as the notification outbox hears them
    names = {a.id: a.username for a in admins}
    store.on_change.append(lambda s, row, change: seen.append((names.get(row.user_id, "?"), row.entity, change)))
    counters, clock = Counters(), Clock()
    watch = SystemWatch(counters, store, AlertSettings(exporter_silent_s=60, exporter_loss_percent=1.0,
                                                                 system_clear_after_s=0), lambda: failed,
                        clock)
    return watch, store, counters, clock, seen, db


def test_each_condition_raises_a_record_per_administrator_and_clears_when_it_ends(tmp_path, state_url):
    failed: dict[int, tuple[str, str]] = {}
    watch, store, counters, clock, seen, db = watch_of(tmp_path, state_url, failed)
    exporter = dict(exporter="192.0.2.1", proto="netflow5")
    counters.set("exporter_last_datagram_seconds", clock.now - 10, **exporter)
    counters.set("socket_drops", 0, port=2055)
    counters.set("flows_total", 1000, **exporter)
    assert watch.check() == []  # the first check: nothing holds, and the counters' start is noted

    # everything goes wrong at once
    clock.now += 100  # silent for 110 s
    counters.set("socket_drops", 50, port=2055)
    counters.inc("sequence_gaps_total", 5, **exporter)
    counters.inc("flows_total", 95, **exporter)  # 5 of 100 lost: 5 %
    counters.set("store_write_errors_total", 3)
    counters.set("notifications", 2, channel="email", state="dead")
    failed[7] = ("exfil", "evaluation failed (ValueError: boom)")
    changes = watch.check()
    entities = {"exporter 192.0.2.1 netflow5 silent", "exporter 192.0.2.1 netflow5 loss", "socket 2055 drops",
                "store writes failed", "notifications email dead", "alert definition 7 failed"}
    assert {(user, entity) for user, entity, change in seen if change == CREATED} == {
        (user, entity) for user in ("root1", "root2") for entity in entities}  # administrators only
    assert len(changes) == 12
    rows = {r.entity: r for r in store.alerts(user_id=1)}
    silent = rows["exporter 192.0.2.1 netflow5 silent"]
    assert (silent.type, silent.alertdef, silent.title, silent.severity, silent.v1, silent.v2, silent.value) == (
        "SYSTEM", 0, "System", "HIGH", 1, 60, 110)
    assert silent.message == "Exporter 192.0.2.1 has sent no netflow5 datagram for 110 s (more than 60 s)."
    assert rows["store writes failed"].severity == "CRITICAL" and rows["socket 2055 drops"].value == 50
    assert "lost 5.0 % of its netflow5 flows (5 by its sequence numbers)" in rows["exporter 192.0.2.1 netflow5 loss"].message
    assert "Alert definition 7 (exfil) is not being evaluated: evaluation failed" in rows["alert definition 7 failed"].message
    line = alert_line(silent)
    assert re.search(r'  0 HIGH "Exporter 192.0.2.1 has sent no .*" ID=\d+ type=SYSTEM state=NOT-ACKNOWLEDGED '
                     r'user=root1 v1=1 v2=60$', line), line

    # still silent and the definition still failed: counted up; the rest ended: cleared
    seen.clear()
    clock.now += 10
    counters.inc("flows_total", 100, **exporter)
    watch.check()
    assert {(entity, change) for user, entity, change in seen if user == "root1"} == {
        ("exporter 192.0.2.1 netflow5 silent", UPDATED), ("alert definition 7 failed", UPDATED),
        ("exporter 192.0.2.1 netflow5 loss", CLEARED), ("socket 2055 drops", CLEARED),
        ("store writes failed", CLEARED), ("notifications email dead", CLEARED)}
    rows = {r.entity: r for r in store.alerts(user_id=1)}
    assert rows["exporter 192.0.2.1 netflow5 silent"].v1 == 2 and rows["exporter 192.0.2.1 netflow5 silent"].cleared_us is None
    drops = rows["socket 2055 drops"]
    assert drops.cleared_us == int(clock.now * 1e6) and drops.message.startswith("Ended: The kernel dropped 50")

    # a restarted server knows what is raised; it has not heard from the exporter yet, so it
    # cannot say the silence ended; the fixed definition has ended
    seen.clear()
    failed.clear()
    clock.now += 10
    restarted = SystemWatch(Counters(), store, AlertSettings(exporter_silent_s=60, system_clear_after_s=0), lambda: failed, clock)
    restarted.check()
    assert {(entity, change) for user, entity, change in seen if user == "root1"} == {
        ("alert definition 7 failed", CLEARED)}
    # the exporter is back
    seen.clear()
    counters.set("exporter_last_datagram_seconds", clock.now, **exporter)
    clock.now += 10
    again = SystemWatch(counters, store, AlertSettings(exporter_silent_s=60, system_clear_after_s=0), lambda: failed, clock)
    again.check()
    assert {(entity, change) for user, entity, change in seen if user == "root1"} == {
        ("exporter 192.0.2.1 netflow5 silent", CLEARED)}
    assert store.active_system() == set()

    # the kernel drops again: the cleared record is raised again, not made anew
    seen.clear()
    counters.set("socket_drops", 80, port=2055)
    clock.now += 10
    again.check()
    assert {(entity, change) for user, entity, change in seen} == {("socket 2055 drops", RETRIGGERED)}
    drops = {r.entity: r for r in store.alerts(user_id=1)}["socket 2055 drops"]
    assert (drops.cleared_us, drops.v1, drops.value, drops.state) == (None, 2, 30, "NOT-ACKNOWLEDGED")


def test_a_condition_that_comes_and_goes_stays_one_raised_record_until_it_has_not_held_for_the_wait(
        tmp_path, state_url):
    """Drops every other check: one record counted up, not cleared and raised again (on every
    channel) at each check; cleared once no check has found it for ``system_clear_after_s``,
    a restarted server waiting as long."""
    watch, store, counters, clock, seen, db = watch_of(tmp_path, state_url, {})
    watch.settings = AlertSettings(system_clear_after_s=60)
    dropped = 0
    counters.set("socket_drops", dropped, port=2055)
    watch.check()
    for _ in range(3):  # drops, then a check without, three times
        clock.now += 10
        dropped += 25
        counters.set("socket_drops", dropped, port=2055)
        watch.check()
        clock.now += 10
        watch.check()
    changes = [change for user, entity, change in seen if user == "root1"]
    assert changes == [CREATED, UPDATED, UPDATED]
    rows = {r.entity: r for r in store.alerts(user_id=1)}
    assert (rows["socket 2055 drops"].v1, rows["socket 2055 drops"].cleared_us) == (3, None)
    clock.now += 40  # 50 s since it last held
    watch.check()
    assert store.active_system() == {"socket 2055 drops"}
    clock.now += 10  # 60 s
    watch.check()
    assert [change for user, entity, change in seen if user == "root1"][3:] == [CLEARED]
    assert store.active_system() == set()

    # raised again, then the server restarts: the new watch waits the whole time from its first check
    dropped += 25
    counters.set("socket_drops", dropped, port=2055)
    clock.now += 10
    watch.check()
    assert store.active_system() == {"socket 2055 drops"}
    restarted = SystemWatch(Counters(), store, AlertSettings(system_clear_after_s=60), lambda: {}, clock)
    clock.now += 10
    restarted.check()
    clock.now += 50
    restarted.check()
    assert store.active_system() == {"socket 2055 drops"}
    clock.now += 10
    restarted.check()
    assert store.active_system() == set()
    assert [change for user, entity, change in seen if user == "root1"][4:] == [RETRIGGERED, CLEARED]


def test_an_exporter_that_stops_mid_run_raises_a_system_alert_that_clears_when_it_sends_again(tmp_path):
    http, netflow = free_tcp_port(), free_udp_port()
    proc = start_server(tmp_path, http, netflow, SLUICE_ALERTS__EXPORTER_SILENT_S="3",
                        SLUICE_ALERTS__SYSTEM_CHECK_INTERVAL_S="0.5", SLUICE_ALERTS__SYSTEM_CLEAR_AFTER_S="1")
    try:
        work = tmp_path / "x"
        work.mkdir()
        write_pcap(work / "t.pcap", standard_conversations(base_time=time.time() - 60, count=10))
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=ADMIN, timeout=10) as admin:
            export(work, "softflowd", "9", netflow)
            stopped = time.time()

            def system() -> list[dict]:
                return [r for r in admin.get("/api/v1/alerts").json() if r["type"] == "SYSTEM"]

            [alert] = wait_until(system, timeout=20, what="the silent exporter's SYSTEM alert")
            assert time.time() - stopped >= 3
            assert re.fullmatch(r"exporter 127\.0\.0\.1 netflow9 silent", alert["entity"])
            assert alert["message"].startswith("Exporter 127.0.0.1 has sent no netflow9 datagram for ")
            assert (alert["alertdef"], alert["severity"], alert["v2"], alert["cleared_us"]) == (0, "HIGH", 3, None)
            out = ns2("ns2hostsb", "-s", f"127.0.0.1:{http}", "-un", ADMIN[0], "-up", ADMIN[1], "-al")
            assert "type=SYSTEM" in out.stdout and f"ID={alert['id']}" in out.stdout
            # the exporter sends again: the record is cleared and says so
            export(work, "softflowd", "9", netflow)
            [cleared] = wait_until(lambda: [r for r in system() if r["cleared_us"]], timeout=20,
                                   what="the SYSTEM alert to clear")
            assert cleared["id"] == alert["id"] and cleared["message"].startswith("Ended: Exporter 127.0.0.1")
    finally:
        proc.terminate()
        proc.wait(10)
