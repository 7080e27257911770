"""Received datagrams: one (``Datagram``), or a batch of them as arrays (``DatagramBatch``).

The receive loop reads tens of thousands of datagrams a second. Made into one Python object
each (its bytes copied out of the receive buffer into a ``bytes`` of its own, its sender,
its time), they cost about 1.3 us a datagram in the collector's thread: 0.045 CPU-s per
million flows of IPFIX at 30 records a datagram, and the decoder then joined their bytes
into one buffer again to walk them. A ``DatagramBatch`` keeps their bytes end to end in one
buffer, filled straight from the receive buffer, with arrays of where each one starts, its
length and its sender. The decoder walks batches of IPFIX and NetFlow v9 from those arrays
(``batch_scan``) and makes ``Datagram`` objects only for what it reads one at a time
(NetFlow v5, sFlow, a batch with new templates or a malformed message).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

Sender = tuple[str, int]  # the exporter's address (text) and UDP port


@dataclass(slots=True)
class Datagram:
    payload: bytes
    address: str  # exporter IP address (text)
    port: int
    received: float = field(default_factory=time.time)  # Unix seconds


@dataclass(slots=True, eq=False)
class DatagramBatch:
    """Datagrams in the order received: ``data`` their bytes end to end, ``starts`` and
    ``lengths`` where each one lies in it, ``sender`` each one's index in ``senders`` (each
    (address, port) once, in order of first appearance) and ``received`` (Unix seconds)."""

    data: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    sender: np.ndarray
    senders: list[Sender]
    received: np.ndarray

    @classmethod
    def of(cls, datagrams: Iterable[Datagram]) -> DatagramBatch:
        builder = DatagramBatchBuilder()
        for dg in datagrams:
            builder.add(dg.payload, dg.address, dg.port, dg.received)
        return builder.build()

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[Datagram]:
        for payload, (address, port), received in self.items():
            yield Datagram(payload, address, port, received)

    def items(self) -> Iterator[tuple[bytes, Sender, float]]:
        """(payload, sender, received) of each datagram in order: what a walk one datagram
        at a time reads, without a ``Datagram`` object or a numpy scalar each."""
        whole, senders = self.data.tobytes(), self.senders  # one copy; then a slice is one more
        ends = self.starts + self.lengths
        for start, end, sender, received in zip(
            self.starts.tolist(), ends.tolist(), self.sender.tolist(), self.received.tolist(), strict=True
        ):
            yield whole[start:end], senders[sender], received

    def common_start(self) -> bytes | None:
        """The first two bytes (an export protocol's version) if every datagram starts with
        the same two, else None."""
        if not len(self) or int(self.lengths.min()) < 2:
            return None
        first, second = self.data[self.starts], self.data[self.starts + 1]
        if (first != first[0]).any() or (second != second[0]).any():
            return None
        return bytes((int(first[0]), int(second[0])))


class DatagramBatchBuilder:
    """Gathers the datagrams of one batch as they are received; ``build`` once at the end."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._lengths: list[int] = []
        self._sender: list[int] = []
        self._received: list[float] = []
        self._senders: dict[Sender, int] = {}

    def __len__(self) -> int:
        return len(self._lengths)

    def _index(self, sender: Sender) -> int:
        index = self._senders.get(sender)
        if index is None:
            index = self._senders[sender] = len(self._senders)
        return index

    def add(self, payload: bytes, address: str, port: int, received: float) -> None:
        """One datagram."""
        self._data += payload
        self._lengths.append(len(payload))
        self._sender.append(self._index((address, port)))
        self._received.append(received)

    def add_slots(
        self, buffer: memoryview, slot_bytes: int, lengths: list[int], senders: Sender | list[Sender], received: float
    ) -> None:
        """The first ``lengths[i]`` bytes of each slot ``i`` of ``buffer`` (slots of
        ``slot_bytes``), from ``senders`` (one for all, or one each), received at ``received``."""
        data = self._data
        for i, n in enumerate(lengths):  # copied straight in: no bytes object of its own
            data += buffer[i * slot_bytes : i * slot_bytes + n]
        self._lengths.extend(lengths)
        if isinstance(senders, tuple):
            self._sender.extend([self._index(senders)] * len(lengths))
        else:
            self._sender.extend([self._index(sender) for sender in senders])
        self._received.extend([received] * len(lengths))

    def build(self) -> DatagramBatch:
        lengths = np.array(self._lengths, np.int64)
        return DatagramBatch(
            np.frombuffer(self._data, np.uint8),  # the builder's own buffer: it takes no more
            np.cumsum(lengths) - lengths,
            lengths,
            np.array(self._sender, np.int64),
            list(self._senders),
            np.array(self._received, np.float64),
        )
