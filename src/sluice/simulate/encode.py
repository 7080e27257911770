"""Encoders: canonical flows -> NetFlow v5 / v9, IPFIX and sFlow v5 datagrams, vectorised.

Used by ``sluice simulate`` and the ingest benchmark as a fast exporter, and by tests as an
independent producer for round trips. Records are laid out with numpy structured arrays;
only datagram headers are built per datagram.
"""

from __future__ import annotations

import struct
from typing import Protocol

import numpy as np

from ..collect import netflow5
from ..flows.schema import FlowBatch

V4_PREFIX = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)


def is_ipv4(addr: np.ndarray) -> np.ndarray:
    return (addr[:, :12] == V4_PREFIX).all(axis=1)


def _v4(addr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(addr[:, 12:]).view(">u4").reshape(-1)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


class Encoder(Protocol):
    """What every exporter here does: flows in, datagrams out."""

    def encode(self, flows: FlowBatch, export_ms: int, per_datagram: int = ...) -> list[bytes]: ...


class NetflowV5Encoder:
    """NetFlow v5 PDUs of up to 30 IPv4 records (IPv6 flows cannot be carried and are skipped)."""

    def __init__(self, engine_id: int = 0, sampling_rate: int = 1, boot_ms: int | None = None):
        self.sequence = 0
        self.engine_id = engine_id
        self.sampling_rate = sampling_rate
        self.boot_ms = boot_ms

    def encode(self, flows: FlowBatch, export_ms: int, per_datagram: int = 30) -> list[bytes]:
        v4 = is_ipv4(flows["src_addr"]) & is_ipv4(flows["dst_addr"])
        f = flows.take(np.flatnonzero(v4))
        n = len(f)
        if self.boot_ms is None:
            self.boot_ms = export_ms - 3_600_000
        uptime = export_ms - self.boot_ms
        rec = np.zeros(n, netflow5.RECORD_DTYPE)
        rec["src_addr"] = _v4(f["src_addr"])
        rec["dst_addr"] = _v4(f["dst_addr"])
        rec["input_snmp"] = f["input_if"]
        rec["output_snmp"] = f["output_if"]
        rate = max(self.sampling_rate, 1)
        rec["packets"] = np.minimum(f["packets"] // rate, 0xFFFFFFFF)
        rec["bytes"] = np.minimum(f["bytes"] // rate, 0xFFFFFFFF)
        rec["first_switched_ms"] = (f["time_start_ms"] - self.boot_ms) & 0xFFFFFFFF
        rec["last_switched_ms"] = (f["time_end_ms"] - self.boot_ms) & 0xFFFFFFFF
        rec["src_port"] = f["src_port"]
        rec["dst_port"] = f["dst_port"]
        rec["tcp_flags"] = f["tcp_flags"] & 0xFF
        rec["protocol"] = f["protocol"]
        rec["src_as"] = f["src_as"] & 0xFFFF
        rec["dst_as"] = f["dst_as"] & 0xFFFF
        body = rec.tobytes()
        sampling = (1 << 14 | min(rate, 0x3FFF)) if rate > 1 else 0
        out = []
        per_datagram = min(per_datagram, netflow5.MAX_RECORDS)
        for a, b in _chunks(n, per_datagram):
            header = netflow5.HEADER.pack(
                5,
                b - a,
                uptime & 0xFFFFFFFF,
                export_ms // 1000,
                (export_ms % 1000) * 1_000_000,
                self.sequence,
                0,
                self.engine_id,
                sampling,
            )
            self.sequence = (self.sequence + b - a) & 0xFFFFFFFF
            out.append(header + body[a * 48 : b * 48])
        return out


# (element id, length) of the data templates the template encoders use
_V4_FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (6, 1), (1, 8), (2, 8), (10, 4), (14, 4), (16, 4), (17, 4)]
_V6_FIELDS = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (6, 1), (1, 8), (2, 8), (10, 4), (14, 4), (16, 4), (17, 4)]
_NAMES = {
    8: "src_addr",
    12: "dst_addr",
    27: "src_addr",
    28: "dst_addr",
    7: "src_port",
    11: "dst_port",
    4: "protocol",
    6: "tcp_flags",
    1: "bytes",
    2: "packets",
    10: "input_if",
    14: "output_if",
    16: "src_as",
    17: "dst_as",
    22: "first",
    21: "last",
    152: "start",
    153: "end",
}


def _dtype(fields: list[tuple[int, int]]) -> np.dtype:
    parts: list[tuple[str, str] | tuple[str, str, tuple[int]]] = []
    for ie, length in fields:
        if length == 16:
            parts.append((_NAMES[ie], "u1", (16,)))
        else:
            parts.append((_NAMES[ie], {1: "u1", 2: ">u2", 4: ">u4", 8: ">u8"}[length]))
    return np.dtype(parts)


class _TemplateEncoder:
    """Shared by v9 and IPFIX: two data templates (IPv4, IPv6) and a sampling options template."""

    version = 0
    time_fields: list[tuple[int, int]] = []

    def __init__(
        self, source_id: int = 0, sampling_rate: int = 1, template_every: int = 20, boot_ms: int | None = None
    ):
        self.source_id = source_id
        self.sampling_rate = sampling_rate
        self.template_every = template_every
        self.boot_ms = boot_ms
        self.sequence = 0
        self.datagrams = 0
        self.fields = {256: _V4_FIELDS + self.time_fields, 257: _V6_FIELDS + self.time_fields}
        self.dtypes = {tid: _dtype(f) for tid, f in self.fields.items()}

    def _records(self, tid: int, f: FlowBatch) -> bytes:
        rec = np.zeros(len(f), self.dtypes[tid])
        rate = max(self.sampling_rate, 1)
        for name in rec.dtype.names:
            if name in ("src_addr", "dst_addr"):
                rec[name] = _v4(f[name]) if tid == 256 else f[name]
            elif name in ("bytes", "packets"):
                rec[name] = f[name] // rate
            elif name in ("first", "last"):
                t = f["time_start_ms"] if name == "first" else f["time_end_ms"]
                rec[name] = (t - self.boot_ms) & 0xFFFFFFFF
            elif name in ("start", "end"):
                rec[name] = f["time_start_ms"] if name == "start" else f["time_end_ms"]
            else:
                rec[name] = f[name]
        return rec.tobytes()

    def encode(self, flows: FlowBatch, export_ms: int, per_datagram: int = 30) -> list[bytes]:
        if self.boot_ms is None:
            self.boot_ms = export_ms - 3_600_000
        v4 = is_ipv4(flows["src_addr"]) & is_ipv4(flows["dst_addr"])
        out = []
        for tid, mask in ((256, v4), (257, ~v4)):
            f = flows.take(np.flatnonzero(mask))
            body = self._records(tid, f)
            size = self.dtypes[tid].itemsize
            for a, b in _chunks(len(f), per_datagram):
                sets = []
                if self.datagrams % self.template_every == 0:
                    sets.extend(self._template_sets())
                sets.append(self._set(tid, body[a * size : b * size]))
                out.append(self._message(sets, export_ms, b - a))
                self.datagrams += 1
        return out

    def _template_records(self) -> bytes:
        """The data template records (IPv4 and IPv6), as both v9 and IPFIX lay them out."""
        return b"".join(
            struct.pack("!HH", tid, len(f)) + b"".join(struct.pack("!HH", ie, ln) for ie, ln in f)
            for tid, f in self.fields.items()
        )

    def _template_sets(self) -> list[bytes]:
        raise NotImplementedError

    def _set(self, set_id: int, body: bytes) -> bytes:
        pad = (-len(body)) % 4
        return struct.pack("!HH", set_id, 4 + len(body) + pad) + body + b"\0" * pad

    def _message(self, sets: list[bytes], export_ms: int, records: int) -> bytes:
        raise NotImplementedError


class NetflowV9Encoder(_TemplateEncoder):
    version = 9
    time_fields = [(22, 4), (21, 4)]

    def _template_sets(self) -> list[bytes]:
        body = self._template_records()
        sets = [self._set(0, body)]
        if self.sampling_rate > 1:  # options template 258: scope system; SAMPLING_INTERVAL, ALGORITHM
            opt = struct.pack("!HHH", 258, 4, 8) + struct.pack("!HHHHHH", 1, 4, 34, 4, 35, 1)
            sets.append(self._set(1, opt))
            sets.append(self._set(258, struct.pack("!IIB", 0, self.sampling_rate, 2)))
        return sets

    def _message(self, sets: list[bytes], export_ms: int, records: int) -> bytes:
        count = records + len(sets) - 1  # v9 counts template and options records too
        header = struct.pack(
            "!HHIIII",
            9,
            count,
            (export_ms - self.boot_ms) & 0xFFFFFFFF,  # type: ignore[operator]
            export_ms // 1000,
            self.sequence,
            self.source_id,
        )
        self.sequence = (self.sequence + 1) & 0xFFFFFFFF
        return header + b"".join(sets)


class IpfixEncoder(_TemplateEncoder):
    version = 10
    time_fields = [(152, 8), (153, 8)]

    def _template_sets(self) -> list[bytes]:
        body = self._template_records()
        sets = [self._set(2, body)]
        if self.sampling_rate > 1:  # options template 258: scope observationDomainId; samplingInterval
            opt = struct.pack("!HHH", 258, 2, 1) + struct.pack("!HHHH", 149, 4, 34, 4)
            sets.append(self._set(3, opt))
            sets.append(self._set(258, struct.pack("!II", self.source_id, self.sampling_rate)))
        return sets

    def _message(self, sets: list[bytes], export_ms: int, records: int) -> bytes:
        body = b"".join(sets)
        header = struct.pack("!HHIII", 10, 16 + len(body), export_ms // 1000, self.sequence, self.source_id)
        self.sequence = (self.sequence + records) & 0xFFFFFFFF
        return header + body


class SflowEncoder:
    """sFlow v5 flow samples with raw Ethernet/IP/TCP-UDP headers, one sample per flow.

    Each flow of the batch becomes one sampled packet whose sampling rate is the flow's
    packet count (so the collector's scaled estimate equals the flow's packets); its frame
    length is the flow's average packet size.
    """

    def __init__(self, agent: str = "192.0.2.10", sub_agent: int = 0, boot_ms: int | None = None):
        import ipaddress

        self.agent = ipaddress.ip_address(agent)
        self.sub_agent = sub_agent
        self.sequence = 0
        self.sample_sequence = 0
        self.boot_ms = boot_ms

    def encode(self, flows: FlowBatch, export_ms: int, per_datagram: int = 8) -> list[bytes]:
        if self.boot_ms is None:
            self.boot_ms = export_ms - 3_600_000
        n = len(flows)
        if n == 0:
            return []
        headers = _packet_headers(flows)  # (n, 128) padded, lengths
        mat, hlen, ip_len = headers
        packets = np.maximum(flows["packets"], 1).astype(np.int64)
        frame = np.maximum(ip_len + 14, 64)
        # flow sample (format 1): seq, source id, rate, pool, drops, input, output, nrecords,
        # then one raw packet header record (format 1): proto, frame length, stripped, header length
        hdr_words = np.zeros((n, 14), ">u4")
        hdr_words[:, 0] = self.sample_sequence + np.arange(n)
        hdr_words[:, 1] = flows["input_if"] & 0xFFFFFF
        hdr_words[:, 2] = packets
        hdr_words[:, 3] = packets
        hdr_words[:, 5] = flows["input_if"]
        hdr_words[:, 6] = flows["output_if"]
        hdr_words[:, 7] = 1
        hdr_words[:, 8] = 1  # record format: raw packet header
        padded = (hlen + 3) // 4 * 4
        hdr_words[:, 9] = 16 + padded  # record length
        hdr_words[:, 10] = 1  # header protocol: Ethernet
        hdr_words[:, 11] = frame
        hdr_words[:, 12] = 4  # stripped (FCS)
        hdr_words[:, 13] = hlen
        self.sample_sequence += n
        fixed = hdr_words.view(np.uint8).reshape(n, 56)
        samples = [
            struct.pack("!II", 1, 56 + int(p)) + fixed[i].tobytes() + mat[i, : int(p)].tobytes()
            for i, p in enumerate(padded.tolist())
        ]
        agent_type = 1 if self.agent.version == 4 else 2
        out = []
        uptime = (export_ms - self.boot_ms) & 0xFFFFFFFF
        for a, b in _chunks(n, per_datagram):
            head = (
                struct.pack("!II", 5, agent_type)
                + self.agent.packed
                + struct.pack("!IIII", self.sub_agent, self.sequence, uptime, b - a)
            )
            self.sequence += 1
            out.append(head + b"".join(samples[a:b]))
        return out


def _packet_headers(flows: FlowBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ethernet + IPv4/IPv6 + TCP/UDP/ICMP header bytes for the first packet of each flow."""
    n = len(flows)
    v4 = is_ipv4(flows["src_addr"])
    proto = flows["protocol"].astype(np.int64)
    l4len = np.where(proto == 6, 20, np.where(proto == 132, 12, 8))  # TCP, SCTP common header, UDP/ICMP
    avg = (flows["bytes"] // np.maximum(flows["packets"], 1)).astype(np.int64)
    ip_len = np.maximum(avg, np.where(v4, 20, 40) + l4len)
    mat = np.zeros((n, 128), np.uint8)
    mat[:, 0:6] = [0x02, 0, 0, 0, 0, 0x01]
    mat[:, 6:12] = [0x02, 0, 0, 0, 0, 0x02]
    et = np.where(v4, 0x0800, 0x86DD)
    mat[:, 12] = et >> 8
    mat[:, 13] = et & 0xFF
    # IPv4
    mat[v4, 14] = 0x45
    mat[v4, 16] = (ip_len[v4] >> 8) & 0xFF
    mat[v4, 17] = ip_len[v4] & 0xFF
    mat[v4, 22] = 64
    mat[v4, 23] = proto[v4]
    mat[v4, 26:30] = flows["src_addr"][v4, 12:]
    mat[v4, 30:34] = flows["dst_addr"][v4, 12:]
    # IPv6
    v6 = ~v4
    payload = ip_len - 40
    mat[v6, 14] = 0x60
    mat[v6, 18] = (payload[v6] >> 8) & 0xFF
    mat[v6, 19] = payload[v6] & 0xFF
    mat[v6, 20] = proto[v6]
    mat[v6, 21] = 64
    mat[v6, 22:38] = flows["src_addr"][v6]
    mat[v6, 38:54] = flows["dst_addr"][v6]
    l4 = np.where(v4, 34, 54)
    rows = np.arange(n)
    ports = np.isin(proto, (6, 17, 132))
    sp = flows["src_port"].astype(np.int64)
    dp = flows["dst_port"].astype(np.int64)
    for k, v in ((0, sp >> 8), (1, sp & 0xFF), (2, dp >> 8), (3, dp & 0xFF)):
        mat[rows[ports], l4[ports] + k] = v[ports]
    icmp = np.isin(proto, (1, 58))
    mat[rows[icmp], l4[icmp]] = dp[icmp] >> 8  # ICMP type/code from the NetFlow convention
    mat[rows[icmp], l4[icmp] + 1] = dp[icmp] & 0xFF
    tcp = proto == 6
    mat[rows[tcp], l4[tcp] + 12] = 0x50
    mat[rows[tcp], l4[tcp] + 13] = flows["tcp_flags"][tcp] & 0xFF
    hlen = l4 + l4len
    return mat, hlen, ip_len
