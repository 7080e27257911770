"""Column batches between the server and a session worker through shared memory.

A pipe carries pickled bytes: the sender serialises a batch, the kernel copies it through a
buffer of a few hundred kB at a time (a wake-up of the reader each time), and the receiver
rebuilds it - about 0.3 CPU-s per million session rows for a round trip, as much as the
tracker itself. A ``BatchRing`` is one direction of that traffic in a shared memory file
(``memfd``: no ``/dev/shm`` mount needed): the producer copies the columns in, the pipe
carries only where they are, and the consumer copies them out (``take``) or reads them
where they lie (``borrow``), then releases the space. One producer and one consumer per
ring, in order; a batch larger than the ring goes through the pipe as before.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: bytes of the ring header: the consumer's released position (an int64), on its own line
_HEADER = 64
_ALIGN = 64
#: one direction's room: a few batches (1,024 datagrams of 30 flows are about 3.5 MB)
RING_BYTES = 32 << 20

Layout = list[tuple[str, str, tuple[int, ...], int]]  # (column, dtype, shape, offset)


class RingClosed(Exception):
    """The other side is gone: the ring will not be released any more."""


class BatchRing:
    def __init__(self, fd: int, size: int = RING_BYTES):
        self.fd = fd
        self.size = size
        self._map = mmap.mmap(fd, _HEADER + size)
        self._released = np.frombuffer(self._map, np.int64, 1, 0)  # written by the consumer only
        self._data = np.frombuffer(self._map, np.uint8, size, _HEADER)
        self._head = 0  # the producer's next position (positions only grow; offset = position % size)
        self.closed = False

    @classmethod
    def create(cls, size: int = RING_BYTES) -> BatchRing:
        fd = os.memfd_create("sluice-batches", os.MFD_CLOEXEC)
        os.ftruncate(fd, _HEADER + size)
        return cls(fd, size)

    def put(
        self, columns: dict[str, np.ndarray], alive: Callable[[], bool] | None = None, rows: np.ndarray | None = None
    ) -> Any:
        """Copy ``columns`` in (only their ``rows``, in that order, if given: taken straight
        into the ring, without a copy of its own first); returns what the consumer's ``take``
        needs, or None if they do not fit in the ring at all (send them some other way). Waits
        while the consumer has not released enough; raises ``RingClosed`` if ``alive`` says it
        is gone."""
        # plain integers and the arrays' own methods: numpy's ``prod`` and ``take`` wrappers
        # cost about 14 us a column, 0.26 ms a batch of 18 columns whatever its rows; a
        # worker gets a batch from every collector batch
        n = None if rows is None else len(rows)
        shapes = [column.shape if n is None else (n, *column.shape[1:]) for column in columns.values()]
        nbytes = [math.prod(shape) * c.itemsize for shape, c in zip(shapes, columns.values(), strict=True)]
        sizes = [(size + _ALIGN - 1) // _ALIGN * _ALIGN for size in nbytes]
        total = sum(sizes)
        if total > self.size:
            return None
        position = self._head
        if position % self.size + total > self.size:  # no wrapping inside a batch: skip the end
            position += self.size - position % self.size
        end = position + total
        waited = 0.0
        while end - int(self._released[0]) > self.size:
            if self.closed or (alive is not None and waited > 0.1 and not alive()):
                raise RingClosed("the batch ring's consumer is gone")
            time.sleep(0.0005)
            waited += 0.0005
        offset = position % self.size
        layout: Layout = []
        for (name, column), shape, used, size in zip(columns.items(), shapes, nbytes, sizes, strict=True):
            place = self._data[offset : offset + used]
            if rows is None:
                place[:] = np.ascontiguousarray(column).reshape(-1).view(np.uint8)
            else:  # "clip": a bounds check per row, where "raise" would take into a buffer first
                column.take(rows, axis=0, out=place.view(column.dtype).reshape(shape), mode="clip")
            layout.append((name, column.dtype.str, shape, offset))
            offset += size
        self._head = end
        return end, layout

    def take(self, placed: Any) -> dict[str, np.ndarray]:
        """The columns ``put`` placed (copies: the space is released at once)."""
        columns = {name: column.copy() for name, column in self.view(placed).items()}
        self.release(placed)
        return columns

    def view(self, placed: Any) -> dict[str, np.ndarray]:
        """The columns ``put`` placed, as views of the ring: read them, or copy what is kept,
        before ``release``, after which the producer may write over them."""
        _, layout = placed
        columns = {}
        for name, dtype, shape, offset in layout:
            dt = np.dtype(dtype)
            columns[name] = self._data[offset : offset + math.prod(shape) * dt.itemsize].view(dt).reshape(shape)
        return columns

    def release(self, placed: Any) -> None:
        """Give back the space of the batch ``placed`` (and of those placed before it)."""
        self._released[0] = placed[0]

    def holds(self, column: np.ndarray) -> bool:
        """Whether ``column`` may lie in the ring's space (a view of it)."""
        return bool(np.may_share_memory(column, self._data))

    def close(self) -> None:
        """Stop waiting in ``put`` and give the file back (the mapping goes with the object)."""
        self.closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass


def pack(
    ring: BatchRing,
    columns: dict[str, np.ndarray],
    alive: Callable[[], bool] | None = None,
    rows: np.ndarray | None = None,
) -> tuple:
    """What to send for ``columns`` (their ``rows``, if given): their place in ``ring``, or
    the columns themselves when they do not fit in it."""
    placed = ring.put(columns, alive, rows)
    if placed is not None:
        return ("ring", placed)
    return ("inline", columns if rows is None else {name: np.take(c, rows, axis=0) for name, c in columns.items()})


def unpack(ring: BatchRing, payload: tuple) -> dict[str, np.ndarray]:
    kind, body = payload
    return ring.take(body) if kind == "ring" else body


def borrow(ring: BatchRing, payload: tuple) -> tuple[dict[str, np.ndarray], Callable[[], None]]:
    """``unpack`` without the copy: the columns (views of the ring, or the inline ones), and
    what gives their space back once nothing made from them is a view of them."""
    kind, body = payload
    if kind != "ring":
        return body, lambda: None
    return ring.view(body), lambda: ring.release(body)
