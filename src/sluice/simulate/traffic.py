"""A synthetic network: a few heavy hosts and many light ones, a web/DNS/SSH/NTP mix over
IPv4 and IPv6, and now and then a port scan or an exfiltration burst.

Every conversation yields two flows (client->server, server->client), as a router sees
them. Generation is vectorised: one call makes all the conversations of a time slice.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from ..flows.schema import FlowBatch

# service: (protocol, server port, share of conversations, median client bytes, median server bytes)
SERVICES = [
    (6, 443, 0.50, 1_500, 40_000),
    (6, 80, 0.10, 800, 15_000),
    (17, 53, 0.25, 70, 160),
    (6, 22, 0.05, 4_000, 6_000),
    (17, 123, 0.05, 76, 76),
    (6, 25, 0.05, 20_000, 1_000),
]
TCP_CLIENT_FLAGS = 0x1B  # SYN ACK PSH FIN
TCP_SERVER_FLAGS = 0x1A | 0x02  # SYN-ACK, PSH, FIN


def _addresses(base: str, count: int) -> np.ndarray:
    net = ipaddress.ip_network(base)
    first = int(net.network_address) + 1
    out = np.zeros((count, 16), np.uint8)
    if net.version == 4:
        out[:, 10:12] = 0xFF
        out[:, 12:] = (np.arange(count, dtype=np.uint64) + first).astype(">u4").view(np.uint8).reshape(-1, 4)
    else:
        prefix = net.network_address.packed[:8]
        out[:, :8] = np.frombuffer(prefix, np.uint8)
        out[:, 8:] = (np.arange(count, dtype=np.uint64) + 1).astype(">u8").view(np.uint8).reshape(-1, 8)
    return out


# public blocks (several countries in the registries' data) for the simulated outside world;
# nothing is ever sent to them: the simulator only writes flow records about them
EXTERNAL_V4 = [
    "8.8.0.0/16",
    "1.0.16.0/20",
    "2.16.0.0/16",
    "5.1.0.0/16",
    "31.13.64.0/18",
    "41.0.0.0/16",
    "45.60.0.0/16",
    "77.88.0.0/18",
    "101.32.0.0/16",
    "133.0.0.0/16",
    "151.101.0.0/16",
    "185.60.216.0/22",
    "193.0.0.0/16",
    "200.160.0.0/16",
    "202.12.27.0/24",
]
EXTERNAL_V6 = ["2001:4860::/32", "2a00:1450::/32", "2a03:2880::/32", "2400:cb00::/32", "2001:67c::/32"]


def _spread(blocks: list[str], count: int) -> np.ndarray:
    """``count`` addresses spread over the blocks (the first hosts of each)."""
    per = -(-count // len(blocks))
    return np.concatenate([_addresses(b, per) for b in blocks])[:count]


def _zipf_weights(n: int, s: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


@dataclass
class Event:
    kind: str  # "port_scan" or "exfiltration"
    time_ms: int
    src: str
    dst: str


class TrafficModel:
    def __init__(
        self,
        seed: int = 1,
        internal_hosts: int = 400,
        external_hosts: int = 5000,
        ipv6_share: float = 0.15,
        scan_every_s: float = 120.0,
        exfil_every_s: float = 300.0,
        opening_events: bool = False,
    ):
        self.rng = np.random.default_rng(seed)
        self.internal4 = _addresses("10.1.0.0/16", internal_hosts)
        self.internal6 = _addresses("fd00:1::/64", max(internal_hosts // 4, 1))
        self.external4 = _spread(EXTERNAL_V4, external_hosts)
        self.external6 = _spread(EXTERNAL_V6, max(external_hosts // 4, 1))
        self.ipv6_share = ipv6_share
        self.scan_every_s = scan_every_s
        self.exfil_every_s = exfil_every_s
        self.events: list[Event] = []
        # a demonstration wants its first scan and exfiltration soon, not at random: seconds
        # after the first slice at which they happen
        self._opening: list[tuple[float, str]] = [(10.0, "port_scan"), (25.0, "exfiltration")] if opening_events else []
        self._first_ms: int | None = None
        shares = np.array([s[2] for s in SERVICES])
        self.service_p = shares / shares.sum()

    def conversations(self, t0_ms: int, t1_ms: int, per_second: float) -> FlowBatch:
        """Flows of the conversations that end within ``[t0_ms, t1_ms)``."""
        rng = self.rng
        dt = max(t1_ms - t0_ms, 1) / 1000
        n = int(rng.poisson(per_second * dt))
        parts = [self._normal(n, t0_ms, t1_ms)]
        if self.scan_every_s and rng.random() < dt / self.scan_every_s:
            parts.append(self._port_scan(t0_ms))
        if self.exfil_every_s and rng.random() < dt / self.exfil_every_s:
            parts.append(self._exfiltration(t0_ms))
        if self._first_ms is None:
            self._first_ms = t0_ms
        while self._opening and t1_ms - self._first_ms >= self._opening[0][0] * 1000:
            kind = self._opening.pop(0)[1]
            parts.append(self._port_scan(t0_ms) if kind == "port_scan" else self._exfiltration(t0_ms))
        return FlowBatch.concat(parts)

    def _pick(self, pool: np.ndarray, n: int) -> np.ndarray:
        return pool[self.rng.choice(len(pool), size=n, p=_zipf_weights(len(pool)))]

    def _normal(self, n: int, t0_ms: int, t1_ms: int) -> FlowBatch:
        rng = self.rng
        if n == 0:
            return FlowBatch.empty()
        six = rng.random(n) < self.ipv6_share
        client = np.where(six[:, None], self._pick(self.internal6, n), self._pick(self.internal4, n))
        server = np.where(six[:, None], self._pick(self.external6, n), self._pick(self.external4, n))
        svc = rng.choice(len(SERVICES), size=n, p=self.service_p)
        table = np.array([s[:2] + s[3:] for s in SERVICES], np.int64)
        proto, sport, cb, sb = table[svc, 0], table[svc, 1], table[svc, 2], table[svc, 3]
        c_bytes = np.maximum(rng.lognormal(np.log(cb), 0.8), 40).astype(np.uint64)
        s_bytes = np.maximum(rng.lognormal(np.log(sb), 1.2), 40).astype(np.uint64)
        c_pkts = np.maximum(c_bytes // 500, 1)
        s_pkts = np.maximum(s_bytes // 1200, 1)
        cport = rng.integers(1024, 65536, n)
        end = rng.integers(t0_ms, max(t1_ms, t0_ms + 1), n)
        duration = np.where(proto == 6, rng.exponential(8_000, n), rng.exponential(50, n)).astype(np.int64)
        start = end - duration
        flags_c = np.where(proto == 6, TCP_CLIENT_FLAGS, 0)
        flags_s = np.where(proto == 6, TCP_SERVER_FLAGS, 0)
        ifc = rng.integers(1, 5, n)
        return FlowBatch.concat(
            [
                FlowBatch.build(
                    n,
                    time_start_ms=start,
                    time_end_ms=end,
                    src_addr=client,
                    dst_addr=server,
                    src_port=cport,
                    dst_port=sport,
                    protocol=proto,
                    tcp_flags=flags_c,
                    bytes=c_bytes,
                    packets=c_pkts,
                    input_if=ifc,
                    output_if=10,
                    sampling_rate=1,
                    dst_as=64500 + svc,
                ),
                FlowBatch.build(
                    n,
                    time_start_ms=start,
                    time_end_ms=end,
                    src_addr=server,
                    dst_addr=client,
                    src_port=sport,
                    dst_port=cport,
                    protocol=proto,
                    tcp_flags=flags_s,
                    bytes=s_bytes,
                    packets=s_pkts,
                    input_if=10,
                    output_if=ifc,
                    sampling_rate=1,
                    src_as=64500 + svc,
                ),
            ]
        )

    def _port_scan(self, t_ms: int) -> FlowBatch:
        rng = self.rng
        scanner = self.external4[rng.integers(len(self.external4))]
        target = self.internal4[rng.integers(len(self.internal4))]
        ports = np.arange(1, 1025)
        n = len(ports)
        self.events.append(Event("port_scan", t_ms, _text(scanner), _text(target)))
        return FlowBatch.build(
            n,
            time_start_ms=t_ms + ports,
            time_end_ms=t_ms + ports,
            src_addr=np.broadcast_to(scanner, (n, 16)),
            dst_addr=np.broadcast_to(target, (n, 16)),
            src_port=int(rng.integers(40000, 60000)),
            dst_port=ports,
            protocol=6,
            tcp_flags=0x02,
            bytes=44,
            packets=1,
            input_if=10,
            output_if=1,
            sampling_rate=1,
        )

    def _exfiltration(self, t_ms: int) -> FlowBatch:
        rng = self.rng
        insider = self.internal4[rng.integers(len(self.internal4))]
        drop = self.external4[-1 - rng.integers(10)]
        n = 20
        self.events.append(Event("exfiltration", t_ms, _text(insider), _text(drop)))
        return FlowBatch.build(
            n,
            time_start_ms=t_ms - 60_000,
            time_end_ms=t_ms,
            src_addr=np.broadcast_to(insider, (n, 16)),
            dst_addr=np.broadcast_to(drop, (n, 16)),
            src_port=rng.integers(1024, 65536, n),
            dst_port=443,
            protocol=6,
            tcp_flags=TCP_CLIENT_FLAGS,
            bytes=50_000_000,
            packets=35_000,
            input_if=1,
            output_if=10,
            sampling_rate=1,
        )


def _text(addr: np.ndarray) -> str:
    from ..flows.schema import addr_text

    return addr_text(bytes(addr))
