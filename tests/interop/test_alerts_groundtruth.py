"""Alerts from real exporter traffic: a pcap with known behaviour, exported by softflowd into
Sluice's collector, sessions, enrichment and alert engine. The alerts raised (entities, v1,
v2, values) must equal those computed independently from the pcap's conversations by the
plain-Python reference (``alertref``), for every definition.
"""

from __future__ import annotations

import ipaddress
import random
import time

import maxminddb
import numpy as np
import pytest

from sluice.alerts.definition import Definition
from sluice.alerts.engine import AlertEngine
from sluice.flows.enrich import DEFAULT_COUNTRY_MMDB, Enricher
from sluice.flows.schema import Arrivals, FlowBatch
from sluice.flows.sessions import SessionTracker

from ..support.alertref import Reference, Sess
from ..support.interop import SluiceCollector
from ..support.pcapgen import Conversation, write_pcap
from ..support.exporters import export

T0 = 1_800_000_000.0  # capture time of the traffic (softflowd -a keeps it)
SCANNER, TARGET = "10.5.0.66", "10.6.0.10"
EXFIL4, EXFIL6, DROP = "10.5.0.77", "fd00:5::77", "193.0.6.139"
CHATTY_C, CHATTY_S = "10.5.0.88", "10.6.0.20"
DNS = "10.6.0.53"
US_HOST = "8.8.8.8"


def scenario() -> list[Conversation]:
    convs = []
    t = T0
    # a port scan: one host, 120 ports of one target, a tiny TCP session each
    for i in range(120):
        convs.append(Conversation(SCANNER, TARGET, 50000 + i, 1000 + i, 6, t + i * 0.01, exchanges=0))
    # exfiltration over IPv4 and IPv6: few sessions, many bytes sent
    for i in range(3):
        convs.append(Conversation(EXFIL4, DROP, 41000 + i, 443, 6, t + 2 + i * 0.1, exchanges=40, request=1400,
                                  response=60, gap=0.01))
        convs.append(Conversation(EXFIL6, "2a00:1450:4001:800::200e", 42000 + i, 443, 6, t + 2 + i * 0.1,
                                  exchanges=30, request=1400, response=60, gap=0.01))
    # a chatty host pair: 60 sessions between the same two hosts
    for i in range(60):
        convs.append(Conversation(CHATTY_C, CHATTY_S, 43000 + i, 8080, 6, t + 3 + i * 0.02, exchanges=1))
    # many sessions to one port: 80 clients ask the DNS server
    for i in range(80):
        convs.append(Conversation(f"10.7.{i // 200}.{i % 200 + 1}", DNS, 53000 + i, 53, 17, t + 4 + i * 0.01,
                                  exchanges=1, request=40, response=120))
    # traffic from one country: a US host sends to several inside hosts
    for i in range(12):
        convs.append(Conversation(US_HOST, f"10.8.0.{i + 1}", 44000 + i, 25, 6, t + 5 + i * 0.05, exchanges=6,
                                  request=1000, response=80, gap=0.01))
    return [c.build() for c in convs]


def continuation() -> list[Conversation]:
    """Later traffic of the first IPv4 exfiltration session (same 5-tuple): another period."""
    return [Conversation(EXFIL4, DROP, 41000, 443, 6, T0 + 30, exchanges=20, request=1400, response=60,
                         gap=0.01).build()]


def definitions() -> list[Definition]:
    rows = [
        ("scan", "unique_ports", "host", 100, "5m", ""),
        ("exfil", "bytes_sent", "host", 100_000, "5m", ""),
        ("exfil bits, IPv6 only", "bits_sent", "host", 500_000, "5m", "ADDR == fd00::/8"),
        ("chatty pair", "sessions_initiated", "host_pair", 50, "15m", ""),
        ("chatty pair exactly at the threshold", "sessions_initiated", "host_pair", 60, "15m", ""),
        ("one port, many sessions", "sessions_received", "port", 70, "5m", ""),
        ("one port, many clients", "unique_hosts", "port", 79, "1h", "PROTO == udp"),
        ("from one country", "bytes_sent", "country", 50_000, "5m", ""),
        ("AS-less: ASN alerts see nothing", "packets_total", "asn", 0, "5m", ""),
        ("prefilter that matches nothing", "bytes_total", "host", 0, "5m", "PROTO == sctp"),
        ("received bytes, with exceptions", "bytes_received", "host", 10_000, "30m", ""),
    ]
    out = [Definition(id=i + 1, user_id=1, title=t, metric=m, entity=e, threshold=thr, interval=iv, prefilter=pf)
           for i, (t, m, e, thr, iv, pf) in enumerate(rows)]
    out[-1] = out[-1].model_copy(update={"exceptions": out[-1].exceptions.model_copy(update={
        "addresses": ["10.8.0.0/29"], "countries": ["NL"]})})
    return out


PREDICATES = {"ADDR == fd00::/8": lambda s: s.cln.startswith("fd00") or s.srv.startswith("fd00"),
              "PROTO == udp": lambda s: s.proto == 17, "PROTO == sctp": lambda s: False, "": lambda s: True}


def country_of(reader, address: str) -> str:
    """Independently of Sluice's lookup table: RFC 1918 / unique local are XP, others from the MMDB."""
    ip = ipaddress.ip_address(address)
    if ip in ipaddress.ip_network("10.0.0.0/8") or (ip.version == 6 and ip in ipaddress.ip_network("fc00::/7")):
        return "XP"
    return reader.get(address)["country_code"]


def to_sessions(convs: list[Conversation], ids: dict, reader) -> list[Sess]:
    out = []
    for c in convs:
        key = (c.client, c.cport, c.server, c.sport, c.proto)
        new = key not in ids
        sid = ids.setdefault(key, len(ids) + 1)
        out.append(Sess(sid, c.client, c.server, c.cport, c.sport, c.proto,
                        sum(p.ip_length() for p in c.packets if p.src == c.client),
                        sum(p.ip_length() for p in c.packets if p.src == c.server),
                        sum(1 for p in c.packets if p.src == c.client), sum(1 for p in c.packets if p.src == c.server),
                        country_of(reader, c.client), country_of(reader, c.server), new=new))
    return out


def settle(sluice: SluiceCollector) -> None:
    """Wait until the collector has decoded everything the exporter sent."""
    last, stable = -1.0, 0
    for _ in range(100):
        now = sluice.decoder.counters.get("flows_total")
        stable = stable + 1 if now == last and now > 0 else 0
        if stable >= 4:
            return
        last = now
        time.sleep(0.1)
    raise AssertionError("the exporter's flows did not arrive")


def totals(events: list[tuple]) -> dict:
    """Per (definition, entity): message, COUNT summed over its events, highest value, threshold."""
    out: dict = {}
    for d, entity, message, count, value, thr in events:
        _, total, top, _ = out.get((d, entity), (message, 0, 0, thr))
        out[(d, entity)] = (message, total + count, max(top, value), thr)
    return out


@pytest.mark.parametrize("version", ["9", "10"])
def test_alerts_from_softflowd_traffic_match_the_pcap(tmp_path, version):
    defs = definitions()
    engine = AlertEngine()
    engine.set_definitions(defs)
    refs = [Reference(d, PREDICATES[d.prefilter]) for d in defs]
    reader = maxminddb.open_database(str(DEFAULT_COUNTRY_MMDB))
    tracker = SessionTracker(idle_timeout_s=600)
    enricher = Enricher()
    ids: dict = {}
    runs = [(scenario(), 1_900_000_000_000), (continuation(), 1_900_000_000_000 + 12_000)]
    rng = random.Random(version)
    got, want = [], []
    sluice = SluiceCollector()
    try:
        for n, (convs, now_ms) in enumerate(runs):
            workdir = tmp_path / f"run{n}"
            workdir.mkdir()
            write_pcap(workdir / "t.pcap", convs)
            before = len(sluice.batches)
            export(workdir, "softflowd", version, sluice.port)
            settle(sluice)
            flows = FlowBatch.concat(sluice.batches[before:])
            sessions, arrivals = tracker.track(flows, int(T0 * 1000) + n * 60_000)
            sessions = enricher(sessions)
            # in evaluations of random sizes: COUNT must not depend on how rows are batched
            cuts = sorted(rng.sample(range(1, len(sessions)), min(rng.randint(0, 6), len(sessions) - 1)))
            for part in np.split(np.arange(len(sessions)), cuts):
                got += [(e.definition_id, e.entity, e.message, e.count, e.value, e.threshold)
                        for e in engine.evaluate(sessions.take(part), Arrivals(arrivals.new[part], arrivals.slot[part]),
                                                 now_ms)]
            truth = to_sessions(convs, ids, reader)
            want += [ev for r in refs for ev in r.evaluate(truth, now_ms)]
    finally:
        sluice.close()
    assert totals(got) == totals(want)
    # and the scenario did what it was built for
    by_def = {}
    for d, entity, _, count, value, thr in want:
        by_def.setdefault(d, {})[entity] = by_def.get(d, {}).get(entity, 0) + count
    assert by_def[1] == {SCANNER: 120, TARGET: 120}  # over in one period: every session in the window counts
    assert EXFIL4 in by_def[2] and by_def[2][EXFIL4] == 3 + 1  # three sessions, then one again a period later
    assert set(by_def[3]) == {"fd00:5::77"}
    chatty, scan = f"{CHATTY_C} -> {CHATTY_S}", f"{SCANNER} -> {TARGET}"
    assert set(by_def[4]) == {chatty, scan}
    assert set(by_def[5]) == {scan}  # the chatty pair has exactly 60 sessions: not over 60
    assert set(by_def[6]) == {"53/udp"} and set(by_def[7]) == {"53/udp"}
    assert "US" in by_def[8]
    assert 9 not in by_def and 10 not in by_def
    assert not any(e.startswith("10.8.0.") and int(e.rsplit(".", 1)[1]) < 8 for e in by_def[11])
