"""glibc's heap gives its free pages back when the server trims it."""

import ctypes

from sluice.allocator import heap_free_bytes, trim_heap


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
