"""NetFlow v5: 24-byte header, fixed 48-byte records, decoded for a whole batch at once."""

from __future__ import annotations

import struct

import numpy as np

from .templates import PieceKeys, RawRecords
from .wire import ipv4_to_mapped

HEADER = struct.Struct("!HHIIIIBBH")
HEADER_LEN = HEADER.size  # 24
RECORD_LEN = 48
MAX_RECORDS = 30  # Cisco's limit for one v5 PDU

RECORD_DTYPE = np.dtype(
    [
        ("src_addr", ">u4"),
        ("dst_addr", ">u4"),
        ("nexthop", ">u4"),
        ("input_snmp", ">u2"),
        ("output_snmp", ">u2"),
        ("packets", ">u4"),
        ("bytes", ">u4"),
        ("first_switched_ms", ">u4"),
        ("last_switched_ms", ">u4"),
        ("src_port", ">u2"),
        ("dst_port", ">u2"),
        ("pad1", "u1"),
        ("tcp_flags", "u1"),
        ("protocol", "u1"),
        ("tos", "u1"),
        ("src_as", ">u2"),
        ("dst_as", ">u2"),
        ("src_mask", "u1"),
        ("dst_mask", "u1"),
        ("pad2", ">u2"),
    ]
)
assert RECORD_DTYPE.itemsize == RECORD_LEN

#: ``HEADER`` as a numpy record, to read a batch's headers at once (``read_headers``)
HEADER_DTYPE = np.dtype(
    [
        ("version", ">u2"),
        ("count", ">u2"),
        ("sys_uptime_ms", ">u4"),
        ("export_s", ">u4"),
        ("export_ns", ">u4"),
        ("sequence", ">u4"),
        ("engine_type", "u1"),
        ("engine_id", "u1"),
        ("sampling", ">u2"),
    ]
)
assert HEADER_DTYPE.itemsize == HEADER_LEN

_UINT_KEYS = (
    "input_snmp",
    "output_snmp",
    "packets",
    "bytes",
    "first_switched_ms",
    "last_switched_ms",
    "src_port",
    "dst_port",
    "tcp_flags",
    "protocol",
    "src_as",
    "dst_as",
)


class V5Header:
    __slots__ = ("count", "sys_uptime_ms", "export_s", "export_ns", "sequence", "engine_type", "engine_id", "sampling")

    def __init__(self, data: bytes):
        (
            _,
            self.count,
            self.sys_uptime_ms,
            self.export_s,
            self.export_ns,
            self.sequence,
            self.engine_type,
            self.engine_id,
            self.sampling,
        ) = HEADER.unpack_from(data)


def check(data: bytes) -> tuple[V5Header | None, str | None, int]:
    """Validate one v5 datagram: (header, error reason or None, trailing byte count)."""
    if len(data) < HEADER_LEN:
        return None, "truncated_header", 0
    header = V5Header(data)
    if header.count == 0 or header.count > MAX_RECORDS:
        # counts above 30 are impossible in v5; what follows them is not trustworthy
        return None, "bad_count", 0
    need = HEADER_LEN + header.count * RECORD_LEN
    if len(data) < need:
        return None, "truncated_records", 0
    return header, None, len(data) - need


def read_headers(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The headers of the datagrams at ``starts`` in ``data`` (each at least ``HEADER_LEN``
    bytes), as ``HEADER_DTYPE`` records."""
    return data[starts[:, None] + np.arange(HEADER_LEN)].view(HEADER_DTYPE).reshape(-1)


def well_formed(headers: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per datagram (``read_headers``' headers, the datagrams' lengths): whether ``check``
    finds it sound, and its trailing bytes."""
    counts = headers["count"].astype(np.int64)
    need = HEADER_LEN + counts * RECORD_LEN
    return (counts > 0) & (counts <= MAX_RECORDS) & (lengths >= need), lengths - need


def decode(datagrams: list[tuple[bytes, V5Header, bytes, int]]) -> RawRecords:
    """Decode (payload, header, exporter address, batch index) tuples into one column batch."""
    # the headers read from the datagrams' own bytes, as the batch read does (``read_headers``)
    headers = np.frombuffer(b"".join(d[:HEADER_LEN] for d, _, _, _ in datagrams), HEADER_DTYPE)
    body = b"".join(d[HEADER_LEN : HEADER_LEN + h.count * RECORD_LEN] for d, h, _, _ in datagrams)
    return records_of(
        np.frombuffer(body, np.uint8),
        headers,
        np.frombuffer(b"".join(e for _, _, e, _ in datagrams), np.uint8).reshape(-1, 16),
        np.array([i for _, _, _, i in datagrams], np.int64),
        PieceKeys.of([(e, 0) for _, _, e, _ in datagrams]),
    )


def records_of(
    body: np.ndarray, headers: np.ndarray, exporter: np.ndarray, index: np.ndarray, keys: PieceKeys
) -> RawRecords:
    """The records of sound datagrams as one column batch: ``body`` their records end to end,
    and per datagram its header (``HEADER_DTYPE``), exporter address (16 bytes), index in
    its batch and exporter key."""
    counts = headers["count"].astype(np.int64)
    rec = np.frombuffer(body, RECORD_DTYPE)
    piece = np.repeat(np.arange(len(headers)), counts)
    columns: dict[str, np.ndarray] = {k: rec[k].astype(np.uint64) for k in _UINT_KEYS}
    columns["src_addr"] = ipv4_to_mapped(rec["src_addr"])
    columns["dst_addr"] = ipv4_to_mapped(rec["dst_addr"])
    columns["engine_type"] = headers["engine_type"].astype(np.uint64)[piece]
    columns["engine_id"] = headers["engine_id"].astype(np.uint64)[piece]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    export_ms = headers["export_s"].astype(np.int64) * 1000 + headers["export_ns"].astype(np.int64) // 1_000_000
    meta = {
        "source_id": np.zeros(len(rec), np.int64),
        "export_ms": export_ms[piece],
        "sys_uptime_ms": headers["sys_uptime_ms"].astype(np.int64)[piece],
        # v5 carries sampling in the header: low 14 bits interval, top 2 bits mode
        "v5_sampling": (headers["sampling"].astype(np.int64) & 0x3FFF)[piece],
        "exporter": exporter[piece],
        "piece": piece,
        "seq": (index[piece] << 36) | (np.arange(len(rec)) - first[piece]),
    }
    return RawRecords(5, "flow", None, columns, {}, meta, keys)
