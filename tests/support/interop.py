"""Helpers for tests with real exporters and collectors: free ports, a UDP tee, nfcapd, an
in-process Sluice collector."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from sluice.collect.decoder import Decoder, DecoderConfig
from sluice.collect.listener import Collector
from sluice.config import CollectSettings
from sluice.flows.schema import FlowBatch

from .env import require_tool
from .waiting import wait_until


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UdpTee:
    """Forwards every datagram it receives, unchanged, to each target (same export to all)."""

    def __init__(self, targets: list[tuple[str, int]]):
        self.targets = targets
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.datagrams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except socket.timeout:
                continue
            self.datagrams += 1
            for target in self.targets:
                self.out.sendto(data, target)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        self.out.close()


class SluiceCollector:
    """A real Sluice collector on a UDP port, in this process, gathering the flows it decodes."""

    def __init__(self, **decoder_config: object):
        self.port = free_udp_port()
        self.sflow_port = free_udp_port()
        settings = CollectSettings(listen="127.0.0.1", netflow_port=self.port, ipfix_port=0,
                                   sflow_port=self.sflow_port, batch_max_wait_ms=5)
        self.decoder = Decoder(DecoderConfig(**decoder_config))  # type: ignore[arg-type]
        self.batches: list[FlowBatch] = []
        self.collector = Collector(settings, self.decoder, [self.batches.append])
        self.collector.start()

    def flows(self) -> FlowBatch:
        return FlowBatch.concat(self.batches)

    def wait_for(self, datagrams: int, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.decoder.counters.get("datagrams_total") >= datagrams:
                time.sleep(0.1)
                return
            time.sleep(0.05)

    def close(self) -> None:
        self.collector.stop()


def _udp_sockets(port: int) -> list[list[str]]:
    """The /proc/net/udp{,6} lines (split) of the sockets bound to UDP ``port``."""
    suffix = f":{port:04X}"
    found = []
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(path) as table:
            found += [fields for fields in (line.split() for line in list(table)[1:]) if fields[1].endswith(suffix)]
    return found


def udp_bound(port: int) -> bool:
    """Whether some process has bound UDP ``port`` (as /proc/net/udp{,6} list it)."""
    return bool(_udp_sockets(port))


def udp_unread_bytes(port: int) -> int:
    """Bytes waiting in the receive queues of the sockets bound to UDP ``port`` (not yet read
    by their process)."""
    return sum(int(fields[4].split(":")[1], 16) for fields in _udp_sockets(port))


@contextlib.contextmanager
def nfcapd(workdir: Path, program: str = "nfcapd") -> Iterator[tuple[int, list[dict]]]:
    """nfcapd (or sfcapd for sFlow) on a free port; after the block, the list holds the flows
    nfdump reads back."""
    binary = require_tool(program)
    nfdump_bin = require_tool("nfdump")
    port = free_udp_port()
    flowdir = workdir / program
    flowdir.mkdir()
    proc = subprocess.Popen([binary, "-p", str(port), "-b", "127.0.0.1", "-w", str(flowdir), "-t", "3600"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    records: list[dict] = []
    try:
        # a fixed half second was not always enough on a loaded CI machine: the exporter then
        # sent before nfcapd listened, and nfdump read back "No matching flows"
        wait_until(lambda: udp_bound(port), timeout=15.0, interval=0.02, what=f"{program} listening on UDP {port}")
        yield port, records
        # stopped only once it has read every datagram sent: on a loaded CI machine it could
        # still hold them unread at SIGTERM, and its file then had "No matching flows"
        wait_until(lambda: udp_unread_bytes(port), done=lambda n: n == 0, timeout=10.0, interval=0.02,
                   what=f"{program} to read every datagram waiting on UDP {port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    for path in sorted(flowdir.glob("nfcapd.*")):
        out = subprocess.run([nfdump_bin, "-r", str(path), "-o", "json"], capture_output=True, text=True, check=True)
        # a file without flows reads back as "[ No matching flows ]", which is not JSON: none,
        # and the comparison with the other collector says what is missing
        records.extend([] if "No matching flows" in out.stdout else json.loads(out.stdout or "[]"))


def nfdump_totals(records: list[dict]) -> dict[tuple, list[int]]:
    """nfdump JSON records -> (src, dst, sport, dport, proto) -> [packets, bytes]."""
    out: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.get("type") != "FLOW":
            continue
        src = r.get("src4_addr") or r.get("src6_addr")
        dst = r.get("dst4_addr") or r.get("dst6_addr")
        if "icmp_type" in r:  # nfdump shows ICMP type/code instead of ports (dst port = type*256+code)
            sport, dport = 0, int(r["icmp_type"]) * 256 + int(r["icmp_code"])
        else:
            sport, dport = int(r["src_port"]), int(r["dst_port"])
        key = (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), sport, dport, int(r["proto"]))
        out[key][0] += int(r["in_packets"])
        out[key][1] += int(r["in_bytes"])
    return dict(out)


def icmp_portless(totals: dict[tuple, list[int]]) -> dict[tuple, list[int]]:
    """ICMP flows keyed without ports, for comparisons with nfdump: nfdump 1.7.1 shows ICMP
    type/code 0/0 for pmacctd's v5 records although the wire carries type 8 in the destination
    port (checked by decoding the same datagrams). The full key is still checked against the pcap."""
    out: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for (src, dst, sport, dport, proto), (packets, nbytes) in totals.items():
        key = (src, dst, 0, 0, proto) if proto in (1, 58) else (src, dst, sport, dport, proto)
        out[key][0] += packets
        out[key][1] += nbytes
    return dict(out)


def sluice_totals(flows: FlowBatch) -> dict[tuple, list[int]]:
    out: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for r in flows.to_records():
        key = (r["src_addr"], r["dst_addr"], r["src_port"], r["dst_port"], r["protocol"])
        out[key][0] += r["packets"]
        out[key][1] += r["bytes"]
    return dict(out)


def run(cmd: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def export_to_both(tmp_path: Path, run_exporter, reference: str = "nfcapd") -> tuple[SluiceCollector, list[dict]]:
    """Run ``run_exporter(port)`` against a UDP tee feeding a fresh Sluice collector and the
    reference collector (``nfcapd``, or ``sfcapd`` for sFlow) the same datagrams. Returns
    Sluice (stopped) and the reference's records; asserts Sluice saw every datagram cleanly."""
    sluice = SluiceCollector()
    try:
        with nfcapd(tmp_path, reference) as (reference_port, records):
            target = sluice.sflow_port if reference == "sfcapd" else sluice.port
            tee = UdpTee([("127.0.0.1", reference_port), ("127.0.0.1", target)])
            try:
                run_exporter(tee.port)
                sluice.wait_for(tee.datagrams or 1)
            finally:
                tee.close()
    finally:
        sluice.close()
    assert tee.datagrams > 0, "the exporter sent nothing"
    assert sluice.decoder.counters.get("datagrams_total") == tee.datagrams
    assert sluice.decoder.counters.get("decode_errors_total") == 0
    return sluice, records
