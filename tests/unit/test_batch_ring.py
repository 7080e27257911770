"""Batches between the server and its session workers through shared memory."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sluice.flows.batch_ring import BatchRing, RingClosed, borrow, pack, unpack
from sluice.flows.schema import SessionBatch
from sluice.flows.shards import _owned


def columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = SessionBatch.build(
        n, session_id=rng.integers(0, 2**63, n, dtype=np.uint64),
        cln_addr=rng.integers(0, 256, (n, 16), dtype=np.uint8), cln_country=np.array([b"NL", b"US"] * n, "S2")[:n],
        cln_bytes=rng.integers(0, 2**40, n, dtype=np.uint64))  # fmt: skip
    return {**batch.columns, "_new": rng.random(n) < 0.5}


def test_batches_come_out_as_they_went_in_across_many_wraps_of_the_ring():
    ring = BatchRing.create(1 << 20)
    consumer = BatchRing(ring.fd, 1 << 20)  # the other process maps the same file
    for i in range(200):  # about 40 times round the ring
        sent = columns(int(np.random.default_rng(i).integers(0, 1500)), i)
        got = unpack(consumer, pack(ring, sent))
        assert got.keys() == sent.keys()
        for name in sent:
            assert got[name].dtype == sent[name].dtype and np.array_equal(got[name], sent[name]), name
    ring.close()


def test_rows_of_a_batch_are_taken_straight_into_the_ring_as_take_would_take_them():
    ring = BatchRing.create(1 << 20)
    consumer = BatchRing(ring.fd, 1 << 20)
    rng = np.random.default_rng(7)
    for i in range(100):  # round the ring many times, with rows in any order, repeated, or none
        sent = columns(int(rng.integers(1, 1500)), i)
        n = len(sent["session_id"])
        rows = rng.integers(0, n, int(rng.integers(0, n + 1)))
        got = unpack(consumer, pack(ring, sent, rows=rows))
        for name, column in sent.items():
            expected = np.take(column, rows, axis=0)
            assert got[name].dtype == column.dtype and got[name].shape == expected.shape, name
            assert np.array_equal(got[name], expected), name
    small = BatchRing.create(1 << 16)  # too large for the ring: the rows go through the pipe
    sent = columns(5000, 2)
    rows = np.arange(4999, -1, -2)
    payload = pack(small, sent, rows=rows)
    assert payload[0] == "inline" and np.array_equal(unpack(small, payload)["cln_addr"], sent["cln_addr"][rows])
    ring.close()
    small.close()


def test_a_borrowed_batch_is_read_in_place_and_its_space_comes_back_only_when_given_back():
    """A worker reads its flows where they lie in the ring. Until it gives their space back,
    the producer cannot write over them (it waits); after, it can, which is why whatever
    the worker keeps must be its own memory (``_owned``)."""
    size = 1 << 18
    ring = BatchRing.create(size)
    consumer = BatchRing(ring.fd, size)
    sent = columns(300, 3)  # about 41 kB: six of them fill the ring
    lent, give_back = borrow(consumer, pack(ring, sent))
    assert all(consumer.holds(column) for column in lent.values())  # views, not copies
    for name in sent:
        assert np.array_equal(lent[name], sent[name]), name
    kept = _owned(SessionBatch({name: lent[name] for name in SessionBatch.COLUMNS}), consumer)
    assert not any(consumer.holds(column) for column in kept.columns.values())
    mine = SessionBatch.build(2)
    assert _owned(mine, consumer) is mine  # nothing of the ring in it: not copied

    filler = columns(300, 4)
    done = threading.Event()
    placed: list[tuple] = []

    def produce() -> None:
        for _ in range(8):  # round the ring, over the borrowed batch's space
            placed.append(pack(ring, filler))
        done.set()

    # the producer fills the ring and then waits: the borrowed space is not written over
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(0.3)
    assert not done.is_set()
    for name in sent:
        assert np.array_equal(lent[name], sent[name]), name
    give_back()
    deadline = time.time() + 5
    while not done.is_set() and time.time() < deadline:
        # the consumer takes what the producer placed meanwhile, as a worker would
        if placed:
            consumer.release(placed[-1][1])
        time.sleep(0.01)
    assert done.is_set()
    assert any(not np.array_equal(lent[name], sent[name]) for name in sent)  # written over now
    for name in SessionBatch.COLUMNS:  # what was made the worker's own is unchanged
        assert np.array_equal(kept[name], sent[name]), name
    ring.close()
    inline = columns(5, 5)
    lent, give_back = borrow(consumer, ("inline", inline))
    assert lent is inline
    give_back()


def test_a_batch_larger_than_the_ring_goes_whole_through_the_pipe_instead():
    ring = BatchRing.create(1 << 16)
    sent = columns(5000, 1)
    payload = pack(ring, sent)
    assert payload[0] == "inline"
    assert np.array_equal(unpack(ring, payload)["session_id"], sent["session_id"])


def test_the_producer_waits_for_the_consumer_and_gives_up_when_it_is_gone():
    ring = BatchRing.create(1 << 20)
    consumer = BatchRing(ring.fd, 1 << 20)
    first = ring.put(columns(4000, 1))  # about 0.55 MB of the 1 MB
    done = threading.Event()
    threading.Thread(target=lambda: (ring.put(columns(4000, 2)), done.set()), daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set()  # no room until the first is taken
    consumer.take(first)
    assert done.wait(5)
    with pytest.raises(RingClosed):  # the third never fits: the consumer is gone
        ring.put(columns(4000, 3), alive=lambda: False)
