"""A batch of IPFIX messages walked by one compiled loop: headers and sets as arrays.

The decoder's walk (``Decoder._walk_ipfix``) reads each message's header and sets in
Python: 3 µs a datagram, a tenth of what the whole server spends per flow at a million flows
a second. For a batch of well-formed messages whose templates the decoder already holds
(what an exporter sends all day), ``scan`` finds the same headers and sets in one pass and
the decoder goes on with arrays (``Decoder._decode_ipfix_batch``); anything else (a bad
length, a new or changed template, data before its template) takes the Python walk, which
counts and keeps everything as it always has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .ipfix import HEADER_LEN

#: per message: why it cannot be taken as it is (the Python walk counts it)
OK, TRUNCATED_HEADER, MESSAGE_LENGTH, SET_LENGTH = range(4)


@njit(cache=True, nogil=True, inline="always")
def _u16(buf: np.ndarray, at: int) -> np.int64:
    return (np.int64(buf[at]) << 8) | np.int64(buf[at + 1])


@njit(cache=True, nogil=True, inline="always")
def _u32(buf: np.ndarray, at: int) -> np.int64:
    return (_u16(buf, at) << 16) | _u16(buf, at + 2)


@njit(cache=True, nogil=True)
def _scan(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(per message: status, length, export time, sequence number, domain; per set: its
    message, its id, where its body starts in ``buf``, the body's length, its position in
    the message, as one (5, sets) array)."""
    n = starts.shape[0]
    status = np.zeros(n, np.int64)
    length = np.zeros(n, np.int64)
    export_s = np.zeros(n, np.int64)
    sequence = np.zeros(n, np.int64)
    domain = np.zeros(n, np.int64)
    sets = np.empty((5, int(lengths.sum()) // 4 + 1), np.int64)  # a set takes 4 bytes at least
    k = 0
    for d in range(n):
        start, size = starts[d], lengths[d]
        if size < HEADER_LEN:
            status[d] = TRUNCATED_HEADER
            continue
        msg_len = _u16(buf, start + 2)
        length[d] = msg_len
        export_s[d] = _u32(buf, start + 4)
        sequence[d] = _u32(buf, start + 8)
        domain[d] = _u32(buf, start + 12)
        if msg_len < HEADER_LEN or msg_len > size:
            status[d] = MESSAGE_LENGTH
            continue
        pos, ordinal = np.int64(HEADER_LEN), 0
        while msg_len - pos >= 4:
            set_id = _u16(buf, start + pos)
            set_len = _u16(buf, start + pos + 2)
            if set_len < 4 or pos + set_len > msg_len:
                status[d] = SET_LENGTH
                break
            ordinal += 1
            sets[0, k] = d
            sets[1, k] = set_id
            sets[2, k] = start + pos + 4
            sets[3, k] = set_len - 4
            sets[4, k] = ordinal
            k += 1
            pos += set_len
    return status, length, export_s, sequence, domain, sets[:, :k].copy()


def gather_records(joined: bytes, body_start: np.ndarray, record_bytes: np.ndarray) -> np.ndarray:
    """The first ``record_bytes[i]`` bytes of each set body, laid end to end (joined from
    views: a third of the time of a compiled byte loop)."""
    view = memoryview(joined)
    parts = [view[s : s + m] for s, m in zip(body_start.tolist(), record_bytes.tolist(), strict=True)]
    return np.frombuffer(b"".join(parts), np.uint8)


@dataclass
class Scan:
    """The headers and sets of a batch of IPFIX messages (``scan``)."""

    status: np.ndarray  # per message: OK, or why the Python walk must take it
    length: np.ndarray  # the header's message length
    export_s: np.ndarray
    sequence: np.ndarray
    domain: np.ndarray
    set_message: np.ndarray  # per set: its message's index
    set_id: np.ndarray
    body_start: np.ndarray  # where its body starts in the batch's bytes
    body_len: np.ndarray
    ordinal: np.ndarray  # its position in its message, from 1


def scan(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Scan:
    """Walk the messages at ``starts`` (``lengths`` bytes each) of ``buf``."""
    status, length, export_s, sequence, domain, sets = _scan(buf, starts, lengths)
    return Scan(status, length, export_s, sequence, domain, *sets)


def warm_up() -> None:
    """Compile (or load from numba's cache) the scan now, not on the first batch, while
    datagrams wait in the socket buffer."""
    message = np.zeros(HEADER_LEN + 4, np.uint8)
    message[:4] = [0, 10, 0, HEADER_LEN + 4]
    message[HEADER_LEN : HEADER_LEN + 4] = [1, 0, 0, 4]  # one empty data set
    scan(message, np.zeros(1, np.int64), np.array([len(message)], np.int64))
