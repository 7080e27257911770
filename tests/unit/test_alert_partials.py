"""Mergeable partial windows (issue 13): collectors' partials merged on an alerting node give
the single server's alerts, COUNT included, whatever the collectors and the order."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest

from sluice.alerts.definition import AlertMetric, Definition, EntityType
from sluice.alerts.engine import AlertEngine
from sluice.alerts.partial import Partial, PartialError, Positions, decode, encode
from sluice.alerts.partial_builder import PartialBuilder
from sluice.flows.schema import Arrivals

from ..support.alertref import Reference, Sess
from .test_alerts import COMBOS, T0, THRESHOLDS, batch, random_sessions, short_window, totals


def shipped(builder: PartialBuilder, sessions: list[Sess], at: int, max_bytes: int) -> list[Partial]:
    """What a collector ships for sessions arriving at ``at``: its partials, over the wire."""
    if not sessions:
        return []
    b, arr = batch(sessions)
    parts = builder.parts(b, Arrivals(arr.new, arr.slot, np.full(len(sessions), at, np.int64)), at)
    return [decode(encode(p)) for p in builder.pack(parts, at, max_bytes)]


@pytest.mark.parametrize("entity, metric", COMBOS, ids=[f"{e.value}-{m.value}" for e, m in COMBOS])
def test_two_collectors_merged_alert_as_one_server_fed_everything(entity, metric):
    rng = random.Random(zlib.crc32(f"partials {entity.value}/{metric.value}".encode()))
    thr = THRESHOLDS[metric.value.split("_")[0]]
    definitions = [
        Definition(id=1, user_id=1, title="1m", metric=metric, entity=entity, interval="1m", threshold=thr),
        Definition(id=2, user_id=1, title="5m", metric=metric, entity=entity, interval="5m", threshold=thr * 2,
                   prefilter="PROTO == tcp",
                   exceptions={"ports": [22], "thresholds": [{"cidr": "10.0.0.0/29", "threshold": 1}]
                               if entity in (EntityType.HOST, EntityType.HOST_PAIR) else []}),
        short_window(3, metric, entity),
    ]
    predicates = {1: lambda s: True, 2: lambda s: s.proto == 6, 3: lambda s: True}
    refs = [Reference(d, predicates[d.id]) for d in definitions]
    collectors = [PartialBuilder("a"), PartialBuilder("b")]
    for c in collectors:
        c.set_definitions(definitions)
    node = AlertEngine()
    node.set_definitions(definitions)
    live: list[Sess] = []
    next_id = [0]
    now = T0
    got, want = [], []
    for _ in range(60):
        now += rng.choice([0, 150, 400, 900, 2500, 7000, 70_000])
        sessions = random_sessions(rng, live, next_id, rng.randint(0, 12))
        want += [(d, e, m, c, t) for r in refs for d, e, m, c, _, t in r.evaluate(sessions, now)]
        # a session lives in one collector (its tracker): by its id
        partials = [p for i, c in enumerate(collectors)
                    for p in shipped(c, [s for s in sessions if s.session_id % 2 == i], now, rng.choice([30, 200, 1 << 20]))]
        rng.shuffle(partials)  # the collectors' partials come in any order
        for p in partials:
            got += [(e.definition_id, e.entity, e.message, e.count, e.threshold) for e in node.merge(p.parts, now)]
        got += [(e.definition_id, e.entity, e.message, e.count, e.threshold) for e in node.merge([], now)]
    assert want, "the traffic should have made some alerts"
    assert totals(got) == totals(want)
    assert node.stats["rows_merged"] > 0 and node.stats["parts_ignored"] == 0


def test_a_watched_server_whose_sessions_stop_alerts_through_partials():
    d = Definition(id=1, user_id=1, title="dns up", metric=AlertMetric.SESSIONS_RECEIVED, entity=EntityType.HOST,
                   interval="1m", threshold=1, threshold_type="lower", watch=["10.0.0.2"])
    collector, node = PartialBuilder("a"), AlertEngine()
    collector.set_definitions([d])
    node.set_definitions([d])
    events = []
    for k in range(5):  # a session a minute, then none
        at = T0 + k * 60_000
        for p in shipped(collector, [Sess(k + 1, "10.0.0.1", "10.0.0.2", 30000, 53, 17, 10, 10, 1, 1,
                                          "US", "US", 0, 0)], at, 1000):
            events += node.merge(p.parts, at)
    assert events == []
    for k in range(5, 9):
        events += node.merge([], T0 + k * 60_000 + 1)
    assert [e.entity for e in events] and {e.entity for e in events} == {"10.0.0.2"}
    assert "Lower threshold exceeded" in events[0].message


def test_a_partial_of_another_version_of_a_definition_is_not_merged():
    old = Definition(id=1, user_id=1, title="t", metric="bytes_sent", entity="host", threshold=10, interval="1m")
    collector, node = PartialBuilder("a"), AlertEngine()
    collector.set_definitions([old])
    node.set_definitions([old.model_copy(update={"interval": "5m"})])
    partials = shipped(collector, [Sess(1, "10.0.0.1", "10.0.0.2", 30000, 80, 6, 500, 10, 1, 1,
                                        "US", "US", 0, 0)], T0, 1000)
    assert node.merge(partials[0].parts, T0) == []
    assert node.stats["parts_ignored"] == 1


def test_a_partial_delivered_twice_is_merged_once_and_a_restarted_collector_is_not_ignored():
    positions = Positions()
    first = Partial("a", 100, 1, T0, [])
    assert positions.is_new(first)
    positions.note(first)
    assert not positions.is_new(Partial("a", 100, 1, T0, []))  # again
    assert positions.is_new(Partial("a", 100, 2, T0, []))
    assert positions.is_new(Partial("b", 50, 1, T0, []))  # another collector
    assert positions.is_new(Partial("a", 200, 1, T0, []))  # a restart: a later epoch, numbered afresh
    assert Positions.from_state(positions.state()).last == positions.last


@pytest.mark.parametrize("data, complaint", [
    (b"", "not a partial"),
    (b"PK\x03\x04garbage", "not a partial"),
    (b"\x00" * 100, "not a partial"),
])
def test_bytes_that_are_not_a_partial_are_refused_with_the_reason(data, complaint):
    with pytest.raises(PartialError, match=complaint):
        decode(data)


def test_a_partial_with_bad_columns_is_refused_with_the_reason():
    collector = PartialBuilder("a")
    collector.set_definitions([Definition(id=1, user_id=1, title="t", metric="bytes_sent", entity="host_pair",
                                          threshold=10, interval="1m")])
    partial = shipped(collector, [Sess(1, "10.0.0.1", "10.0.0.2", 30000, 80, 6, 500, 10, 1, 1,
                                       "US", "US", 0, 0)], T0, 1000)[0]
    assert partial.parts[0].text(0) == "10.0.0.1 -> 10.0.0.2"
    assert partial.collector == "a" and partial.seq == 1
    part = partial.parts[0]
    table = part.table
    good_addr2 = table.addr2
    table.addr2 = table.addr2[:0]
    with pytest.raises(PartialError, match="needs both addresses"):
        decode(encode(partial))
    table.addr2 = good_addr2
    part.entity = part.entity + 5
    with pytest.raises(PartialError, match="beyond its table"):
        decode(encode(partial))
    part.entity = part.entity - 5
    part.values = -part.values
    with pytest.raises(PartialError, match="negative"):
        decode(encode(partial))
    part.values = -part.values
    part.contributions = part.contributions - 5
    with pytest.raises(PartialError, match="negative contributions"):
        decode(encode(partial))
    part.contributions = part.contributions + 5
    data = encode(partial)
    assert decode(data).parts[0].text(0) == "10.0.0.1 -> 10.0.0.2"
    for bad in (data[:-20], data[:30], data + b"x"):
        with pytest.raises(PartialError, match="not a partial"):
            decode(bad)


def test_a_collector_keeps_partials_up_to_its_byte_bound_and_counts_the_oldest_it_drops():
    from sluice.alerts.stream import PartialPublisher
    from sluice.counters import Counters

    collector = PartialBuilder("a")
    collector.set_definitions([Definition(id=1, user_id=1, title="t", metric="bytes_sent", entity="host",
                                          threshold=10, interval="1m")])
    partials = [shipped(collector, [Sess(k + 1, "10.0.0.1", "10.0.0.2", 30000, 80, 6, 500, 10, 1, 1, "US", "US", 0,
                                         0)], T0 + k, 1000)[0] for k in range(10)]
    size = partials[0].nbytes()
    assert size > 0
    counters = Counters()
    publisher = PartialPublisher("nats://127.0.0.1:9", counters, max_queued_bytes=4 * size)  # never started
    publisher.submit(partials[:3])
    assert publisher.queued() == 3 and counters.get("alert_partials_dropped_total") == 0
    publisher.submit(partials[3:])
    assert publisher.queued() == 4 and counters.get("alert_partials_dropped_total") == 6
    assert [p.seq for p in publisher._queue] == [7, 8, 9, 10]  # the newest are kept


def test_a_scanner_with_thousands_of_peers_is_cut_into_partials_under_the_bound_and_merges_whole():
    d = Definition(id=1, user_id=1, title="scan", metric="unique_ports", entity="host", interval="5m", threshold=2999)
    collector, node = PartialBuilder("a"), AlertEngine()
    collector.set_definitions([d])
    node.set_definitions([d])
    sessions = [Sess(i + 1, "10.5.0.66", f"10.9.{i % 3}.10", 40000 + i % 20000, 1 + i, 6, 60, 0, 1, 0,
                     "US", "US", 0, 0) for i in range(3000)]
    b, arr = batch(sessions)
    parts = collector.parts(b, Arrivals(arr.new, arr.slot, np.full(len(sessions), T0, np.int64)), T0)
    partials = collector.pack(parts, T0, max_bytes=8192)
    assert len(partials) > 3 and all(p.nbytes() <= 8192 for p in partials)
    events = []
    for p in partials:
        events += node.merge_partials([(decode(encode(p)), p.seq)], T0)
    assert [(e.entity, e.value, e.count) for e in events] == [("10.5.0.66", 3000, 3000)]
    # the alerting node reports what merging cost, as a server reports what evaluating did
    spent = node.cpu_seconds()
    assert set(spent) == {"definition:1", "rows:host"} and all(seconds > 0 for seconds in spent.values()), spent


def test_a_snapshot_taken_while_partials_merge_restores_each_window_once_with_what_is_read_again(tmp_path,
                                                                                                  monkeypatch):
    """Windows are saved one after another while merging goes on: each notes the stream
    sequence it holds, and the partials read again after a restart go only to those that
    lack them."""
    from sluice.alerts import persist

    defs = [Definition(id=i, user_id=1, title=f"d{i}", metric="bytes_sent", entity="host", interval="5m",
                       threshold=10**9) for i in (1, 2)]
    collector = PartialBuilder("a")
    collector.set_definitions(defs)
    stream = [p for k in range(4) for p in shipped(collector, [Sess(k + 1, "10.0.0.1", "10.0.0.2", 30000, 80, 6,
                                                                    100 * (k + 1), 0, 1, 0, "US", "US", 0, 0)],
                                                   T0 + k, 1 << 20)]
    live = AlertEngine()
    live.set_definitions(defs)
    for seq, p in enumerate(stream[:3], 1):
        live.merge_partials([(p, seq)], T0 + 3)
    windows_written = []

    def between_windows(_s):  # the fourth partial arrives while the first window is on disk
        windows_written.append(1)
        if len(windows_written) == 1:
            live.merge_partials([(stream[3], 4)], T0 + 3)

    monkeypatch.setattr(persist.time, "sleep", between_windows)
    persist.save(live, tmp_path / "state.bin")
    restored = AlertEngine()
    restored.set_definitions(defs)
    assert persist.load(restored, tmp_path / "state.bin")
    assert restored.stream_seq == 3 and restored.merged_seq == {1: 3, 2: 4}
    for seq, p in enumerate(stream, 1):  # the stream read again from the start
        restored.merge_partials([(p, seq)], T0 + 3)
    for d in (1, 2):
        assert restored.states[d].window.values[:2].tolist() == live.states[d].window.values[:2].tolist()
    assert live.states[1].window.values.max() == 100 + 200 + 300 + 400
