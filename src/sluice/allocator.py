"""How the server's processes take memory: numpy's huge pages, and glibc's malloc giving freed
memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

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


_libc: ctypes.CDLL | None = None
