"""Ground-truth packet captures for tests: known conversations, written as pcap with dpkt.

``expected_flows`` computes, independently of Sluice, what each direction of each
conversation carried (packets, IP bytes), keyed by (src, dst, sport, dport, proto).
"""

from __future__ import annotations

import ipaddress
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class Packet:
    time: float
    src: str
    dst: str
    sport: int
    dport: int
    proto: int  # 6, 17, 1, 58
    payload: int = 0
    flags: int = 0

    def frame(self) -> bytes:
        v6 = ":" in self.src
        if self.proto == 6:
            l4 = dpkt.tcp.TCP(sport=self.sport, dport=self.dport, flags=self.flags, seq=1, ack=1 if self.flags & ACK else 0,
                              data=b"x" * self.payload)
        elif self.proto == 17:
            l4 = dpkt.udp.UDP(sport=self.sport, dport=self.dport, data=b"u" * self.payload)
            l4.ulen = 8 + self.payload
        else:  # ICMP echo: type/code ride in dport as type*256+code
            icmp_cls = dpkt.icmp6.ICMP6 if v6 else dpkt.icmp.ICMP
            l4 = icmp_cls(type=self.dport >> 8, code=self.dport & 0xFF, data=b"\0\1\0\1" + b"p" * self.payload)
        if v6:
            ip = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, self.src),
                              dst=socket.inet_pton(socket.AF_INET6, self.dst), nxt=self.proto, hlim=64, data=l4)
            ip.plen = len(bytes(l4))
            ether_type = dpkt.ethernet.ETH_TYPE_IP6
        else:
            ip = dpkt.ip.IP(src=socket.inet_aton(self.src), dst=socket.inet_aton(self.dst), p=self.proto, ttl=64,
                            data=l4)
            ip.len = 20 + len(bytes(l4))
            ether_type = dpkt.ethernet.ETH_TYPE_IP
        # let dpkt compute checksums over the pseudo header
        if self.proto in (6, 17):
            l4.sum = 0
        eth = dpkt.ethernet.Ethernet(src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\x02", type=ether_type, data=ip)
        return bytes(eth)

    def ip_length(self) -> int:
        return len(self.frame()) - 14


@dataclass
class Conversation:
    client: str
    server: str
    cport: int
    sport: int
    proto: int
    start: float
    exchanges: int = 3  # request/response rounds
    request: int = 100
    response: int = 1000
    gap: float = 0.05
    packets: list[Packet] = field(default_factory=list)

    def build(self) -> "Conversation":
        t = self.start
        c, s = self.client, self.server
        p = self.proto
        out = []
        if p == 6:
            out += [Packet(t, c, s, self.cport, self.sport, p, 0, SYN),
                    Packet(t + 0.001, s, c, self.sport, self.cport, p, 0, SYN | ACK),
                    Packet(t + 0.002, c, s, self.cport, self.sport, p, 0, ACK)]
            t += 0.003
        for i in range(self.exchanges):
            if p in (1, 58):  # echo request / reply
                req_type = 0x0800 if p == 1 else 0x8000
                rep_type = 0x0000 if p == 1 else 0x8100
                out.append(Packet(t, c, s, 0, req_type, p, self.request))
                out.append(Packet(t + 0.001, s, c, 0, rep_type, p, self.request))
            else:
                out.append(Packet(t, c, s, self.cport, self.sport, p, self.request, PSH | ACK if p == 6 else 0))
                out.append(Packet(t + 0.001, s, c, self.sport, self.cport, p, self.response, PSH | ACK if p == 6 else 0))
            t += self.gap
        if p == 6:
            out += [Packet(t, c, s, self.cport, self.sport, p, 0, FIN | ACK),
                    Packet(t + 0.001, s, c, self.sport, self.cport, p, 0, FIN | ACK),
                    Packet(t + 0.002, c, s, self.cport, self.sport, p, 0, ACK)]
        self.packets = out
        return self


def standard_conversations(seed: int = 7, base_time: float = 1_700_000_000.0, count: int = 40) -> list[Conversation]:
    """A mix of TCP and UDP over IPv4 and IPv6, plus ICMP echoes."""
    rng = random.Random(seed)
    convs = []
    for i in range(count):
        kind = i % 5
        start = base_time + i * 0.2
        if kind == 0:
            convs.append(Conversation(f"10.0.{i}.1", "10.9.0.80", 40000 + i, 80, 6, start,
                                      exchanges=rng.randint(1, 6), request=rng.randint(50, 400),
                                      response=rng.randint(200, 1400)))
        elif kind == 1:
            convs.append(Conversation(f"10.0.{i}.2", "10.9.0.53", 50000 + i, 53, 17, start,
                                      exchanges=rng.randint(1, 3), request=rng.randint(30, 60),
                                      response=rng.randint(60, 400)))
        elif kind == 2:
            convs.append(Conversation(f"2001:db8::{i:x}:1", "2001:db8::443", 41000 + i, 443, 6, start,
                                      exchanges=rng.randint(1, 6), request=rng.randint(50, 400),
                                      response=rng.randint(200, 1400)))
        elif kind == 3:
            convs.append(Conversation(f"2001:db8::{i:x}:2", "2001:db8::53", 51000 + i, 53, 17, start,
                                      exchanges=rng.randint(1, 3), request=rng.randint(30, 60),
                                      response=rng.randint(60, 400)))
        else:
            convs.append(Conversation(f"10.0.{i}.3", "10.9.0.1", 0, 0, 1, start, exchanges=rng.randint(1, 4),
                                      request=56))
    return [c.build() for c in convs]


def write_pcap(path: Path, conversations: list[Conversation]) -> list[Packet]:
    packets = sorted((p for c in conversations for p in c.packets), key=lambda p: p.time)
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for p in packets:
            writer.writepkt(p.frame(), ts=p.time)
    return packets


def expected_flows(packets: list[Packet]) -> dict[tuple, list[int]]:
    """(src, dst, sport, dport, proto) -> [packets, IP bytes], addresses normalised as text."""
    out: dict[tuple, list[int]] = {}
    for p in packets:
        key = (str(ipaddress.ip_address(p.src)), str(ipaddress.ip_address(p.dst)), p.sport, p.dport, p.proto)
        entry = out.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += p.ip_length()
    return out


def write_udp_pcap(path: Path, datagrams: list[bytes], src: str = "192.0.2.1", sport: int = 40000,
                   dst: str = "127.0.0.1", dport: int = 2055, start: float = 1_700_000_000.0) -> None:
    """Exporter datagrams as an Ethernet/IPv4/UDP capture, one second apart."""
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=dpkt.pcap.DLT_EN10MB)
        for i, payload in enumerate(datagrams):
            udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
            udp.ulen = 8 + len(payload)
            ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, ttl=64, data=udp)
            ip.len = 20 + len(udp)
            eth = dpkt.ethernet.Ethernet(src=b"\x02\0\0\0\0\x01", dst=b"\x02\0\0\0\0\x02",
                                         type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
            writer.writepkt(bytes(eth), ts=start + i)


def scan_pcap(path, target: str, ports: int, base: float) -> None:
    write_pcap(path, [Conversation("10.5.0.66", target, 50000 + i, 1000 + i, 6, base + i * 0.01, exchanges=0).build()
                      for i in range(ports)])
