"""sFlow v5 on hand-made datagrams: sample kinds, encapsulations, and what is not a flow."""

import struct

import dpkt

from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder
from sluice.collect.records import sflow_records

from ..support.pcapgen import ACK, SYN, Packet
from ..support.wirebuild import (
    sflow_counter_sample,
    sflow_datagram,
    sflow_flow_sample,
    sflow_raw_header_record,
)


def decode(*payloads):
    d = Decoder()
    return d, d.decode([Datagram(p, "127.0.0.1", 5000, 1_700_000_000.5) for p in payloads])


def tagged(frame: bytes, *vlans: tuple[int, int]) -> bytes:
    """Insert 802.1Q / 802.1ad tags (tpid, vlan id) after the MAC addresses."""
    tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
    return frame[:12] + tags + frame[12:]


TCP4 = Packet(0, "10.1.1.1", "10.2.2.2", 40000, 443, 6, payload=100, flags=SYN | ACK)
UDP6 = Packet(0, "2001:db8::1", "2001:db8::2", 5353, 53, 17, payload=40)
ICMP4 = Packet(0, "10.1.1.1", "10.2.2.2", 0, 0x0800, 1, payload=56)


def test_compact_and_expanded_flow_samples_with_every_encapsulation():
    samples = [
        sflow_flow_sample([sflow_raw_header_record(TCP4.frame())], rate=100, input_if=3, output_if=4),
        sflow_flow_sample([sflow_raw_header_record(tagged(UDP6.frame(), (0x8100, 10)))], rate=200,
                          expanded=True, input_if=70000, output_if=5),
        sflow_flow_sample([sflow_raw_header_record(tagged(ICMP4.frame(), (0x88A8, 100), (0x8100, 20)))],
                          rate=50),
        sflow_counter_sample(),
    ]
    d, r = decode(sflow_datagram(samples))
    raw = sflow_records(r.sflow_samples)
    assert [(x["src_addr"], x["dst_addr"], x["src_port"], x["dst_port"], x["protocol"]) for x in raw] == [
        ("10.1.1.1", "10.2.2.2", 40000, 443, 6),
        ("2001:db8::1", "2001:db8::2", 5353, 53, 17),
        ("10.1.1.1", "10.2.2.2", 0, 0x0800, 1),  # ICMP echo request as type * 256 + code
    ]
    assert [x["sampling_rate"] for x in raw] == [100, 200, 50]
    assert [(x["input_if"], x["output_if"]) for x in raw] == [(3, 4), (70000, 5), (1, 2)]
    assert raw[0]["tcp_flags"] == SYN | ACK
    assert raw[0]["frame_length"] == len(TCP4.frame()) + 4
    assert d.counters.get("sflow_counter_samples_total") == 1
    flows = r.flows.to_records()
    assert [f["packets"] for f in flows] == [100, 200, 50]
    # bytes: the sampled packet's IP length times the rate
    assert [f["bytes"] for f in flows] == [TCP4.ip_length() * 100, UDP6.ip_length() * 200, ICMP4.ip_length() * 50]
    assert {f["exporter_addr"] for f in flows} == {"192.0.2.50"}
    assert {f["export_proto"] for f in flows} == {"sflow5"}
    assert {f["time_start_ms"] for f in flows} == {1_700_000_000_500}
    assert d.counters.get("decode_errors_total") == 0


def test_ipv6_extension_header_and_ipv4_fragments():
    l4 = dpkt.udp.UDP(sport=1111, dport=2222, data=b"q" * 10)
    l4.ulen = 18
    hop = bytes([17, 0]) + b"\0" * 6  # hop-by-hop options, next header UDP
    ip6 = struct.pack("!IHBB", 0x60000000, len(hop) + 18, 0, 64) + bytes(16 * [0x20]) + bytes(16 * [0x30])
    frame6 = b"\2" * 12 + b"\x86\xdd" + ip6 + hop + bytes(l4)
    frag = dpkt.ip.IP(src=b"\x0a\0\0\x01", dst=b"\x0a\0\0\x02", p=17, offset=800, data=b"\0" * 20)
    frag.len = 40
    frame_frag = b"\2" * 12 + b"\x08\x00" + bytes(frag)
    _, r = decode(sflow_datagram([
        sflow_flow_sample([sflow_raw_header_record(frame6)], rate=1),
        sflow_flow_sample([sflow_raw_header_record(frame_frag)], rate=1),
    ]))
    raw = sflow_records(r.sflow_samples)
    assert (raw[0]["protocol"], raw[0]["src_port"], raw[0]["dst_port"]) == (17, 1111, 2222)
    assert (raw[1]["protocol"], raw[1]["src_port"], raw[1]["dst_port"]) == (17, 0, 0)  # no ports in a fragment


def test_non_ip_frames_are_counted_not_stored():
    arp = b"\xff" * 6 + b"\2" * 6 + b"\x08\x06" + b"\0" * 28
    d, r = decode(sflow_datagram([sflow_flow_sample([sflow_raw_header_record(arp)], rate=1)]))
    assert len(r.flows) == 0
    assert d.counters.get("sflow_non_ip_samples_total") == 1


def test_sampled_ipv4_record_without_raw_header():
    body = struct.pack("!II", 84, 6) + bytes([10, 0, 0, 9]) + bytes([10, 0, 0, 8]) + struct.pack("!IIII", 80, 5555, 0x18, 0)
    record = struct.pack("!II", 3, len(body)) + body
    _, r = decode(sflow_datagram([sflow_flow_sample([record], rate=10)]))
    (flow,) = r.flows.to_records()
    assert (flow["src_addr"], flow["dst_addr"], flow["src_port"], flow["dst_port"]) == ("10.0.0.9", "10.0.0.8", 80, 5555)
    assert (flow["bytes"], flow["packets"], flow["tcp_flags"]) == (840, 10, 0x18)


def test_truncated_and_lying_lengths_are_counted():
    good = sflow_flow_sample([sflow_raw_header_record(TCP4.frame())], rate=1)
    dgram = sflow_datagram([good, good])
    d, r = decode(dgram[:-10], sflow_datagram([good], agent="192.0.2.51")[:20])
    # the first sample of the cut datagram survives; its second sample and the cut header do not
    assert len(r.flows) == 1
    assert d.counters.get("decode_errors_total", reason="sample_length") == 1
    assert d.counters.get("decode_errors_total", reason="bad_header") == 1


def test_ipv6_agent_address():
    sample = sflow_flow_sample([sflow_raw_header_record(TCP4.frame())], rate=1)
    _, r = decode(sflow_datagram([sample], agent="2001:db8::50"))
    assert r.flows.to_records()[0]["exporter_addr"] == "2001:db8::50"
