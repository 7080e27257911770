"""Several collectors, one set of alerts (issue 13): partial windows over a real NATS JetStream
server, merged once each; and ``sluice serve`` as two collectors and an alerting node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import numpy as np

from sluice.alerts.definition import Definition
from sluice.alerts.engine import AlertEngine
from sluice.alerts.partial_builder import PartialBuilder
from sluice.alerts.stream import PartialPublisher, PartialSubscriber
from sluice.counters import Counters
from sluice.flows.schema import Arrivals

from ..support.alertref import Sess
from ..support.exporters import export
from ..support.interop import free_tcp_port, free_udp_port
from ..support.pcapgen import Conversation, write_pcap
from ..support.server import ADMIN, metrics, start_server
from ..support.waiting import wait_until, wait_until_steady
from ..unit.test_alerts import batch

T0 = int(time.time() * 1000)
SCAN = Definition(id=1, user_id=1, title="port scan", metric="unique_ports", entity="host", interval="5m",
                  threshold=50)


def scan(first: int, n: int) -> list[Sess]:
    """``n`` sessions of one scanner to one target's ports ``1000 + first ...``."""
    return [Sess(first + i + 1, "10.5.0.66", "10.9.0.10", 50000 + first + i, 1000 + first + i, 6, 60, 0, 1, 0,
                 "US", "US", 0, 0) for i in range(n)]


def feed(builder: PartialBuilder, sessions: list[Sess], at: int) -> None:
    b, arr = batch(sessions)
    builder.evaluate(b, Arrivals(arr.new, arr.slot, np.full(len(sessions), at, np.int64)), at)


def test_two_collectors_half_a_scan_each_make_one_alert_through_jetstream(nats_server):
    counters = Counters()
    node = AlertEngine()
    node.set_definitions([SCAN])
    events = []

    def merge(partials):
        events.extend(node.merge_partials(partials, int(time.time() * 1000)))

    subscriber = PartialSubscriber(nats_server.url, counters, merge, lambda: node.stream_seq)
    publishers = [PartialPublisher(nats_server.url, counters) for _ in range(2)]
    builders = [PartialBuilder(name, on_partials=p.submit) for name, p in zip("ab", publishers)]
    for b in builders:
        b.set_definitions([SCAN])
    subscriber.start()
    assert subscriber.connected.wait(20), "the alerting side did not subscribe"
    for p in publishers:
        p.start()
    try:
        now = int(time.time() * 1000)
        feed(builders[0], scan(0, 40), now)  # 40 ports each: below 50 on each collector
        feed(builders[1], scan(40, 40), now)
        wait_until(lambda: len(events) >= 2, timeout=60, what="both collectors' partials merged")
        time.sleep(0.3)  # nothing more comes
        # the scanner (80 ports) and its target (80 of its ports reached): 80 sessions each
        assert sorted((e.entity, e.value, e.count, e.threshold) for e in events) == [
            ("10.5.0.66", 80, 80, 50), ("10.9.0.10", 80, 80, 50)]
        assert node.stream_seq == 2

        # delivered again (the stream read anew from the start): merged once
        before = dict(node.stats)
        again = PartialSubscriber(nats_server.url, counters, merge, lambda: 1)  # reads from sequence 2 on
        again.start()
        try:
            wait_until(lambda: node.stats["partials_repeated"] > before["partials_repeated"], timeout=60,
                       what="the repeated partial to arrive")
        finally:
            again.stop()
        assert node.stats["rows_merged"] == before["rows_merged"] and len(events) == 2

        # one more session on a collector: counted once more
        feed(builders[0], scan(80, 1), int(time.time() * 1000))
        wait_until(lambda: len(events) == 4, timeout=60, what="the next session's events")
        assert sorted((e.entity, e.value, e.count) for e in events[2:]) == [("10.5.0.66", 81, 1), ("10.9.0.10", 81, 1)]
    finally:
        for p in publishers:
            p.stop()
        subscriber.stop()
    assert counters.get("alert_partials_published_total") == 3


def test_a_collector_keeps_its_partials_while_the_stream_is_away_and_sends_them_once_it_is_back(nats_server):
    counters = Counters()
    publisher = PartialPublisher(nats_server.url, counters)
    builder = PartialBuilder("a", on_partials=publisher.submit)
    builder.set_definitions([SCAN])
    node = AlertEngine()
    node.set_definitions([SCAN])
    events = []
    subscriber = PartialSubscriber(nats_server.url, counters,
                                   lambda got: events.extend(node.merge_partials(got, int(time.time() * 1000))),
                                   lambda: node.stream_seq)
    publisher.start()
    subscriber.start()
    try:
        assert subscriber.connected.wait(20)
        nats_server.stop()
        feed(builder, scan(0, 60), int(time.time() * 1000))
        time.sleep(1.5)
        assert publisher.queued() == 1 and events == []
        nats_server.start()
        wait_until(lambda: events, timeout=30, what="the queued partial to be merged once the server is back")
        time.sleep(0.3)
        assert sorted((e.entity, e.value, e.count) for e in events) == [("10.5.0.66", 60, 60), ("10.9.0.10", 60, 60)]
        assert publisher.queued() == 0
    finally:
        publisher.stop()
        subscriber.stop()


def test_an_alerting_node_merges_what_collectors_published_before_it_first_subscribed(nats_server):
    """A new node reads the stream from its start, not from its first subscription: collectors
    that publish while it is still connecting lose nothing (a race CI once lost)."""
    counters = Counters()
    node = AlertEngine()
    node.set_definitions([SCAN])
    events = []
    subscriber = PartialSubscriber(nats_server.url, counters,
                                   lambda got: events.extend(node.merge_partials(got, int(time.time() * 1000))),
                                   lambda: node.stream_seq)  # made now, as the node starts
    publisher = PartialPublisher(nats_server.url, counters)
    builder = PartialBuilder("a", on_partials=publisher.submit)
    builder.set_definitions([SCAN])
    publisher.start()
    try:
        feed(builder, scan(0, 60), int(time.time() * 1000))
        wait_until(lambda: counters.get("alert_partials_published_total") == 1, timeout=60,
                   what="the partial published")
        subscriber.start()  # only now
        wait_until(lambda: events, timeout=60, what="the partial published before the subscription merged")
        assert sorted((e.entity, e.value, e.count) for e in events) == [("10.5.0.66", 60, 60), ("10.9.0.10", 60, 60)]
    finally:
        publisher.stop()
        subscriber.stop()


def test_a_collector_whose_nats_server_is_away_says_so_once_not_with_a_traceback_each_second(tmp_path):
    """The NATS client's own logging printed a traceback every second while the server was away."""
    http, log = free_tcp_port(), tmp_path / "serve.log"
    proc = start_server(tmp_path, http, free_udp_port(), log=log, SLUICE_CLUSTER__ROLE="collector",
                        SLUICE_CLUSTER__NATS_URL=f"nats://127.0.0.1:{free_tcp_port()}")  # nothing listens there
    try:
        wait_until(lambda: counter(http, "alert_partials_publish_errors_total") >= 3, timeout=60,
                   what="three failed attempts to reach the NATS server")
    finally:
        stop(proc)
    text = log.read_text()
    assert text.count("cannot reach the NATS server") == 1, text
    assert "Traceback" not in text and "encountered error" not in text, text


# -- sluice serve as two collectors and an alerting node --------------------------------------


def half_scan(path, ports: range, base: float) -> None:
    """The scanner 10.5.0.66 reaching 10.9.0.10's ports ``ports`` (one SYN each)."""
    write_pcap(path, [Conversation("10.5.0.66", "10.9.0.10", 50000 + p, p, 6, base + (p - 1000) * 0.01,
                                   exchanges=0).build() for p in ports])


def scan_alerts(http: int) -> dict[str, tuple]:
    """Per entity: (value, COUNT, threshold, message) of the alert records, once steady."""
    with httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=ADMIN, timeout=10) as c:
        def now():
            return {r["entity"]: (r["value"], r["v1"], r["v2"], r["message"]) for r in c.get("/api/v1/alerts").json()}
        return wait_until_steady(now, steady_s=2.0, timeout=60, what="the scan's alert records")


def define_scan(http: int) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=ADMIN, timeout=10) as c:
        r = c.post("/api/v1/alert-definitions", json={"title": "port scan", "metric": "unique_ports", "entity": "host",
                                                       "threshold": 50, "interval": "5m", "severity": "HIGH"})
        assert r.status_code == 201, r.text


def stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_two_collectors_each_below_and_merged_above_alert_exactly_as_one_server(tmp_path, postgres, nats_server,
                                                                                clickhouse):
    halves = scans(tmp_path, range(1000, 1040), range(1040, 1080))  # 40 ports each: below 50 on each collector
    cluster = Cluster(tmp_path, postgres, nats_server, clickhouse)
    node_http = cluster.ports["node"][0]
    try:
        cluster.start("node")
        define_scan(node_http)
        cluster.start("c0")
        cluster.start("c1")
        cluster.export("c0", halves[0])
        cluster.export("c1", halves[1])
        merged = scan_alerts(node_http)
        # the sessions of both collectors in one report, through the alerting node's API
        with httpx.Client(base_url=f"http://127.0.0.1:{node_http}", auth=ADMIN, timeout=10) as c:
            rows = wait_until_steady(lambda: c.get("/api/v1/sessions", params={"filter": "SRVIP == 10.9.0.10",
                                                                              "limit": 1000}).json(),
                                     timeout=60, what="both collectors' sessions")
        assert sorted(r["srv_port"] for r in rows) == list(range(1000, 1080))
        assert {r["session_id"] >> 56 for r in rows} == {2, 3}
    finally:
        cluster.close()
    assert set(merged) == {"10.5.0.66", "10.9.0.10"}
    assert merged == single_server_alerts(tmp_path, halves)  # one server fed the same two exports
    assert merged["10.5.0.66"][:3] == (80, 80, 50)


def counter(http: int, name: str) -> float:
    return metrics(http).get(f"sluice_{name}", 0.0)


def alert_stream_rows(state_url: str) -> int:
    """How many changes the dashboard stream has carried (one per record created or raised)."""
    import psycopg

    with psycopg.connect(state_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute("SELECT count(*) FROM alert_stream").fetchone()[0]


class Cluster:
    """An alerting node and two collectors of ``sluice serve`` sharing PostgreSQL, ClickHouse
    and NATS; each keeps its ports and data directory across restarts."""

    def __init__(self, tmp_path, postgres, nats_server, clickhouse):
        self.tmp = tmp_path
        self.state_url = postgres.new_database()
        self.env = dict(SLUICE_STATE__URL=self.state_url, SLUICE_CLUSTER__NATS_URL=nats_server.url,
                        SLUICE_STORE__BACKEND="clickhouse",
                        SLUICE_STORE__CLICKHOUSE_SERVERS=json.dumps(clickhouse.addresses),
                        SLUICE_STORE__CLICKHOUSE_DATABASE=f"c{os.getpid()}_{id(self) % 10_000}")
        self.ports = {name: (free_tcp_port(), free_udp_port()) for name in ("node", "c0", "c1")}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        (self.tmp / name).mkdir(exist_ok=True)
        http, netflow = self.ports[name]
        # the alerting node saves its windows at a clean stop only: what a test kills it after
        # is in no saved window, however slow the machine
        role = dict(SLUICE_CLUSTER__ROLE="alerting", SLUICE_SESSIONS__NODE_ID="1",
                    SLUICE_ALERTS__SNAPSHOT_INTERVAL_S="3600") if name == "node" else dict(
            SLUICE_CLUSTER__ROLE="collector", SLUICE_CLUSTER__NODE_NAME=name,
            SLUICE_SESSIONS__NODE_ID=str(2 + int(name[1:])))
        self.procs[name] = start_server(self.tmp / name, http, netflow, **role, **self.env)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def stop(self, name: str) -> None:
        stop(self.procs.pop(name))

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def export(self, name: str, work) -> None:
        export(work, "softflowd", "9", self.ports[name][1])


def scans(tmp_path, *port_ranges: range) -> list:
    base = time.time() - 5
    out = []
    for i, ports in enumerate(port_ranges):
        work = tmp_path / f"scan{i}"
        work.mkdir()
        half_scan(work / "t.pcap", ports, base)
        out.append(work)
    return out


def single_server_alerts(tmp_path, exports: list) -> dict:
    (tmp_path / "single").mkdir()
    http, netflow = free_tcp_port(), free_udp_port()
    single = start_server(tmp_path / "single", http, netflow)
    try:
        define_scan(http)
        for work in exports:
            export(work, "softflowd", "9", netflow)
        return scan_alerts(http)
    finally:
        stop(single)


def test_a_collector_killed_and_back_neither_loses_what_it_sent_nor_doubles_a_record(tmp_path, postgres, nats_server,
                                                                                     clickhouse):
    first, second, third = scans(tmp_path, range(1000, 1040), range(1040, 1080), range(1080, 1090))
    cluster = Cluster(tmp_path, postgres, nats_server, clickhouse)
    node_http = cluster.ports["node"][0]
    try:
        cluster.start("node")
        define_scan(node_http)
        cluster.start("c0")
        cluster.start("c1")
        cluster.export("c0", first)
        c0_http = cluster.ports["c0"][0]
        wait_until(lambda: counter(c0_http, "alert_partials_published_total") >= 1, timeout=60, what="c0's partial published")
        with httpx.Client(base_url=f"http://127.0.0.1:{node_http}", auth=ADMIN, timeout=10) as c:
            def c0_sessions():
                return len(c.get("/api/v1/sessions", params={"filter": "SRVIP == 10.9.0.10", "limit": 1000}).json())
            wait_until(lambda: c0_sessions() == 40, timeout=60, what="c0's sessions stored")
            cluster.kill("c0")
            cluster.export("c1", second)  # the other collector goes on
            assert scan_alerts(node_http)["10.5.0.66"][:2] == (80, 80)
            cluster.start("c0")  # back, numbering its partials afresh
            cluster.export("c0", third)
            wait_until(lambda: scan_alerts(node_http)["10.5.0.66"][0] == 90, timeout=60, what="c0's new sessions")
            merged = scan_alerts(node_http)
            assert c0_sessions() == 90  # its sessions stored before the kill stayed
            rows = c.get("/api/v1/alerts").json()
            assert len(rows) == len({(r["alertdef"], r["entity"]) for r in rows}) == 2  # one record per entity
    finally:
        cluster.close()
    assert merged == single_server_alerts(tmp_path, [first, second, third])


def test_the_alerting_node_killed_resumes_from_its_saved_windows_and_the_stream_without_doubling(
        tmp_path, postgres, nats_server, clickhouse):
    first, second, third = scans(tmp_path, range(1000, 1040), range(1040, 1080), range(1080, 1090))
    cluster = Cluster(tmp_path, postgres, nats_server, clickhouse)
    node_http = cluster.ports["node"][0]
    try:
        cluster.start("node")
        define_scan(node_http)
        cluster.start("c0")
        cluster.start("c1")
        cluster.export("c0", first)
        wait_until(lambda: counter(node_http, "alert_partials_merged_total") >= 1, timeout=60, what="the first half merged")
        cluster.stop("node")  # saves its windows: 40 ports of the scan
        cluster.start("node")
        cluster.export("c1", second)  # over the threshold: recorded, and not in any saved window
        assert scan_alerts(node_http)["10.5.0.66"][:2] == (80, 80)
        changes = alert_stream_rows(cluster.state_url)
        cluster.kill("node")
        cluster.start("node")  # merges the second half again from the stream: records nothing twice
        wait_until(lambda: counter(node_http, "alert_partials_merged_total") >= 1, timeout=60, what="the second half merged again")
        assert scan_alerts(node_http)["10.5.0.66"][:2] == (80, 80)
        assert alert_stream_rows(cluster.state_url) == changes  # no record raised, no notice, twice
        assert counter(node_http, "alert_events_recorded_before_total") == 2  # the scanner's and its target's
        cluster.export("c0", third)  # and the windows go on from where they were
        wait_until(lambda: scan_alerts(node_http)["10.5.0.66"][0] == 90, timeout=60, what="the third part merged")
        merged = scan_alerts(node_http)
    finally:
        cluster.close()
    assert merged == single_server_alerts(tmp_path, [first, second, third])
