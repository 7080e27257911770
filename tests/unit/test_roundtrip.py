"""Property: flows encoded by Sluice's exporters (v5, v9, IPFIX, sFlow) decode back to the
same flows, for any addresses, ports, counters and times the protocol can carry."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder
from sluice.flows.schema import FlowBatch, addr_bytes
from sluice.simulate.encode import IpfixEncoder, NetflowV5Encoder, NetflowV9Encoder, SflowEncoder

EXPORT_MS = 1_700_000_000_000

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str).filter(lambda a: not a.startswith("::ffff:"))


def flow_strategy(addresses, counter_max, as_max, pair=None):
    """``pair``: a strategy for (src, dst) together, e.g. one address family per packet."""
    pairs = pair if pair is not None else st.tuples(addresses, addresses)
    return pairs.flatmap(lambda sd: st.fixed_dictionaries({
        "src": st.just(sd[0]), "dst": st.just(sd[1]),
        "sport": st.integers(0, 65535), "dport": st.integers(0, 65535),
        "proto": st.sampled_from([6, 17, 47, 50, 132]),
        "flags": st.integers(0, 255),
        "bytes": st.integers(0, counter_max), "packets": st.integers(0, counter_max),
        "in_if": st.integers(0, 2**32 - 1), "out_if": st.integers(0, 2**32 - 1),
        "src_as": st.integers(0, as_max), "dst_as": st.integers(0, as_max),
        "age_ms": st.integers(0, 3_000_000), "dur_ms": st.integers(0, 600_000),
    }))


same_family = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))


def batch(rows: list[dict]) -> FlowBatch:
    n = len(rows)
    col = lambda k, dt=np.uint64: np.array([r[k] for r in rows], dt)  # noqa: E731
    end = EXPORT_MS - col("age_ms", np.int64)
    return FlowBatch.build(
        n,
        src_addr=np.array([list(addr_bytes(r["src"])) for r in rows], np.uint8).reshape(n, 16),
        dst_addr=np.array([list(addr_bytes(r["dst"])) for r in rows], np.uint8).reshape(n, 16),
        src_port=col("sport"), dst_port=col("dport"), protocol=col("proto"), tcp_flags=col("flags"),
        bytes=col("bytes"), packets=col("packets"), input_if=col("in_if"), output_if=col("out_if"),
        src_as=col("src_as"), dst_as=col("dst_as"), time_end_ms=end, time_start_ms=end - col("dur_ms", np.int64),
        sampling_rate=1,
    )


def roundtrip(encoder, flows: FlowBatch) -> FlowBatch:
    datagrams = encoder.encode(flows, EXPORT_MS)
    decoder = Decoder()
    result = decoder.decode([Datagram(d, "192.0.2.1", 2055, EXPORT_MS / 1000) for d in datagrams])
    assert decoder.counters.get("decode_errors_total") == 0
    return result.flows


def same(a: FlowBatch, b: FlowBatch, columns: list[str]) -> None:
    def rows(x):
        return sorted(tuple(r[c] for c in columns) for r in x.to_records())
    assert rows(a) == rows(b)


FIELDS = ["src_addr", "dst_addr", "src_port", "dst_port", "protocol", "tcp_flags", "bytes", "packets",
          "input_if", "output_if", "src_as", "dst_as", "time_start_ms", "time_end_ms"]


@settings(max_examples=40, deadline=None)
@given(st.lists(flow_strategy(st.one_of(ipv4, ipv6), 2**64 - 1, 2**32 - 1), min_size=1, max_size=80))
def test_netflow9_and_ipfix_roundtrip(rows):
    flows = batch(rows)
    for encoder in (NetflowV9Encoder(), IpfixEncoder()):
        same(roundtrip(encoder, flows), flows, FIELDS)


@settings(max_examples=40, deadline=None)
@given(st.lists(flow_strategy(ipv4, 2**32 - 1, 2**16 - 1), min_size=1, max_size=80))
def test_netflow5_roundtrip(rows):
    flows = batch(rows)
    got = roundtrip(NetflowV5Encoder(), flows)
    # v5 carries interfaces in 16 bits and flags in 8
    flows.columns["input_if"] &= 0xFFFF
    flows.columns["output_if"] &= 0xFFFF
    same(got, flows, FIELDS)


@settings(max_examples=40, deadline=None)
@given(st.lists(flow_strategy(st.one_of(ipv4, ipv6), 2**20, 0), min_size=1, max_size=40),
       st.integers(2, 1000))
def test_sampling_rate_scales_and_is_kept(rows, rate):
    flows = batch(rows)
    # an exporter sampling 1 in `rate` reports counts / rate; the collector scales them back
    v4_mapped = np.array([0] * 10 + [255, 255], np.uint8)
    both_v4 = (flows["src_addr"][:, :12] == v4_mapped).all(1) & (flows["dst_addr"][:, :12] == v4_mapped).all(1)
    cases = [(NetflowV9Encoder(sampling_rate=rate), rate, flows), (IpfixEncoder(sampling_rate=rate), rate, flows),
             # v5 carries IPv4 only and its header has 14 bits for the interval
             (NetflowV5Encoder(sampling_rate=min(rate, 0x3FFF)), min(rate, 0x3FFF),
              flows.take(np.flatnonzero(both_v4)))]
    for encoder, r, sent in cases:
        got = roundtrip(encoder, flows)
        assert len(got) == len(sent)
        assert set(got["sampling_rate"].tolist()) <= {r}
        assert sorted(got["bytes"].tolist()) == sorted((sent["bytes"] // np.uint64(r) * np.uint64(r)).tolist())
        assert sorted(got["packets"].tolist()) == sorted((sent["packets"] // np.uint64(r) * np.uint64(r)).tolist())


@settings(max_examples=25, deadline=None)
@given(st.lists(flow_strategy(None, 10_000, 0, pair=same_family), min_size=1, max_size=20))
def test_sflow_roundtrip_of_headers(rows):
    for r in rows:
        # compact flow samples keep 30 bits for an interface index (2 bits say its format)
        r["in_if"] &= 0x3FFFFFFF
        r["out_if"] &= 0x3FFFFFFF
        r["packets"] = max(r["packets"], 1)
        r["bytes"] = max(r["bytes"], r["packets"] * 1500)  # a sampled packet is a whole packet
    flows = batch(rows)
    got = roundtrip(SflowEncoder(), flows)
    same(got, flows, ["src_addr", "dst_addr", "protocol", "packets", "input_if", "output_if"])
    ported = np.isin(flows["protocol"], (6, 17, 132))
    same(got.take(np.flatnonzero(np.isin(got["protocol"], (6, 17, 132)))), flows.take(np.flatnonzero(ported)),
         ["src_port", "dst_port"])
