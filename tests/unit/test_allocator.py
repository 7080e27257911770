"""glibc's heap gives its free pages back when the server trims it; large arrays grow in place."""

import ctypes

import numpy as np

from sluice import allocator
from sluice.allocator import grown, heap_free_bytes, trim_heap


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_mallinfo2_is_read_with_glibcs_layout():
    """It is returned by value: a struct of another size than glibc's (ten size_t) makes the
    call write past what ctypes set aside (it had nine)."""
    from sluice.allocator import _MallInfo2

    assert ctypes.sizeof(_MallInfo2) == 10 * ctypes.sizeof(ctypes.c_size_t)


def test_a_heap_with_less_free_than_asked_is_left_alone():
    assert heap_free_bytes() is not None
    assert trim_heap(min_free_bytes=1 << 62) is False


def test_trimming_gives_the_free_heap_pages_back():
    # 150 MB of blocks below glibc's mmap threshold: they come from the heap; all but the
    # last are freed, so the heap's top cannot shrink by itself
    blocks = [bytearray(100_000) for _ in range(1500)]
    for block in blocks:
        block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # every page written
    last = blocks[-1]
    del blocks
    assert heap_free_bytes() >= 100 << 20
    before = rss_bytes()
    assert trim_heap(min_free_bytes=64 << 20) is True
    assert before - rss_bytes() > 100 << 20
    assert heap_free_bytes() >= 100 << 20  # still free for reuse, only no longer resident
    del last


def address(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def test_a_large_array_grows_in_place_without_writing_its_pages_again():
    """Copied, a 64 MB array grown to 128 MB wrote its 64 MB again into new memory (a page
    fault each) and held both copies."""
    small = np.arange(10, dtype=np.int64)
    arr = grown(small, 8 << 20)  # 64 MB: into reserved address space
    assert arr[:10].tolist() == list(range(10)) and not arr[10:].any()
    arr[:] = np.arange(len(arr))  # every page written
    before = rss_bytes()
    longer = grown(arr, 16 << 20)
    assert address(longer) == address(arr) and len(longer) == 16 << 20
    assert rss_bytes() - before < 16 << 20
    assert (longer[: 8 << 20] == np.arange(8 << 20)).all() and not longer[8 << 20 :].any()
    longer[-1] = 5  # the new part is memory of its own, not another array's
    assert int(longer[-1]) == 5 and int(arr[-1]) == (8 << 20) - 1


def test_an_older_view_is_copied_not_grown_over_what_a_newer_one_wrote():
    arr = grown(np.ones(4, np.int32), 1 << 19)  # 2 MB
    newer = grown(arr, 1 << 20)
    newer[(1 << 19) + 1] = 7
    again = grown(arr, 1 << 21)  # from the older, shorter view: its tail must be zero
    assert address(again) != address(newer)
    assert (again[:4] == 1).all() and not again[4:].any()
    assert int(newer[(1 << 19) + 1]) == 7


def test_small_arrays_and_a_refused_reservation_are_copied(monkeypatch):
    small = grown(np.array([1, 2, 3], np.uint8), 100)
    assert small.base is None and small.tolist() == [1, 2, 3] + [0] * 97
    monkeypatch.setattr(allocator, "_reserve", lambda nbytes: None)  # strict overcommit, say
    big = grown(np.array([4, 5], np.int64), 1 << 18)
    assert big.base is None and big[:2].tolist() == [4, 5] and not big[2:].any()
    assert len(grown(big, 10)) == 1 << 18  # never shorter


def _freed_block_kept(keep: bool) -> dict:
    """In a fresh interpreter (glibc's settings are per process): a 20 MB block written and
    freed; how much of it the heap holds free afterwards, and the process's resident memory."""
    import json
    import subprocess
    import sys

    code = f"""
import json, numpy as np
from sluice.allocator import heap_free_bytes, keep_freed_memory
took = keep_freed_memory() if {keep} else None
block = np.ones(20 << 20, np.uint8)  # every page written
del block
rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({{"took": took, "free": heap_free_bytes(), "rss": rss}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_freed_memory_stays_in_the_process_for_the_next_allocations():
    """By default glibc maps a block this large and unmaps it when freed: taken again, every
    page is a fault. Kept, the heap holds it free, resident, for the next batch."""
    default, kept = _freed_block_kept(False), _freed_block_kept(True)
    assert kept["took"] is True
    assert default["free"] < 20 << 20  # given back at once
    assert kept["free"] >= 20 << 20
    assert kept["rss"] - default["rss"] >= 15 << 20


def test_the_periodic_trim_waits_its_interval_and_retries_until_enough_is_free(monkeypatch):
    """The server's maintenance and every session worker trim through one ``HeapTrimmer``:
    at most every ``HEAP_TRIM_INTERVAL_S``, and only once ``TRIM_FREE_BYTES`` are free."""
    asked: list[int] = []
    free_enough = [False]

    def fake_trim(min_free_bytes: int = 0) -> bool:
        asked.append(min_free_bytes)
        return free_enough[0]

    monkeypatch.setattr(allocator, "trim_heap", fake_trim)
    now = [1000.0]
    monkeypatch.setattr(allocator.time, "monotonic", lambda: now[0])
    trim = allocator.HeapTrimmer(last_trim=now[0])
    assert trim() is False and asked == []  # not due yet
    now[0] += allocator.HEAP_TRIM_INTERVAL_S
    assert trim() is False and asked == [allocator.TRIM_FREE_BYTES]  # due, but too little free: next round again
    free_enough[0] = True
    now[0] += 1
    assert trim() is True and len(asked) == 2
    now[0] += allocator.HEAP_TRIM_INTERVAL_S - 1
    assert trim() is False and len(asked) == 2  # trimmed a moment ago
