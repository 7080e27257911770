"""The canonical flow and session records (DESIGN.md §3) as batches of numpy columns.

A flow is one direction of traffic as an exporter reported it; a session is one
conversation seen from both ends (client and server). Addresses of both families share one
16-byte representation (IPv4 as ``::ffff:a.b.c.d``). Byte and packet counts are already
scaled by ``sampling_rate``, which is kept. Countries are ISO 3166 alpha-2 codes (2 bytes).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import pyarrow as pa

from ..compiled import njit

#: export protocol codes stored in the ``export_proto`` column
NETFLOW5, NETFLOW9, IPFIX, SFLOW5 = 1, 2, 3, 4
EXPORT_PROTO_NAMES = {NETFLOW5: "netflow5", NETFLOW9: "netflow9", IPFIX: "ipfix", SFLOW5: "sflow5"}

ADDR = "addr16"  # marker for (n, 16) uint8 address columns
COUNTRY = "country2"  # marker for 2-byte country code columns (numpy "S2", Arrow string)

#: column name -> numpy dtype (or ADDR)
FLOW_COLUMNS: dict[str, object] = {
    "time_start_ms": np.int64,
    "time_end_ms": np.int64,
    "export_proto": np.uint8,
    "exporter_addr": ADDR,
    "source_id": np.uint32,
    "input_if": np.uint32,
    "output_if": np.uint32,
    "src_addr": ADDR,
    "dst_addr": ADDR,
    "src_port": np.uint16,
    "dst_port": np.uint16,
    "protocol": np.uint8,
    "tcp_flags": np.uint16,
    "bytes": np.uint64,
    "packets": np.uint64,
    "src_as": np.uint32,
    "dst_as": np.uint32,
    "sampling_rate": np.uint32,
}

#: column name -> numpy dtype (or ADDR / COUNTRY)
SESSION_COLUMNS: dict[str, object] = {
    "session_id": np.uint64,
    "start_ms": np.int64,
    "end_ms": np.int64,
    "exporter_addr": ADDR,
    "protocol": np.uint8,
    "cln_addr": ADDR,
    "srv_addr": ADDR,
    "cln_port": np.uint16,
    "srv_port": np.uint16,
    "cln_bytes": np.uint64,
    "srv_bytes": np.uint64,
    "cln_pkts": np.uint64,
    "srv_pkts": np.uint64,
    "tcp_flags": np.uint16,
    "cln_country": COUNTRY,
    "srv_country": COUNTRY,
    "cln_asn": np.uint32,
    "srv_asn": np.uint32,
    "input_if": np.uint32,
    "output_if": np.uint32,
    "sampling_rate": np.uint32,
}

_ARROW_TYPES = {
    np.int64: pa.int64(),
    np.uint8: pa.uint8(),
    np.uint16: pa.uint16(),
    np.uint32: pa.uint32(),
    np.uint64: pa.uint64(),
    ADDR: pa.binary(16),
    COUNTRY: pa.string(),
}


def take_rows(column: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``column[index]`` (integer positions or a boolean mask), along the rows.

    ``np.take`` / ``np.compress`` rather than indexing: for the (n, 16) address columns numpy's
    fancy indexing goes element by element, 7 to 25 times slower (10,000 rows of a million:
    210 against 31 us; a mask over 10,000: 102 against 12 us)."""
    if index.dtype == np.bool_:
        return np.compress(index, column, axis=0)
    return np.take(column, index, axis=0)


def country_strings(codes: np.ndarray) -> pa.Array:
    """Two-byte country codes (numpy "S2") as an Arrow string array. Every code is two
    bytes: the offsets are 0, 2, 4 ... and the data the codes as they are (no casts)."""
    n = len(codes)
    data = pa.py_buffer(np.ascontiguousarray(codes, "S2").tobytes())
    offsets = pa.py_buffer(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    return pa.Array.from_buffers(pa.string(), n, [None, offsets, data])


def put_rows(column: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """``column[index] = values`` along the rows; a row of a C-contiguous 2-d column (an
    address) written as one item, which is 7 times faster than numpy's row-wise scatter."""
    if column.ndim == 2 and column.flags.c_contiguous:
        row = np.dtype((np.void, column.shape[1] * column.itemsize))
        column.view(row).reshape(-1)[index] = np.ascontiguousarray(values, column.dtype).view(row).reshape(-1)
    else:
        column[index] = values


@functools.lru_cache(maxsize=64)
def _arrow_type_of(dtype: np.dtype) -> pa.DataType:
    return pa.from_numpy_dtype(dtype)


@functools.lru_cache(maxsize=64)
def _numpy_dtype_of(arrow_type: pa.DataType) -> np.dtype:
    return np.dtype(arrow_type.to_pandas_dtype())


def numpy_to_arrow(values: np.ndarray, arrow_type: pa.DataType | None = None) -> pa.Array:
    """A numeric or boolean numpy column as Arrow (sharing its memory where the types agree).

    Not ``pa.array``: given a numpy array, pyarrow imports pandas to inspect it - about half
    a CPU-second and 50 MB in every process that does so first, which each session worker
    did at its first flush, in the middle of the traffic."""
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    arrow_type = arrow_type or _arrow_type_of(values.dtype)
    dtype = _numpy_dtype_of(arrow_type)
    if values.dtype != dtype:
        cast = values.astype(dtype)
        if not np.array_equal(cast, values):
            raise OverflowError(f"values of type {values.dtype} do not fit Arrow's {arrow_type}")
        values = cast
    data = np.ascontiguousarray(values)
    return pa.Array.from_buffers(arrow_type, len(data), [None, pa.py_buffer(data)])


def arrow_to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric Arrow column without nulls as numpy (a read-only view of one chunk).

    Not ``to_numpy``, which imports pandas (see ``numpy_to_arrow``)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"{column.null_count} missing values in a column of {column.type}")
    dtype = np.dtype(column.type.to_pandas_dtype())
    if dtype == np.bool_:
        bits = np.frombuffer(column.buffers()[1], np.uint8)
        return np.unpackbits(bits, count=column.offset + len(column), bitorder="little")[column.offset :].astype(bool)
    return np.frombuffer(column.buffers()[1], dtype, count=len(column), offset=column.offset * dtype.itemsize)


def arrow_schema(columns: dict[str, object]) -> pa.Schema:
    return pa.schema([(name, _ARROW_TYPES[dt]) for name, dt in columns.items()])


FLOW_SCHEMA = arrow_schema(FLOW_COLUMNS)
SESSION_SCHEMA = arrow_schema(SESSION_COLUMNS)


def _numpy_dtype(dtype: object) -> object:
    return np.uint8 if dtype is ADDR else "S2" if dtype is COUNTRY else dtype


def _empty_column(dtype: object, n: int) -> np.ndarray:
    if dtype is ADDR:
        return np.zeros((n, 16), np.uint8)
    return np.zeros(n, _numpy_dtype(dtype))  # type: ignore[call-overload]


B = TypeVar("B", bound="ColumnBatch")


@dataclass
class ColumnBatch:
    """Named numpy columns of one length, with a fixed set of names and types (``COLUMNS``)."""

    columns: dict[str, np.ndarray]
    COLUMNS: ClassVar[dict[str, object]] = {}

    def __post_init__(self) -> None:
        n = {len(v) for v in self.columns.values()}
        if len(n) > 1:
            raise ValueError(f"{type(self).__name__} columns differ in length: {n}")
        missing = self.COLUMNS.keys() - self.columns.keys()
        if missing:
            raise ValueError(f"{type(self).__name__} lacks columns: {sorted(missing)}")

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @classmethod
    def empty(cls: type[B], n: int = 0) -> B:
        return cls({name: _empty_column(dt, n) for name, dt in cls.COLUMNS.items()})

    @classmethod
    def build(cls: type[B], n: int, **columns: np.ndarray | int | bytes) -> B:
        """A batch of ``n`` rows from the given columns (scalars broadcast); others zero."""
        out: dict[str, np.ndarray] = {}
        for name, dt in cls.COLUMNS.items():
            value = columns.pop(name, None)
            if value is None:
                out[name] = _empty_column(dt, n)
            elif isinstance(value, np.ndarray) and value.shape == ((n, 16) if dt is ADDR else (n,)):
                # a full column: convert (or share, if the type already fits) - batches are not mutated
                out[name] = np.asarray(value, _numpy_dtype(dt))  # type: ignore[call-overload]
            elif dt is ADDR:
                out[name] = np.broadcast_to(np.asarray(value, np.uint8), (n, 16)).copy()
            else:
                out[name] = np.broadcast_to(np.asarray(value).astype(_numpy_dtype(dt)), (n,)).copy()  # type: ignore[call-overload]
        if columns:
            raise ValueError(f"unknown flow columns: {sorted(columns)}")
        return cls(out)

    @classmethod
    def concat(cls: type[B], batches: Iterable[B]) -> B:
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls({name: np.concatenate([b.columns[name] for b in batches]) for name in cls.COLUMNS})

    def take(self: B, index: np.ndarray) -> B:
        return type(self)({name: take_rows(col, index) for name, col in self.columns.items()})

    def to_arrow(self, skip: frozenset[str] = frozenset()) -> pa.RecordBatch:
        """The batch as Arrow; ``skip`` names columns to leave out (a caller converting them itself)."""
        arrays = []
        n = len(self)
        fields = [(name, dt) for name, dt in self.COLUMNS.items() if name not in skip]
        for name, dt in fields:
            col = self.columns[name]
            if dt is ADDR:
                buf = pa.py_buffer(np.ascontiguousarray(col).tobytes())
                arrays.append(pa.Array.from_buffers(pa.binary(16), n, [None, buf]))
            elif dt is COUNTRY:
                arrays.append(country_strings(col))
            else:
                arrays.append(numpy_to_arrow(col, _ARROW_TYPES[dt]))
        return pa.RecordBatch.from_arrays(arrays, schema=arrow_schema(dict(fields)))

    @classmethod
    def from_arrow(cls: type[B], table: pa.Table | pa.RecordBatch) -> B:
        """The inverse of ``to_arrow``: every column of ``COLUMNS``, by name."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        n = table.num_rows
        out: dict[str, np.ndarray] = {}
        for name, dt in cls.COLUMNS.items():
            column = table.column(name).combine_chunks()
            if dt is ADDR:
                if column.type != pa.binary(16):
                    raise ValueError(f"column {name}: {column.type}, not 16-byte addresses")
                data = np.frombuffer(column.buffers()[1], np.uint8)
                out[name] = data[column.offset * 16 : (column.offset + n) * 16].reshape(n, 16).copy()
            elif dt is COUNTRY:
                out[name] = _country_codes(column)
            else:
                out[name] = arrow_to_numpy(column).astype(_numpy_dtype(dt), copy=False)  # type: ignore[call-overload]
        return cls(out)

    def to_records(self) -> list[dict[str, object]]:
        """Rows as dicts with addresses as text: for display and tests, not the hot path."""
        n = len(self)
        rows: list[dict[str, object]] = [{} for _ in range(n)]
        for name, dt in self.COLUMNS.items():
            col = self.columns[name]
            if dt is ADDR:
                values: list[object] = [addr_text(bytes(a)) for a in col]
            elif dt is COUNTRY:
                values = [c.decode("ascii", "replace") for c in col.tolist()]
            elif name == "export_proto":
                values = [EXPORT_PROTO_NAMES.get(int(v), str(int(v))) for v in col]
            else:
                values = col.tolist()
            for row, v in zip(rows, values, strict=True):
                row[name] = v
        return rows


def _country_codes(column: pa.Array) -> np.ndarray:
    """A string column of two-letter codes as numpy ``S2``: straight from its buffer when every
    value is two bytes (as ``to_arrow`` writes them), else value by value."""
    n = len(column)
    if n and column.null_count == 0:
        offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset : column.offset + n + 1]
        if (np.diff(offsets) == 2).all():
            data = np.frombuffer(column.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
            return data.view("S2").copy()
    return np.array([v or "" for v in column.to_pylist()], "S2")


class FlowBatch(ColumnBatch):
    """Columns of canonical flows (one direction each)."""

    COLUMNS = FLOW_COLUMNS


class SessionBatch(ColumnBatch):
    """Columns of sessions: one conversation, client and server sides."""

    COLUMNS = SESSION_COLUMNS


@dataclass(frozen=True)
class Arrivals:
    """How each row of a session batch arrived, for the alert windows (not stored):

    - ``new``: the row started its session;
    - ``slot``: the session's place in the tracker that made the row - a small integer, unique
      among the live sessions of the server, taken again by a later session (whose first row
      is new): what lets the alert engine remember per session, without a table of sessions;
    - ``at_ms``: the server's time when the row's flows were folded in, which decides the
      alerting period the row counts in (None: at the time of the evaluation).
    """

    new: np.ndarray
    slot: np.ndarray
    at_ms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.new)

    @classmethod
    def empty(cls) -> Arrivals:
        return cls(np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts: list[Arrivals], default_at_ms: int) -> Arrivals:
        """One for several batches in a row; parts without times get ``default_at_ms``."""
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.new for p in parts]),
            np.concatenate([p.slot for p in parts]).astype(np.int64, copy=False),
            np.concatenate([p.at_ms if p.at_ms is not None else np.full(len(p), default_at_ms) for p in parts]),
        )


@njit(cache=True, nogil=True, inline="always")
def big_endian(word: np.uint64, nbytes: int) -> np.uint64:
    """The first ``nbytes`` bytes of a little-endian word, read as a big-endian number."""
    out = np.uint64(0)
    for b in range(nbytes):
        out = (out << np.uint64(8)) | ((word >> np.uint64(8 * b)) & np.uint64(0xFF))
    return out


def address_words(addr16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) addresses as their upper and lower 64 bits (native uint64): integers that
    compare, sort and hash like the addresses themselves."""
    return _address_halves(np.ascontiguousarray(addr16, np.uint8))


@njit(cache=True, nogil=True)
def _address_halves(addr16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # one pass: numpy's byte swaps of each half's strided view took about 4 ns an address
    # (the store's files and the filters' address comparisons take every session's)
    words = addr16.view(np.uint64)
    hi = np.empty(addr16.shape[0], np.uint64)
    lo = np.empty(addr16.shape[0], np.uint64)
    for i in range(addr16.shape[0]):
        hi[i] = big_endian(words[i, 0], 8)
        lo[i] = big_endian(words[i, 1], 8)
    return hi, lo


def addr_text(addr16: bytes) -> str:
    """Text of a 16-byte address: dotted quad for IPv4-mapped, RFC 5952 for IPv6."""
    ip = ipaddress.IPv6Address(addr16)
    return str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else str(ip)


def addr_bytes(text: str) -> bytes:
    """16-byte representation of an IPv4 or IPv6 address given as text."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + ip.packed
    return ip.packed
