"""Exporter traffic from pcap / pcapng captures, as datagrams for the decoder.

Any UDP port is accepted: the decoder tells the protocols apart by their headers. Link
types: Ethernet (with 802.1Q tags), Linux cooked (SLL, SLL2), raw IP and BSD loopback.
What is skipped (non-UDP packets, IP fragments, unreadable frames) is counted, not hidden.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dpkt

from .datagrams import Datagram

DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_LOOP, DLT_LINUX_SLL, DLT_LINUX_SLL2 = 0, 1, 101, 108, 113, 276
DLT_RAW_ALT = 12


class CaptureError(ValueError):
    pass


def _ip_layer(linktype: int, frame: bytes) -> dpkt.Packet | None:
    if linktype == DLT_EN10MB:
        eth = dpkt.ethernet.Ethernet(frame)
        return eth.data if isinstance(eth.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
    if linktype in (DLT_RAW, DLT_RAW_ALT):
        version = frame[0] >> 4 if frame else 0
        return dpkt.ip.IP(frame) if version == 4 else dpkt.ip6.IP6(frame) if version == 6 else None
    if linktype == DLT_LINUX_SLL:
        sll = dpkt.sll.SLL(frame)
        return sll.data if isinstance(sll.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
    if linktype == DLT_LINUX_SLL2:
        proto = int.from_bytes(frame[0:2], "big")
        payload = frame[20:]
        return dpkt.ip.IP(payload) if proto == 0x0800 else dpkt.ip6.IP6(payload) if proto == 0x86DD else None
    if linktype in (DLT_NULL, DLT_LOOP):
        payload = frame[4:]
        version = payload[0] >> 4 if payload else 0
        return dpkt.ip.IP(payload) if version == 4 else dpkt.ip6.IP6(payload) if version == 6 else None
    raise CaptureError(f"unsupported link type {linktype}")


def read_datagrams(paths: list[Path], skipped: Counter[str]) -> Iterator[Datagram]:
    """UDP payloads of the captures, in file order; ``skipped`` counts what was passed over."""
    for path in paths:
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise CaptureError(f"cannot read {path}: {exc.strerror}") from None
        with handle:
            try:
                magic = handle.read(4)
                handle.seek(0)
                reader = dpkt.pcapng.Reader(handle) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(handle)
            except (ValueError, dpkt.dpkt.Error) as exc:
                raise CaptureError(f"{path} is not a pcap or pcapng capture ({exc})") from None
            linktype = reader.datalink()
            try:
                for ts, frame in reader:
                    try:
                        ip = _ip_layer(linktype, frame)
                    except (dpkt.dpkt.Error, IndexError, ValueError):
                        skipped["unreadable frame"] += 1
                        continue
                    if ip is None:
                        skipped["not IP"] += 1
                        continue
                    if isinstance(ip, dpkt.ip.IP) and (ip.mf or ip.offset):
                        skipped["IP fragment (not reassembled)"] += 1
                        continue
                    udp = ip.data
                    if not isinstance(udp, dpkt.udp.UDP):
                        skipped["not UDP"] += 1
                        continue
                    family = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
                    yield Datagram(bytes(udp.data), socket.inet_ntop(family, ip.src), udp.sport, float(ts))
            except (dpkt.dpkt.NeedData, ValueError) as exc:
                skipped[f"truncated capture {path.name}"] += 1
                del exc
