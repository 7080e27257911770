"""DirectFile: large files written past the page cache, byte for byte, and ordinary writes
where the filesystem does not take O_DIRECT."""

import errno
import os
import subprocess

import numpy as np
import pytest

from sluice import direct_file
from sluice.direct_file import ALIGN, BUFFER_BYTES, DirectFile
from tests.support.env import require_tool


def takes_o_direct(directory) -> bool:
    probe = directory / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def cached_bytes(path) -> int:
    """How much of the file is in the page cache (util-linux's fincore)."""
    out = subprocess.run([require_tool("fincore"), "--bytes", "--noheadings", "--raw", "-o", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def pieces() -> list:
    """Bytes and arrays of lengths around the alignment and the buffer, several dtypes."""
    rng = np.random.default_rng(7)
    return [
        b"HEAD\n", np.zeros(0, np.int64), rng.integers(0, 2**63, ALIGN // 8 - 1, np.int64),
        rng.integers(0, 255, ALIGN + 1, np.uint8), rng.random(BUFFER_BYTES // 8 + 123),
        rng.integers(0, 2**31, (3, BUFFER_BYTES // 4), np.int32)[:, ::2],  # not contiguous
        np.arange(5, dtype=np.uint16), b"", b"tail",
    ]


def expected_bytes(items: list) -> bytes:
    return b"".join(i if isinstance(i, bytes) else np.ascontiguousarray(i).tobytes() for i in items)


def write_all(path, items: list) -> DirectFile:
    with DirectFile(path) as f:
        for item in items:
            f.write(item)
    return f


def test_what_is_written_is_the_file_byte_for_byte_and_stays_out_of_the_page_cache(tmp_path):
    items = pieces()
    f = write_all(tmp_path / "big.bin", items)
    want = expected_bytes(items)
    if takes_o_direct(tmp_path):  # (else the ordinary writes are what the tests below check)
        assert f.direct and cached_bytes(tmp_path / "big.bin") == 0
        with open(tmp_path / "buffered.bin", "wb") as plain:  # the same through the page cache: it is
            plain.write(want)
        assert cached_bytes(tmp_path / "buffered.bin") > 0
    assert (tmp_path / "big.bin").read_bytes() == want
    assert f.size == len(want) and len(want) % ALIGN  # the padded last block was cut off


def test_a_filesystem_that_refuses_o_direct_at_open_gets_ordinary_writes(tmp_path, monkeypatch):
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_file.os, "open", no_direct)
    items = pieces()
    f = write_all(tmp_path / "plain.bin", items)
    assert not f.direct
    assert (tmp_path / "plain.bin").read_bytes() == expected_bytes(items)


def test_a_filesystem_that_refuses_the_direct_writes_gets_ordinary_ones(tmp_path, monkeypatch):
    """Some filesystems open with O_DIRECT and refuse the writes (EINVAL)."""
    real_open, real_write, refused = os.open, os.write, []

    def opens_anyway(path, flags, *args):  # as such a filesystem does, whatever this one does
        return real_open(path, flags & ~os.O_DIRECT, *args)

    def refuse_first(fd, data):
        if not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_file.os, "open", opens_anyway)
    monkeypatch.setattr(direct_file.os, "write", refuse_first)
    items = pieces()
    f = write_all(tmp_path / "plain.bin", items)
    assert refused and not f.direct
    assert (tmp_path / "plain.bin").read_bytes() == expected_bytes(items)


def test_an_error_inside_the_block_closes_the_file_and_passes_on(tmp_path):
    with pytest.raises(RuntimeError, match="stop"):
        with DirectFile(tmp_path / "cut.bin") as f:
            f.write(b"x" * 10)
            raise RuntimeError("stop")
    assert f._fd == -1  # released, nothing left open


def test_a_failed_close_releases_the_file_and_passes_the_error_on(tmp_path, monkeypatch):
    """A snapshot on a full or failing disk is tried again later: each failure must not leave
    a descriptor and an 8 MB buffer behind."""

    def fails(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(direct_file.os, "fsync", fails)
    with pytest.raises(OSError, match="Input/output"):
        with DirectFile(tmp_path / "failed.bin") as f:
            f.write(b"x" * 10)
    assert f._fd == -1 and f._buffer.closed
