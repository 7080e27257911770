"""Send the synthetic network's flows to a collector, as several exporters would.

Each simulated exporter speaks one protocol (NetFlow v5, v9, IPFIX or sFlow) from its own
source address (127.0.0.11, .12, … when the collector is on loopback), so they show up as
distinct exporters. A conversation always goes to the same exporter, both directions.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from ..flows.schema import FlowBatch
from .encode import Encoder, IpfixEncoder, NetflowV5Encoder, NetflowV9Encoder, SflowEncoder
from .traffic import TrafficModel

log = structlog.get_logger(__name__)

PROTOCOLS = ("netflow5", "netflow9", "ipfix", "sflow")


@dataclass
class SimulatorStats:
    datagrams: int = 0
    flows: int = 0
    by_protocol: dict[str, int] = field(default_factory=dict)


class Simulator:
    def __init__(
        self,
        host: str = "127.0.0.1",
        netflow_port: int = 2055,
        ipfix_port: int = 4739,
        sflow_port: int = 6343,
        conversations_per_s: float = 200.0,
        protocols: tuple[str, ...] = PROTOCOLS,
        seed: int = 1,
        sampling_rate: int = 1,
        model: TrafficModel | None = None,
        opening_events: bool = False,
    ):
        unknown = set(protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"unknown protocol(s) {sorted(unknown)}; choose from {', '.join(PROTOCOLS)}")
        self.host = host
        self.rate = conversations_per_s
        self.model = model or TrafficModel(seed=seed, opening_events=opening_events)
        self.stats = SimulatorStats()
        self._stop = threading.Event()
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback if ":" not in host else False
        self.exporters: list[tuple[str, Encoder, socket.socket, tuple[str, int]]] = []
        for i, proto in enumerate(protocols):
            port = {"netflow5": netflow_port, "netflow9": netflow_port, "ipfix": ipfix_port, "sflow": sflow_port}[proto]
            encoder: Encoder
            if proto == "netflow5":
                encoder = NetflowV5Encoder(engine_id=i, sampling_rate=sampling_rate)
            elif proto == "netflow9":
                encoder = NetflowV9Encoder(source_id=i, sampling_rate=sampling_rate)
            elif proto == "ipfix":
                encoder = IpfixEncoder(source_id=i, sampling_rate=sampling_rate)
            else:
                encoder = SflowEncoder(agent=f"192.0.2.{11 + i}", sub_agent=i)
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            if loopback:
                sock.bind((f"127.0.0.{11 + i}", 0))
            self.exporters.append((proto, encoder, sock, (host, port)))

    def stop(self) -> None:
        self._stop.set()

    def step(self, t0_ms: int, t1_ms: int) -> FlowBatch:
        """Generate and send the conversations of one time slice; returns the flows sent."""
        flows = self.model.conversations(t0_ms, t1_ms, self.rate)
        if not len(flows):
            return flows
        # symmetric in source and destination, so both directions go to the same exporter
        key = flows["src_addr"].sum(axis=1, dtype=np.int64) + flows["dst_addr"].sum(axis=1, dtype=np.int64)
        which = key % len(self.exporters)
        for i, (proto, encoder, sock, target) in enumerate(self.exporters):
            part = flows.take(np.flatnonzero(which == i))
            if not len(part):
                continue
            for datagram in encoder.encode(part, t1_ms):
                try:
                    sock.sendto(datagram, target)
                except OSError as exc:  # collector not up yet: keep generating
                    log.debug("send failed", target=target, error=str(exc))
                    continue
                self.stats.datagrams += 1
            self.stats.flows += len(part)
            self.stats.by_protocol[proto] = self.stats.by_protocol.get(proto, 0) + len(part)
        return flows

    def run(self, duration_s: float | None = None, tick_s: float = 0.25) -> SimulatorStats:
        started = time.time()
        last = int(started * 1000)
        while not self._stop.is_set():
            if duration_s is not None and time.time() - started >= duration_s:
                break
            self._stop.wait(tick_s)
            now = int(time.time() * 1000)
            self.step(last, now)
            last = now
        return self.stats

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="sluice-simulator", daemon=True)
        thread.start()
        return thread
