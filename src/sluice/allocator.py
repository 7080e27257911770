"""How the server's processes take memory: numpy's huge pages, glibc's malloc giving freed
memory back to the system, and arrays that grow in place."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import mmap
import os
import time

import numpy as np


def use_huge_pages(on: bool) -> None:
    """Whether numpy asks the kernel for transparent huge pages (``madvise``) for each array of
    4 MB or more; numpy does by default. Off by default: on the benchmark machine (a VM) the
    kernel's work to find and clear a huge page at the first touch of each array cost more
    than the TLB misses it saves. One core kept 1.0 M new conversations a second in 5 of 7
    paired runs with it off and in 1 of 7 with it on, and alerting cost a quarter less."""
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "1" if on else "0"  # worker processes read it at import
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    set_madvise = getattr(multiarray, "_set_madvise_hugepage", None)
    if set_madvise is not None:
        set_madvise(on)


#: the heap is trimmed once it holds this much free (``trim_heap``): what is left between
#: trims is reused by the next allocations
TRIM_FREE_BYTES = 64 << 20
#: a process trims its heap (``trim_heap``) at most this often, when it holds
#: ``TRIM_FREE_BYTES`` free: pages given back cost a fault each when the heap takes them
#: again (4 us on a VM whose host backs memory lazily, seen here), and a trim holds each
#: arena's lock while it walks it (12-120 ms here). With the 20 alert definitions at
#: 1.1 M flows/s over two workers, each trim cost about 1,000 datagrams dropped: trims every
#: 10 s received 99.68 and 99.70 %, none in the run 99.90 and 99.96 %
HEAP_TRIM_INTERVAL_S = 300.0

# glibc's ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size come from the heap, where a freed one is reused; larger ones are
#: mapped and unmapped each time (32 MB: the largest glibc takes)
MMAP_FROM_BYTES = 32 << 20
#: free memory at the top of a heap that glibc keeps instead of giving it back at each free
KEEP_FREE_BYTES = 256 << 20


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (all ten fields: it is returned by value), summed over
    every arena (the alert and maintenance threads allocate in their own)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
        )
    ]  # fmt: skip


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            if hasattr(_libc, "mallinfo2"):
                _libc.mallinfo2.restype = _MallInfo2
    return _libc if _libc is not None and hasattr(_libc, "malloc_trim") else None


def heap_free_bytes() -> int | None:
    """Bytes free inside glibc's heap (``mallinfo2``); None where that cannot be told."""
    libc = _glibc()
    info = getattr(libc, "mallinfo2", None)
    return None if info is None else int(info().fordblks)


def trim_heap(min_free_bytes: int = 0) -> bool:
    """Give the free pages of glibc's heap back to the system (``malloc_trim``) if it holds
    at least ``min_free_bytes`` free; returns whether it trimmed.

    glibc keeps what is freed in its heap for reuse. An alert evaluation of 200,000 session
    rows makes temporaries of a few MB each, and the windows grow their per-entity arrays by
    copying: with a million hosts in 20 definitions the heap held 190 MB free beside the
    arrays (``bench/alerts.py``), and a trim took 21 ms. Fixing glibc's mmap threshold
    instead, so that such blocks are unmapped at once, cost a quarter more CPU per flow
    (every temporary faulted its pages in again). Elsewhere than glibc: nothing."""
    libc = _glibc()
    if libc is None:
        return False
    free = heap_free_bytes()
    if free is not None and free < min_free_bytes:
        return False
    libc.malloc_trim(0)
    return True


def keep_freed_memory() -> bool:
    """Let glibc keep what the process frees for its next allocations, rather than give it
    back to the system at once; the process gives it back itself, every
    ``HEAP_TRIM_INTERVAL_S`` at most, once ``TRIM_FREE_BYTES`` are free (``trim_heap``).
    Returns whether glibc took the setting (elsewhere than glibc: nothing to do).

    By default glibc adapts: a block larger than the largest it has seen freed is mapped, and
    the heap's top is given back as soon as more than twice that is free. A session worker
    takes and frees a few MB per batch: its heap shrank and grew again about 150 times a
    second, and every page it took again was a page fault - 8,600 a second per worker at
    1.0 M flows/s over two workers, on a VM that gives freed memory back to its host, where
    each such fault costs microseconds. Kept, those faults all but vanish."""
    libc = _glibc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    # a fixed mmap threshold also fixes the trim threshold: glibc stops adapting both
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_FROM_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_BYTES))


class HeapTrimmer:
    """A process's periodic trim: ``trim_heap`` at most every ``HEAP_TRIM_INTERVAL_S``, once
    the heap holds ``TRIM_FREE_BYTES`` free (the server's maintenance and each session
    worker call it once per round)."""

    def __init__(self, last_trim: float = 0.0) -> None:
        self.last_trim = last_trim  # ``time.monotonic()`` of the last trim

    def __call__(self) -> bool:
        """Trim now if due; returns whether it trimmed."""
        if time.monotonic() - self.last_trim < HEAP_TRIM_INTERVAL_S or not trim_heap(TRIM_FREE_BYTES):
            return False
        self.last_trim = time.monotonic()
        return True


_libc: ctypes.CDLL | None = None


#: an array growing past this many bytes moves into address space reserved for it
#: (``grown``); smaller ones are copied, which costs little
RESERVE_FROM_BYTES = 1 << 20
#: address space reserved for one growing array (128 M entries of 8 bytes): never backed by
#: memory until written, so it costs nothing but addresses (a 64-bit process has 128 TB). An
#: array that outgrows it moves, once, into a reservation of its own size
RESERVE_BYTES = 1 << 30
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; not in Python 3.11


class _Reservation(mmap.mmap):
    """Address space one growing array lives in; ``used`` is the length of its latest view."""

    used = 0


def _reserve(nbytes: int) -> _Reservation | None:
    try:
        return _Reservation(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    except (OSError, ValueError, OverflowError):  # no room (strict overcommit, a 32-bit system)
        return None


def grown(arr: np.ndarray, size: int) -> np.ndarray:
    """``arr`` (1-D) lengthened to ``size`` (at least its length), the new part zero: zeroed
    pages cost memory only once something is written to them.

    A per-entity array of the alert engine doubles as entities come: copied each time, its
    old part was written again into new memory, each page a fault (several microseconds on
    some VMs) while a busy server fills its windows. Past ``RESERVE_FROM_BYTES`` the array
    lives at the start of a reserved range of addresses instead, and grows as a longer view
    of it: no copy, and the new part is zero pages the kernel backs only when written."""
    size = max(size, len(arr))
    nbytes = size * arr.itemsize
    base = arr.base.obj if isinstance(arr.base, memoryview) else None
    if (
        isinstance(base, _Reservation)
        and base.used == arr.nbytes  # the latest view: nothing was written beyond it
        and nbytes <= len(base)
        and arr.ctypes.data == np.frombuffer(base, np.uint8, count=0).ctypes.data
    ):
        base.used = nbytes
        return np.frombuffer(base, arr.dtype, count=size)
    if arr.ndim == 1 and nbytes >= RESERVE_FROM_BYTES:
        reservation = _reserve(max(RESERVE_BYTES, 4 * nbytes))
        if reservation is not None:
            out = np.frombuffer(reservation, arr.dtype, count=size)
            out[: len(arr)] = arr
            reservation.used = nbytes
            return out
    out = np.zeros(size, arr.dtype)
    out[: len(arr)] = arr
    return out
