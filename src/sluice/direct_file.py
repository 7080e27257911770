"""Large files written past the page cache (``O_DIRECT``), for snapshots of a gigabyte or more.

Written through the page cache, every page of such a file is a new page of memory for the
kernel to find, fill and later write back and drop: on the VMs measured here that is 2-3 s of
system CPU per GB (``dd`` of 2 GB: 4.9-6.7 s, where ``oflag=direct`` took 0.2-0.3 s), taken
from the core that ingests, and it pushes the store's recent files out of the cache. With
``O_DIRECT`` the disk reads the bytes straight from one aligned buffer that this writer fills.

Filesystems that do not take ``O_DIRECT`` (tmpfs, some network ones) get ordinary writes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path
from types import TracebackType

import numpy as np

#: writes go out in whole blocks of this many bytes from an address aligned as much (what
#: O_DIRECT asks of buffers, offsets and lengths on every Linux filesystem that takes it)
ALIGN = 4096
#: the aligned buffer: big enough that a write is a few milliseconds of disk
BUFFER_BYTES = 8 << 20


class DirectFile:
    """A file opened for writing from its start, for ``write`` and ``close``; ``direct`` says
    whether it bypasses the page cache. ``close`` makes it durable (fsync); leaving the
    ``with`` block on an exception closes it without."""

    def __init__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        o_direct = getattr(os, "O_DIRECT", 0)
        self.direct = False
        if o_direct:
            try:
                self._fd = os.open(path, flags | o_direct, 0o644)
                self.direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: this filesystem does not take O_DIRECT
                    raise
        if not self.direct:
            self._fd = os.open(path, flags, 0o644)
        self._buffer = mmap.mmap(-1, BUFFER_BYTES)  # an anonymous map starts on a page
        self._view = memoryview(self._buffer)
        self._filled = 0  # bytes of the buffer not yet written
        self.size = 0  # bytes written so far (the file's length once closed)

    def write(self, data: bytes | np.ndarray) -> int:
        """Append ``data`` (bytes, or an array's memory in C order); returns its length."""
        if isinstance(data, np.ndarray):
            source = np.ascontiguousarray(data).reshape(-1).view(np.uint8).data
        else:
            source = memoryview(data)
        at, n = 0, len(source)
        while at < n:
            take = min(BUFFER_BYTES - self._filled, n - at)
            self._view[self._filled : self._filled + take] = source[at : at + take]
            self._filled += take
            at += take
            if self._filled == BUFFER_BYTES:
                self._write_out(BUFFER_BYTES)
        self.size += n
        return n

    def close(self) -> None:
        """Write what is left (the last block padded, then the file cut to its length), fsync,
        close."""
        try:
            if self._filled:
                padded = -(-self._filled // ALIGN) * ALIGN
                self._view[self._filled : padded] = bytes(padded - self._filled)
                self._write_out(padded)
                os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        finally:  # a write or fsync that fails (a full disk) leaves no descriptor or buffer behind
            self._release()

    def _write_out(self, length: int) -> None:
        done = 0
        while done < length:
            try:
                done += os.write(self._fd, self._view[done:length])
            except OSError as exc:
                # some filesystems open with O_DIRECT and refuse the writes: go on without it
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
        self._filled = 0

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._view.release()
            self._buffer.close()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._release()
