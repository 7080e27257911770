"""Several collectors, one set of alerts (issue 13): partial windows over a real NATS JetStream
server, merged once each; and ``sluice serve`` as two collectors and an alerting node."""

from __future__ import annotations

import time

import numpy as np

from sluice.alerts.definition import Definition
from sluice.alerts.engine import AlertEngine
from sluice.alerts.partial_builder import PartialBuilder
from sluice.alerts.stream import PartialPublisher, PartialSubscriber
from sluice.counters import Counters
from sluice.flows.schema import Arrivals

from ..support.waiting import wait_until
from ..unit.test_alerts import batch
from ..support.alertref import Sess

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
        wait_until(lambda: len(events) >= 2, timeout=20, what="both collectors' partials merged")
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
            wait_until(lambda: node.stats["partials_repeated"] > before["partials_repeated"], timeout=20,
                       what="the repeated partial to arrive")
        finally:
            again.stop()
        assert node.stats["rows_merged"] == before["rows_merged"] and len(events) == 2

        # one more session on a collector: counted once more
        feed(builders[0], scan(80, 1), int(time.time() * 1000))
        wait_until(lambda: len(events) == 4, timeout=20, what="the next session's events")
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
