"""Reading many datagrams per system call (``recvmmsg``) gives what ``recvfrom`` gives: the
same payloads, senders and order, socket errors raised and counted."""

from __future__ import annotations

import errno
import socket
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from sluice.collect import receive
from sluice.collect.datagrams import DatagramBatchBuilder
from sluice.collect.decoder import Decoder
from sluice.collect.listener import Collector, Listener, batch_bounds
from sluice.collect.receive import BatchReceiver, sender_text
from sluice.config import CollectSettings
from sluice.flows.schema import FlowBatch
from sluice.simulate.encode import NetflowV5Encoder

# sizes from empty to the largest IPv4 UDP payload
SIZES = [0, 1, 29, 1400, 1500, 9000, 65_507, 3, 700]


def _socket(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def _send(family: int, host: str, port: int, senders: int, count: int) -> list[tuple[bytes, int]]:
    """``count`` datagrams from each of ``senders`` sockets, interleaved; (payload, sender port)."""
    socks = []
    for _ in range(senders):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        socks.append(s)
    sent = []
    for i in range(count):
        for k, s in enumerate(socks):
            payload = bytes([i % 251, k]) * (SIZES[(i + k) % len(SIZES)] // 2)
            s.sendto(payload, (host, port))
            sent.append((payload, s.getsockname()[1]))
    for s in socks:
        s.close()
    return sent


def _receive_all(receiver: BatchReceiver, expected: int, limit: int = 1000) -> list[tuple[bytes, str, int]]:
    builder = DatagramBatchBuilder()
    deadline = time.monotonic() + 10
    while len(builder) < expected and time.monotonic() < deadline:
        got, cut = receiver.receive(builder, limit, 1.5)
        assert got <= min(limit, receiver.slots) and cut == 0
        if not got:
            time.sleep(0.01)
    out = list(builder.build())
    assert all(d.received == 1.5 for d in out)
    return [(d.payload, d.address, d.port) for d in out]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_every_datagram_arrives_whole_with_its_sender_in_order(family, host, batched):
    sock = _socket(family, host)
    receiver = BatchReceiver(sock, slots=8, use_recvmmsg=batched)
    assert receiver.batched == batched
    assert receiver.receive(DatagramBatchBuilder(), 100, 0.0) == (0, 0)  # nothing waits
    sent = _send(family, host, sock.getsockname()[1], senders=3, count=20)
    got = _receive_all(receiver, len(sent), limit=5)  # several calls, each cut by the limit
    assert got == [(payload, host, port) for payload, port in sent]
    assert receiver.receive(DatagramBatchBuilder(), 100, 0.0) == (0, 0)
    sock.close()


def test_a_socket_error_is_raised_then_counted_by_the_collector():
    """An ICMP port-unreachable surfaces on a connected socket's next read, as it can on a
    listener's; the collector counts it by errno and goes on."""
    for batched in (True, False):
        sock = _socket(socket.AF_INET, "127.0.0.1")
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        sock.connect(("127.0.0.1", port))
        sock.send(b"x")
        time.sleep(0.05)
        receiver = BatchReceiver(sock, use_recvmmsg=batched)
        with pytest.raises(OSError) as raised:
            receiver.receive(DatagramBatchBuilder(), 100, 0.0)
        assert raised.value.errno == errno.ECONNREFUSED
        sock.send(b"x")
        time.sleep(0.05)
        collector = Collector(CollectSettings(), Decoder(), [])
        collector.listeners = [Listener("ipfix", port, sock, receiver)]
        batch = DatagramBatchBuilder()
        collector._drain(batch, 100, 0.0)
        assert len(batch) == 0
        assert collector.counters.get("receive_errors_total", reason=errno.ECONNREFUSED) == 1
        sock.close()


def test_senders_read_from_socket_addresses():
    v4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 2055) + socket.inet_aton("192.0.2.7") + bytes(8)
    assert sender_text(v4) == ("192.0.2.7", 2055)
    head = struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 4739) + bytes(4)
    mapped = head + socket.inet_pton(socket.AF_INET6, "::ffff:198.51.100.9")
    assert sender_text(mapped) == ("198.51.100.9", 4739)  # an IPv4 exporter on a dual-stack socket
    v6 = head + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert sender_text(v6) == ("2001:db8::1", 4739)


def test_recvmmsg_is_there_on_linux():
    """The server's receive path on its platform: a libc without recvmmsg would fall back to
    one call a datagram, silently slower."""
    assert receive._RECVMMSG is not None


def test_the_slots_cost_memory_only_where_datagrams_are_written():
    """Each receiver has 16 MB of slots; zeroed up front they were 16 MB resident per socket."""

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    sock = _socket(socket.AF_INET, "127.0.0.1")
    before = resident_mb()
    receivers = [BatchReceiver(sock) for _ in range(4)]
    assert resident_mb() - before < 8
    sent = _send(socket.AF_INET, "127.0.0.1", sock.getsockname()[1], senders=1, count=40)
    assert len(_receive_all(receivers[0], len(sent))) == len(sent)
    sock.close()


def _has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN (bit 12 of its effective capabilities)."""
    effective = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff:"))
    return bool(int(effective.split()[1], 16) >> 12 & 1)


def test_listening_socket_gets_the_whole_receive_buffer_as_root():
    """Root gets the buffer asked beyond ``net.core.rmem_max`` (``SO_RCVBUFFORCE``, which
    Python's socket module does not name: the server had 4 MB where it asked for 32); anyone
    else gets what the kernel allows, and a warning that says how to raise it."""
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    asked = max(2 * rmem_max, 8 << 20)  # more than SO_RCVBUF alone may give
    collector = Collector(CollectSettings(listen="127.0.0.1", receive_buffer_bytes=asked), Decoder(), [])
    sock = collector._open(0, "ipfix")
    try:
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
    finally:
        sock.close()
    if _has_net_admin():  # root, as CI runs
        assert granted == asked
        assert not collector._warned_buffer
    else:
        assert granted <= rmem_max
        assert collector._warned_buffer


def test_a_batch_grows_with_the_session_workers_it_is_shared_among():
    """Each of N workers gets about 1/N of a batch, and every batch costs a worker some fixed
    work: the batch is N times as large and may gather N times as long (up to a tenth of a
    second unless configured longer), so that a worker's share is one worker's batch."""
    settings = CollectSettings(batch_max_datagrams=1000, batch_max_wait_ms=20)
    assert batch_bounds(settings, 1) == (1000, 0.02)
    assert batch_bounds(settings, 2) == (2000, 0.04)
    assert batch_bounds(settings, 16) == (16000, 0.1)
    slow = CollectSettings(batch_max_datagrams=10, batch_max_wait_ms=500)
    assert batch_bounds(slow, 4) == (40, 0.5)  # never shorter than configured


@pytest.mark.parametrize(("workers", "batches"), [(1, [40 * 30, 20 * 30]), (2, [60 * 30])])
def test_the_receive_loop_gathers_the_larger_batch(workers, batches):
    """60 datagrams waiting, 40 at most a batch: one worker's loop decodes 40 then 20; for two
    workers it takes all 60 at once."""
    now_ms = int(time.time() * 1000)
    v4 = np.frombuffer(socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.1"), np.uint8)
    flows = FlowBatch.build(60 * 30, src_addr=v4, dst_addr=v4, protocol=6, src_port=40000, dst_port=443,
                            bytes=100, packets=1, time_start_ms=now_ms - 1000, time_end_ms=now_ms)  # fmt: skip
    datagrams = NetflowV5Encoder().encode(flows, now_ms, per_datagram=30)
    assert len(datagrams) == 60
    seen: list[int] = []
    settings = CollectSettings(listen="127.0.0.1", netflow_port=0, ipfix_port=0, sflow_port=0,
                               batch_max_datagrams=40, batch_max_wait_ms=200)  # fmt: skip
    collector = Collector(settings, Decoder(), [lambda batch: seen.append(len(batch))], workers=workers)
    sock = collector._open(0, "netflow")
    collector.listeners = [Listener("netflow", sock.getsockname()[1], sock, BatchReceiver(sock))]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for datagram in datagrams:
        sender.sendto(datagram, sock.getsockname()[:2])
    sender.close()
    collector.start()
    try:
        deadline = time.monotonic() + 10
        while sum(seen) < 60 * 30 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        collector.stop()
    assert seen == batches
