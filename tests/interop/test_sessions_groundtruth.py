"""Sessions from real exporters: a pcap replayed by softflowd and pmacctd (NetFlow v9, IPFIX)
through Sluice's collector and tracker equals the pcap's conversations."""

import numpy as np
import pytest

from sluice.flows.enrich import Enricher
from sluice.flows.schema import SessionBatch, addr_bytes, addr_text
from sluice.flows.sessions import SessionTracker
from sluice.store.base import TimeRange
from sluice.store.duckdb_store import DuckDBStore

from ..support.exporters import export
from ..support.interop import SluiceCollector
from ..support.pcapgen import Conversation, write_pcap
from ..unit.test_sessions import T0, totals


# -- ground truth: a pcap through softflowd ------------------------------------------------

def ground_truth_conversations():
    convs = []
    t = 1_700_000_000.0
    for i in range(12):
        convs.append(Conversation(f"10.1.0.{i + 1}", "10.2.0.1", 40000 + i, 443, 6, t + i * 0.1, exchanges=3,
                                  request=200 + i, response=1200 - i))
        convs.append(Conversation(f"10.1.1.{i + 1}", "10.2.0.53", 50000 + i, 53, 17, t + i * 0.1, exchanges=2,
                                  request=60, response=300))
        convs.append(Conversation(f"2001:db8:1::{i + 1:x}", "2001:db8:2::1", 41000 + i, 22, 6, t + i * 0.1,
                                  exchanges=2, request=100, response=150))
    # long-lived: 40 s of traffic, longer than softflowd's maximum flow life (-t maxlife=10):
    # it exports several records per direction, which must fold back into one session each
    for i in range(3):
        convs.append(Conversation(f"10.1.2.{i + 1}", "10.2.0.80", 45000 + i, 80, 6, t + i, exchanges=20,
                                  request=500, response=1400, gap=2.0))
        convs.append(Conversation(f"2001:db8:1::a{i}", "2001:db8:2::80", 46000 + i, 8080, 6, t + i, exchanges=20,
                                  request=300, response=900, gap=2.0))
    return [c.build() for c in convs]


def expected_sessions(convs) -> dict:
    out = {}
    for c in convs:
        cb = sum(p.ip_length() for p in c.packets if p.src == c.client)
        sb = sum(p.ip_length() for p in c.packets if p.src == c.server)
        cp = sum(1 for p in c.packets if p.src == c.client)
        sp = sum(1 for p in c.packets if p.src == c.server)
        out[(addr_text(addr_bytes(c.client)), c.cport, addr_text(addr_bytes(c.server)), c.sport, c.proto)] = (cb, sb, cp, sp)
    return out


TICK = ("10.255.255.1", "10.255.255.2")


@pytest.mark.parametrize("exporter, version", [("softflowd", "9"), ("softflowd", "10"), ("pmacctd", "9"),
                                               ("pmacctd", "10")])
def test_sessions_from_a_real_exporter_match_the_pcap(tmp_path, exporter, version):
    convs = ground_truth_conversations()
    last = max(p.time for c in convs for p in c.packets)
    # late packets move pmacctd's capture clock on, so that every real flow is exported
    ticks = [Conversation(*TICK, 9, 9, 17, last + 100 + 5 * i, exchanges=1).build() for i in range(4)]
    write_pcap(tmp_path / "t.pcap", convs + ticks)
    sluice = SluiceCollector()
    try:
        export(tmp_path, exporter, version, sluice.port)
        sluice.wait_for(1)
    finally:
        sluice.close()
    records = sluice.flows().to_records()
    long_flows = [r for r in records if {r["src_port"], r["dst_port"]} & {80, 8080}]
    if exporter == "pmacctd":
        # 6 long conversations x 2 directions: at least two records each
        assert len(long_flows) >= 2 * 12, "the long conversations should arrive as several records each"
    tracker = SessionTracker(idle_timeout_s=300)
    # feed the flows in the pieces the collector decoded them in; enrich, store and read back
    store = DuckDBStore(tmp_path / "sessions.duckdb")
    enricher = Enricher()
    for b in sluice.batches:
        store.append(enricher(tracker.update(b, T0)))
    store.flush()
    stored = store.sessions(TimeRange(0, 2**62), limit=10**6)
    store.close()
    columns = {name: stored.column(name).to_numpy(zero_copy_only=False) for name in stored.column_names}
    columns = {k: (np.array([list(x) for x in v], np.uint8).reshape(-1, 16) if k.endswith("addr") else
                   v.astype("S2") if k.endswith("country") else v) for k, v in columns.items()}
    got = {}
    for cln, cport, srv, sport, proto, cb, sb, cp, sp in totals([SessionBatch(columns)]).values():
        key = (cln, cport, srv, sport, proto)
        if cln in TICK or srv in TICK:
            continue
        assert key not in got, f"{key} split into several sessions"
        got[key] = (cb, sb, cp, sp)
    assert got == expected_sessions(convs)
