"""sFlow v5: flow samples (compact and expanded) with raw packet headers, vectorised.

sFlow is a nest of variable-length XDR structures (datagram -> samples -> flow records ->
packet header). Instead of walking one sample at a time, every level is walked for the whole
batch at once: step ``k`` reads the ``k``-th sample of every datagram in one numpy operation,
so the Python loop runs as many times as the deepest nesting, not once per sample. The sampled
packet headers (Ethernet, 802.1Q / QinQ, IPv4, IPv6, TCP, UDP, ICMP) are parsed the same way.

Counter samples are counted (``sflow_counter_samples_total``), not stored as flows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..counters import Counters
from ..flows.schema import SFLOW5, FlowBatch
from .wire import be_uint, gather

FLOW_SAMPLE, COUNTER_SAMPLE, FLOW_SAMPLE_EXPANDED, COUNTER_SAMPLE_EXPANDED = 1, 2, 3, 4
RAW_HEADER, SAMPLED_IPV4, SAMPLED_IPV6 = 1, 3, 4
HEADER_ETHERNET, HEADER_IPV4, HEADER_IPV6 = 1, 11, 12
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
ETH_IPV4, ETH_IPV6 = 0x0800, 0x86DD
MAX_SAMPLES = 1024  # per datagram: more cannot fit in a UDP datagram; guards the walk
MAX_RECORDS = 64  # flow records per sample


@dataclass
class SflowSamples:
    """One row per flow sample, the values as carried (no scaling)."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["sampling_rate"])

    def to_flows(self) -> FlowBatch:
        c = self.columns
        rate = np.maximum(c["sampling_rate"], 1).astype(np.uint64)
        # bytes: the IP length when the sampled header shows it (as NetFlow counts), else the frame
        length = np.where(c["ip_length"] > 0, c["ip_length"], c["frame_length"] - c["stripped"])
        length = np.maximum(length, 0).astype(np.uint64)
        t = c["received_ms"]
        return FlowBatch.build(
            len(self),
            time_start_ms=t,
            time_end_ms=t,
            export_proto=SFLOW5,
            exporter_addr=c["agent"],
            source_id=c["source_id"],
            input_if=c["input_if"],
            output_if=c["output_if"],
            src_addr=c["src_addr"],
            dst_addr=c["dst_addr"],
            src_port=c["src_port"],
            dst_port=c["dst_port"],
            protocol=c["protocol"],
            tcp_flags=c["tcp_flags"],
            bytes=length * rate,
            packets=rate,
            sampling_rate=rate,
        )


class _Buffer:
    """The batch's datagrams back to back, with bounded readers."""

    def __init__(self, payloads: list[bytes]):
        self.buf = np.frombuffer(b"".join(payloads), np.uint8)
        lengths = np.array([len(p) for p in payloads], np.int64)
        self.ends = np.cumsum(lengths)
        self.starts = self.ends - lengths

    def u32(self, offsets: np.ndarray) -> np.ndarray:
        return be_uint(gather(self.buf, offsets, 4)).astype(np.int64)


def decode(
    datagrams: list[tuple[bytes, bytes, int]], counters: Counters, received_ms: list[int] | None = None
) -> SflowSamples:
    """Decode (payload, exporter address, batch index) sFlow datagrams into flow samples."""
    payloads = [d for d, _, _ in datagrams]
    b = _Buffer(payloads)
    n_dg = len(payloads)
    # datagram header: version, agent address type, agent (4/16), sub agent, seq, uptime, count
    afi = b.u32(b.starts + 4)
    addr_len = np.where(afi == 1, 4, np.where(afi == 2, 16, -1))
    agent = np.zeros((n_dg, 16), np.uint8)
    v4 = afi == 1
    agent[v4, 10:12] = 0xFF
    agent[v4, 12:] = gather(b.buf, b.starts[v4] + 8, 4)
    agent[afi == 2] = gather(b.buf, b.starts[afi == 2] + 8, 16)
    after_addr = b.starts + 8 + np.maximum(addr_len, 0)
    sub_agent = b.u32(after_addr)
    n_samples = b.u32(after_addr + 12)
    header_ok = (addr_len > 0) & (after_addr + 16 <= b.ends) & (n_samples <= MAX_SAMPLES)
    bad = int((~header_ok).sum())
    if bad:
        counters.inc("decode_errors_total", bad, proto="sflow5", reason="bad_header")

    # -- walk samples: step k reads sample k of every datagram ------------------------------
    pos = after_addr + 16
    remaining = np.where(header_ok, n_samples, 0)
    s_dg, s_fmt, s_off, s_end = [], [], [], []
    alive = np.flatnonzero(remaining > 0)
    truncated = 0
    while len(alive):
        p = pos[alive]
        fits = p + 8 <= b.ends[alive]
        fmt = b.u32(p)
        length = b.u32(p + 4)
        fits &= p + 8 + length <= b.ends[alive]
        truncated += int((~fits).sum())
        alive, p, fmt, length = alive[fits], p[fits], fmt[fits], length[fits]
        s_dg.append(alive)
        s_fmt.append(fmt)
        s_off.append(p + 8)
        s_end.append(p + 8 + length)
        pos[alive] = p + 8 + length
        remaining[alive] -= 1
        alive = alive[remaining[alive] > 0]
    if truncated:
        counters.inc("decode_errors_total", truncated, proto="sflow5", reason="sample_length")
    if s_dg:
        dg, fmt, off, end = (np.concatenate(x) for x in (s_dg, s_fmt, s_off, s_end))
        order = np.lexsort((off, dg))
        dg, fmt, off, end = dg[order], fmt[order], off[order], end[order]
    else:
        dg = fmt = off = end = np.zeros(0, np.int64)

    counter_samples = int(np.isin(fmt, (COUNTER_SAMPLE, COUNTER_SAMPLE_EXPANDED)).sum())
    if counter_samples:
        counters.inc("sflow_counter_samples_total", counter_samples)
    other = int((~np.isin(fmt, (FLOW_SAMPLE, FLOW_SAMPLE_EXPANDED, COUNTER_SAMPLE, COUNTER_SAMPLE_EXPANDED))).sum())
    if other:
        counters.inc("sflow_unknown_samples_total", other)

    # -- flow sample headers ----------------------------------------------------------------
    is_flow = np.isin(fmt, (FLOW_SAMPLE, FLOW_SAMPLE_EXPANDED))
    dg, fmt, off, end = dg[is_flow], fmt[is_flow], off[is_flow], end[is_flow]
    expanded = fmt == FLOW_SAMPLE_EXPANDED
    # compact: seq, source id, rate, pool, drops, input, output, nrecords (8 words)
    # expanded: seq, id type, id index, rate, pool, drops, in fmt, in, out fmt, out, nrecords (11)
    rate = b.u32(off + np.where(expanded, 12, 8))
    source_id = np.where(expanded, b.u32(off + 8), b.u32(off + 4) & 0xFFFFFF)
    input_if = np.where(expanded, b.u32(off + 28), b.u32(off + 20) & 0x3FFFFFFF)
    output_if = np.where(expanded, b.u32(off + 36), b.u32(off + 24) & 0x3FFFFFFF)
    n_records = b.u32(off + np.where(expanded, 40, 28))
    rec_pos = off + np.where(expanded, 44, 32)
    ok = (rec_pos <= end) & (n_records <= MAX_RECORDS)
    if (~ok).any():
        counters.inc("decode_errors_total", int((~ok).sum()), proto="sflow5", reason="bad_flow_sample")
    n_records = np.where(ok, n_records, 0)

    # -- walk flow records: find the raw packet header (or sampled IPv4/IPv6) record ---------
    n = len(off)
    hdr_off = np.full(n, -1, np.int64)
    hdr_len = np.zeros(n, np.int64)
    hdr_proto = np.zeros(n, np.int64)
    frame_length = np.zeros(n, np.int64)
    stripped = np.zeros(n, np.int64)
    sampled_ip_off = np.full(n, -1, np.int64)
    sampled_ip_fmt = np.zeros(n, np.int64)
    alive = np.flatnonzero(n_records > 0)
    bad_records = 0
    while len(alive):
        p = rec_pos[alive]
        rfmt = b.u32(p)
        rlen = b.u32(p + 4)
        fits = p + 8 + rlen <= end[alive]
        bad_records += int((~fits).sum())
        alive, p, rfmt, rlen = alive[fits], p[fits], rfmt[fits], rlen[fits]
        raw = (rfmt == RAW_HEADER) & (hdr_off[alive] < 0) & (rlen >= 16)
        if raw.any():
            a, q = alive[raw], p[raw] + 8
            hdr_proto[a] = b.u32(q)
            frame_length[a] = b.u32(q + 4)
            stripped[a] = b.u32(q + 8)
            hdr_len[a] = np.minimum(b.u32(q + 12), rlen[raw] - 16)
            hdr_off[a] = q + 16
        sip = np.isin(rfmt, (SAMPLED_IPV4, SAMPLED_IPV6)) & (sampled_ip_off[alive] < 0)
        sip &= rlen >= np.where(rfmt == SAMPLED_IPV4, 32, 56)
        if sip.any():
            sampled_ip_off[alive[sip]] = p[sip] + 8
            sampled_ip_fmt[alive[sip]] = rfmt[sip]
        rec_pos[alive] = p + 8 + rlen
        n_records[alive] -= 1
        alive = alive[n_records[alive] > 0]
    if bad_records:
        counters.inc("decode_errors_total", bad_records, proto="sflow5", reason="flow_record_length")

    cols = _parse_headers(b.buf, hdr_off, hdr_len, hdr_proto)
    _apply_sampled_ip(b, cols, sampled_ip_off, sampled_ip_fmt, hdr_off < 0)
    no_l3 = ~cols.pop("has_ip")
    if no_l3.any():  # e.g. ARP or a non-IP frame: counted, kept out of flows
        counters.inc("sflow_non_ip_samples_total", int(no_l3.sum()))
    keep = ~no_l3
    batch_index = np.array([i for _, _, i in datagrams], np.int64)
    if received_ms is None:
        received_ms = [0] * n_dg
    columns = {
        "agent": agent[dg],
        "sub_agent": sub_agent[dg],
        "source_id": source_id,
        "sampling_rate": rate,
        "input_if": input_if,
        "output_if": output_if,
        "frame_length": frame_length,
        "stripped": stripped,
        "received_ms": np.array(received_ms, np.int64)[dg],
        "datagram": batch_index[dg],
        **cols,
    }
    return SflowSamples({k: v[keep] for k, v in columns.items()})


def _parse_headers(buf: np.ndarray, off: np.ndarray, length: np.ndarray, proto: np.ndarray) -> dict[str, np.ndarray]:
    """Addresses, ports, protocol and flags from sampled packet headers, all at once."""
    n = len(off)
    limit = off + length  # never read past the sampled header

    def u(o: np.ndarray, width: int) -> np.ndarray:
        inside = (o >= 0) & (o + width <= limit)
        v = be_uint(gather(buf, np.where(inside, o, 0), width)).astype(np.int64)
        return np.where(inside, v, 0)

    present = off >= 0
    ethertype = np.where(proto == HEADER_IPV4, ETH_IPV4, np.where(proto == HEADER_IPV6, ETH_IPV6, 0))
    l3 = np.where(proto == HEADER_ETHERNET, off + 14, off)
    eth = present & (proto == HEADER_ETHERNET)
    ethertype = np.where(eth, u(off + 12, 2), ethertype)
    for _ in range(2):  # 802.1Q, then QinQ
        tagged = eth & np.isin(ethertype, VLAN_TAGS)
        ethertype = np.where(tagged, u(l3 + 2, 2), ethertype)
        l3 = np.where(tagged, l3 + 4, l3)

    is4 = present & (ethertype == ETH_IPV4) & (u(l3, 1) >> 4 == 4)
    is6 = present & (ethertype == ETH_IPV6) & (u(l3, 1) >> 4 == 6)
    src = np.zeros((n, 16), np.uint8)
    dst = np.zeros((n, 16), np.uint8)
    src[is4, 10:12] = dst[is4, 10:12] = 0xFF
    src[is4, 12:] = gather(buf, l3[is4] + 12, 4)
    dst[is4, 12:] = gather(buf, l3[is4] + 16, 4)
    src[is6] = gather(buf, l3[is6] + 8, 16)
    dst[is6] = gather(buf, l3[is6] + 24, 16)
    ip_proto = np.where(is4, u(l3 + 9, 1), np.where(is6, u(l3 + 6, 1), 0))
    ip_length = np.where(is4, u(l3 + 2, 2), np.where(is6, u(l3 + 4, 2) + 40, 0))
    fragment = is4 & ((u(l3 + 6, 2) & 0x1FFF) != 0)  # later fragments carry no ports
    l4 = np.where(is4, l3 + (u(l3, 1) & 0x0F) * 4, l3 + 40)
    for _ in range(3):  # IPv6 extension headers: hop-by-hop, routing, destination options
        ext = is6 & np.isin(ip_proto, (0, 43, 60))
        ip_proto = np.where(ext, u(l4, 1), ip_proto)
        l4 = np.where(ext, l4 + (u(l4 + 1, 1) + 1) * 8, l4)
    ports = (is4 | is6) & ~fragment & np.isin(ip_proto, (6, 17, 132))
    icmp = (is4 | is6) & ~fragment & np.isin(ip_proto, (1, 58))
    src_port = np.where(ports, u(l4, 2), 0)
    # ICMP type and code in the destination port, as NetFlow exporters do (type * 256 + code)
    dst_port = np.where(ports, u(l4 + 2, 2), np.where(icmp, u(l4, 2), 0))
    tcp_flags = np.where(ports & (ip_proto == 6), u(l4 + 13, 1), 0)
    return {
        "src_addr": src,
        "dst_addr": dst,
        "src_port": src_port,
        "dst_port": dst_port,
        "protocol": ip_proto,
        "tcp_flags": tcp_flags,
        "ip_length": ip_length,
        "has_ip": is4 | is6,
    }


def _apply_sampled_ip(
    b: _Buffer, cols: dict[str, np.ndarray], off: np.ndarray, fmt: np.ndarray, without_header: np.ndarray
) -> None:
    """Fill samples that carry a sampled IPv4/IPv6 record but no raw header."""
    use = without_header & (off >= 0)
    if not use.any():
        return
    v4 = use & (fmt == SAMPLED_IPV4)
    v6 = use & (fmt == SAMPLED_IPV6)
    for mask, addr_w in ((v4, 4), (v6, 16)):
        if not mask.any():
            continue
        o = off[mask]
        cols["ip_length"][mask] = b.u32(o)
        cols["protocol"][mask] = b.u32(o + 4)
        s = gather(b.buf, o + 8, addr_w)
        d = gather(b.buf, o + 8 + addr_w, addr_w)
        if addr_w == 4:
            cols["src_addr"][mask] = 0
            cols["dst_addr"][mask] = 0
            cols["src_addr"][np.flatnonzero(mask)[:, None], np.arange(10, 12)] = 0xFF
            cols["dst_addr"][np.flatnonzero(mask)[:, None], np.arange(10, 12)] = 0xFF
            cols["src_addr"][mask, 12:] = s
            cols["dst_addr"][mask, 12:] = d
        else:
            cols["src_addr"][mask] = s
            cols["dst_addr"][mask] = d
        p = o + 8 + 2 * addr_w
        cols["src_port"][mask] = b.u32(p)
        cols["dst_port"][mask] = b.u32(p + 4)
        cols["tcp_flags"][mask] = b.u32(p + 8)
        cols["has_ip"][mask] = True
