"""A batch of received datagrams as arrays gives back exactly the datagrams put in: bytes,
sender and time, in order, whichever way they were added."""

from __future__ import annotations

import numpy as np

from sluice.collect.datagrams import Datagram, DatagramBatch, DatagramBatchBuilder

DATAGRAMS = [
    Datagram(b"\x00\x0aone", "192.0.2.1", 2055, 1.0),
    Datagram(b"", "192.0.2.1", 2055, 1.5),  # empty: a zero-length UDP payload is legal
    Datagram(b"\x00\x0a" + bytes(range(256)) * 6, "2001:db8::7", 4739, 2.0),
    Datagram(b"\x00", "192.0.2.1", 9995, 2.5),  # same address, another port: another exporter
    Datagram(b"\x00\x0atwo", "2001:db8::7", 4739, 3.0),
]


def test_a_batch_gives_back_each_datagram_in_order():
    batch = DatagramBatch.of(DATAGRAMS)
    assert len(batch) == len(DATAGRAMS)
    assert list(batch) == DATAGRAMS
    assert list(batch.items()) == [(dg.payload, (dg.address, dg.port), dg.received) for dg in DATAGRAMS]
    # the bytes end to end, each sender once in order of first appearance
    assert batch.data.tobytes() == b"".join(dg.payload for dg in DATAGRAMS)
    assert batch.starts.tolist() == [0, 5, 5, 1543, 1544]
    assert batch.senders == [("192.0.2.1", 2055), ("2001:db8::7", 4739), ("192.0.2.1", 9995)]
    assert batch.sender.tolist() == [0, 0, 1, 2, 1]
    assert batch.received.tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_datagrams_copied_from_receive_slots_are_the_same_as_added_one_by_one():
    slot = 2048
    payloads = [b"\x00\x09abc", b"\x00\x09" + bytes(1000), b"", b"\x00\x09z"]
    slots = bytearray(slot * len(payloads))
    for i, payload in enumerate(payloads):
        slots[i * slot : i * slot + len(payload)] = payload
        slots[i * slot + len(payload) : (i + 1) * slot] = b"\xff" * (slot - len(payload))  # not to be read
    lengths = [len(p) for p in payloads]
    one_sender = DatagramBatchBuilder()
    one_sender.add_slots(memoryview(slots), slot, lengths, ("198.51.100.1", 2055), 7.0)
    assert list(one_sender.build()) == [Datagram(p, "198.51.100.1", 2055, 7.0) for p in payloads]

    senders = [("198.51.100.1", 2055), ("198.51.100.2", 2055), ("198.51.100.1", 2055), ("198.51.100.3", 1)]
    several = DatagramBatchBuilder()
    several.add(b"first", "198.51.100.3", 1, 6.0)
    several.add_slots(memoryview(slots), slot, lengths, senders, 7.0)
    assert len(several) == 5
    batch = several.build()
    expected = [Datagram(b"first", "198.51.100.3", 1, 6.0)]
    expected += [Datagram(p, a, port, 7.0) for p, (a, port) in zip(payloads, senders, strict=True)]
    assert list(batch) == expected
    assert batch.senders == [("198.51.100.3", 1), ("198.51.100.1", 2055), ("198.51.100.2", 2055)]


def test_the_common_start_is_the_version_every_datagram_shares():
    assert DatagramBatch.of([]).common_start() is None
    assert DatagramBatch.of(DATAGRAMS[:1] + DATAGRAMS[4:]).common_start() == b"\x00\x0a"
    assert DatagramBatch.of(DATAGRAMS[:3]).common_start() is None  # an empty one
    assert DatagramBatch.of(DATAGRAMS[3:]).common_start() is None  # one of a single byte
    mixed = [Datagram(b"\x00\x0aab", "192.0.2.1", 1), Datagram(b"\x00\x09ab", "192.0.2.1", 1)]
    assert DatagramBatch.of(mixed).common_start() is None
    empty = DatagramBatch.of([])
    assert len(empty) == 0 and list(empty) == [] and empty.data.dtype == np.uint8
