"""How the server's processes take memory: numpy's huge pages, and glibc's malloc giving freed
memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

import numpy as np

#: blocks of at least this are mapped apart by glibc's malloc and unmapped when freed
MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)


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


def give_back_freed_memory() -> None:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` in this process and in the worker
    processes it starts.

    By default glibc serves blocks below the threshold from its heap and keeps what is freed
    there for reuse, and raises the threshold (up to 32 MB) each time a larger mapped block is
    freed. The alert windows grow their per-entity arrays by copying, so the old arrays, freed,
    stayed in the heap: with a million hosts in 20 definitions the process held 200-340 MB
    more than its arrays (``bench/alerts.py``). A fixed threshold maps such arrays apart and
    unmaps them when they are freed; the temporaries of a batch, below it at the server's
    batch sizes, stay on the heap. Elsewhere than glibc: nothing."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)  # read by glibc at a process's start
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
