"""Builders for hand-made NetFlow v9 / IPFIX / sFlow datagrams in tests."""

from __future__ import annotations

import ipaddress
import struct

EXPORT_S = 1_700_000_000


def _set(set_id: int, body: bytes, pad_to: int = 4) -> bytes:
    pad = (-len(body)) % pad_to
    return struct.pack("!HH", set_id, 4 + len(body) + pad) + body + b"\0" * pad


def ipfix_field(ie: int, length: int, pen: int = 0) -> bytes:
    if pen:
        return struct.pack("!HHI", ie | 0x8000, length, pen)
    return struct.pack("!HH", ie, length)


def ipfix_template_set(templates: list[tuple[int, list[tuple]]]) -> bytes:
    body = b"".join(struct.pack("!HH", tid, len(fields)) + b"".join(ipfix_field(*f) for f in fields)
                    for tid, fields in templates)
    return _set(2, body)


def ipfix_options_template_set(tid: int, scope: list[tuple], fields: list[tuple]) -> bytes:
    body = struct.pack("!HHH", tid, len(scope) + len(fields), len(scope)) + b"".join(
        ipfix_field(*f) for f in scope + fields)
    return _set(3, body)


def ipfix_withdrawal_set(tid: int) -> bytes:
    return _set(2, struct.pack("!HH", tid, 0))


def data_set(tid: int, records: list[bytes], pad_to: int = 4) -> bytes:
    return _set(tid, b"".join(records), pad_to)


def ipfix_message(sets: list[bytes], sequence: int = 0, domain: int = 1, export_s: int = EXPORT_S) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_s, sequence, domain) + body


def v9_template_set(templates: list[tuple[int, list[tuple[int, int]]]]) -> bytes:
    body = b"".join(struct.pack("!HH", tid, len(f)) + b"".join(struct.pack("!HH", *x) for x in f)
                    for tid, f in templates)
    return _set(0, body)


def v9_options_template_set(tid: int, scope: list[tuple[int, int]], fields: list[tuple[int, int]]) -> bytes:
    body = struct.pack("!HHH", tid, 4 * len(scope), 4 * len(fields)) + b"".join(
        struct.pack("!HH", *x) for x in scope + fields)
    return _set(1, body)


def v9_message(sets: list[bytes], sequence: int = 0, source_id: int = 1, uptime_ms: int = 100_000,
               export_s: int = EXPORT_S) -> bytes:
    return struct.pack("!HHIIII", 9, len(sets), uptime_ms, export_s, sequence, source_id) + b"".join(sets)


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


def varlen(value: bytes) -> bytes:
    """IPFIX variable-length encoding: one length byte, or 255 and two length bytes."""
    if len(value) < 255:
        return bytes([len(value)]) + value
    return b"\xff" + struct.pack("!H", len(value)) + value


# -- sFlow v5 -------------------------------------------------------------------------------

def sflow_datagram(samples: list[bytes], agent: str = "192.0.2.50", sequence: int = 1, sub_agent: int = 0,
                   uptime_ms: int = 1000) -> bytes:
    ip = ipaddress.ip_address(agent)
    head = struct.pack("!II", 5, 1 if ip.version == 4 else 2) + ip.packed
    head += struct.pack("!IIII", sub_agent, sequence, uptime_ms, len(samples))
    return head + b"".join(samples)


def sflow_raw_header_record(frame: bytes, frame_length: int | None = None, stripped: int = 4,
                            header_protocol: int = 1) -> bytes:
    pad = (-len(frame)) % 4
    body = struct.pack("!IIII", header_protocol, frame_length if frame_length is not None else len(frame) + 4,
                       stripped, len(frame)) + frame + b"\0" * pad
    return struct.pack("!II", 1, len(body)) + body


def sflow_flow_sample(records: list[bytes], rate: int, input_if: int = 1, output_if: int = 2,
                      expanded: bool = False, sequence: int = 1, source_index: int = 7) -> bytes:
    if expanded:
        body = struct.pack("!IIIIIIIIIII", sequence, 0, source_index, rate, rate * 10, 0, 0, input_if, 0,
                           output_if, len(records))
        fmt = 3
    else:
        body = struct.pack("!IIIIIIII", sequence, source_index, rate, rate * 10, 0, input_if, output_if,
                           len(records))
        fmt = 1
    body += b"".join(records)
    return struct.pack("!II", fmt, len(body)) + body


def sflow_counter_sample() -> bytes:
    body = struct.pack("!III", 1, 7, 0)  # sequence, source id, zero counter records
    return struct.pack("!II", 2, len(body)) + body
