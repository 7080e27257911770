"""UDP flow listeners: receive datagrams in batches and hand decoded flow batches on.

One thread serves every listening socket. It blocks until some socket is readable, then
drains readable sockets until the batch is full (``batch_max_datagrams``) or the oldest
datagram has waited ``batch_max_wait_ms`` (with N session workers, N times as many and as
long: ``batch_bounds``); the whole batch is decoded at once. The kernel
receive buffer (``receive_buffer_bytes``) absorbs bursts while a batch is decoded; what it
cannot hold the kernel drops and ``/proc/net/udp`` counts (``socket_drops``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from ..config import CollectSettings
from ..flows.schema import FlowBatch
from ..lifecycle import Worker
from .datagrams import DatagramBatch, DatagramBatchBuilder
from .decoder import Decoder
from .overload import OverloadMeter
from .receive import BatchReceiver

log = structlog.get_logger(__name__)

#: Linux's SO_RCVBUFFORCE (asm-generic/socket.h): Python's socket module does not name it, and
#: without it root too is held to ``net.core.rmem_max`` (4 MB on Debian). The kernel allows
#: twice the size asked and counts 4.3 KB per IPFIX datagram of 30 records on loopback: 4 MB
#: hold 60 ms at 1 M flows/s, 32 MB about half a second
SO_RCVBUFFORCE: int | None = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)

#: while a batch fills, the receive loop looks at its sockets this often
LINGER_STEP_S = 0.005
#: how long a batch may gather for several session workers at most (unless configured longer)
SHARED_BATCH_MAX_WAIT_S = 0.1

FlowSink = Callable[[FlowBatch], None]


def batch_bounds(settings: CollectSettings, workers: int) -> tuple[int, float]:
    """(datagrams, seconds) a batch gathers at most. Each of N session workers gets about 1/N
    of a batch, and every batch costs its worker some fixed work (messages, calls, the
    tracker's passes): with batches of the configured size, that work per flow grew with N.
    So the batch is N times as large and may gather N times as long (up to
    ``SHARED_BATCH_MAX_WAIT_S``, or the configured wait if longer), and a worker's share is
    about one worker's batch."""
    n = max(1, workers)
    wait = settings.batch_max_wait_ms / 1000
    return settings.batch_max_datagrams * n, max(wait, min(wait * n, SHARED_BATCH_MAX_WAIT_S))


@dataclass
class Listener:
    name: str  # "netflow", "ipfix", "sflow"
    port: int
    sock: socket.socket
    receiver: BatchReceiver


class Collector:
    """Binds the configured UDP ports and decodes what arrives, until ``stop()``."""

    def __init__(self, settings: CollectSettings, decoder: Decoder, sinks: list[FlowSink], workers: int = 1):
        """``workers``: the session workers a batch is shared out among (``batch_bounds``)."""
        self.settings = settings
        self.workers = workers
        self.decoder = decoder
        self.counters = decoder.counters
        self.sinks = sinks
        self.listeners: list[Listener] = []
        self._worker = Worker("sluice-collector", self.run, join_timeout_s=5)
        self.overload = OverloadMeter(self.counters)
        self._warned_buffer = False

    # -- life cycle -------------------------------------------------------------------------

    def bind(self) -> list[Listener]:
        wanted = [
            ("netflow", self.settings.netflow_port),
            ("ipfix", self.settings.ipfix_port),
            ("sflow", self.settings.sflow_port),
        ]
        for name, port in wanted:
            if port == 0:
                continue
            sock = self._open(port, name)
            self.listeners.append(Listener(name, port, sock, BatchReceiver(sock)))
            log.info("listening", protocol=name, address=self.settings.listen, port=port)
        return self.listeners

    def _open(self, port: int, name: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.settings.listen else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 exporters too
        asked = self.settings.receive_buffer_bytes
        forced = False
        if SO_RCVBUFFORCE is not None:  # as root, beyond net.core.rmem_max
            with contextlib.suppress(OSError):  # EPERM: not root
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, asked)
                forced = True
        if not forced:  # as much as the kernel allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, asked)
        try:
            sock.bind((self.settings.listen, port))
        except OSError as exc:
            sock.close()
            hint = "another collector already listens there" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise OSError(
                exc.errno,
                f"cannot listen for {name} on UDP {self.settings.listen}:{port}: {hint}; "
                f"choose another port with --{name}-port",
            ) from None
        sock.setblocking(False)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
        if granted < asked and not self._warned_buffer:
            self._warned_buffer = True
            log.warning(
                "receive buffer smaller than asked: bursts may be dropped (sluice_socket_drops)",
                port=port,
                asked=asked,
                granted=granted,
                fix=f"sysctl -w net.core.rmem_max={asked} (or run with CAP_NET_ADMIN)",
            )
        return sock

    def start(self) -> None:
        if not self.listeners:
            self.bind()
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        for listener in self.listeners:
            listener.sock.close()

    # -- receive loop -----------------------------------------------------------------------

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        for listener in self.listeners:
            selector.register(listener.sock, selectors.EVENT_READ, listener)
        max_batch, max_wait = batch_bounds(self.settings, self.workers)
        last_maintenance = time.monotonic()
        while not self._worker.stopping.is_set():
            ready = selector.select(timeout=0.25)
            now = time.monotonic()
            if now - last_maintenance > 1.0:
                self._update_socket_drops()
                self.overload.sample()
                self.decoder.pending.expire(time.time())
                last_maintenance = now
            if not ready:
                continue
            batch = DatagramBatchBuilder()
            received = time.time()
            deadline = now + max_wait
            while True:
                self._drain(batch, max_batch, received)
                remaining = deadline - time.monotonic()
                if len(batch) >= max_batch or remaining <= 0:
                    break
                # let datagrams gather in the socket buffer: waking for each one as it came
                # cost more CPU than decoding it (a wake-up, a select and a failed read each)
                time.sleep(min(remaining, LINGER_STEP_S))
            if len(batch):
                self._process(batch.build())
        selector.close()

    def _drain(self, batch: DatagramBatchBuilder, max_batch: int, received: float) -> None:
        for listener in self.listeners:
            while len(batch) < max_batch:
                try:
                    got, cut = listener.receiver.receive(batch, max_batch - len(batch), received)
                except OSError as exc:  # e.g. ICMP errors surfacing on the socket
                    self.counters.inc("receive_errors_total", reason=exc.errno or "unknown")
                    break
                if cut:  # larger than any UDP datagram: cannot happen, but never silently
                    self.counters.inc("receive_errors_total", cut, reason="truncated")
                if got < listener.receiver.slots:
                    break  # the socket is empty (or the batch full)

    def _process(self, batch: DatagramBatch) -> None:
        if not len(batch):
            return
        started = time.perf_counter()
        try:
            result = self.decoder.decode(batch)
        except Exception:  # the decoder isolates bad datagrams itself; this is the last guard
            log.exception("decoder failed on a batch", datagrams=len(batch))
            self.counters.inc("decode_errors_total", len(batch), proto="unknown", reason="internal_error")
            return
        self.counters.inc("batches_total")
        log.debug(
            "batch decoded",
            datagrams=len(batch),
            flows=len(result.flows),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        for sink in self.sinks:
            try:
                sink(result.flows)
            except Exception:
                log.exception("flow sink failed", sink=getattr(sink, "__name__", repr(sink)))
                self.counters.inc("sink_errors_total")

    def _update_socket_drops(self) -> None:
        drops = socket_drops({listener.sock.fileno(): listener.port for listener in self.listeners})
        for port, value in drops.items():
            self.counters.set("socket_drops", value, port=port)


def socket_drops(fd_ports: dict[int, int]) -> dict[int, int]:
    """Kernel drop counts of our sockets, from /proc/net/udp{,6} (empty where unreadable)."""
    inodes: dict[int, int] = {}
    for fd, port in fd_ports.items():
        try:
            inodes[os.fstat(fd).st_ino] = port
        except OSError:
            continue
    out: dict[int, int] = {}
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 13 and int(parts[9]) in inodes:
                out[inodes[int(parts[9])]] = int(parts[-1])
    return out
