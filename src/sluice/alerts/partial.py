"""Mergeable partial windows: what a collector ships and the alerting node merges.

A collector does the per-row work of alerting for its own sessions (prefilters, exceptions,
entity rows, which rows are COUNT's contributions) and ships, per definition and alerting
period (step), one row per entity it concerned: the entity's key and the addresses that name
it, what it added in the step, and how many contributions ((session, period) pairs) it made
there. A distinct count (unique hosts or ports) ships one row per distinct (entity, peer) pair
instead, the entity's contributions on one of its rows. The alerting node folds those rows
into the same windows a single server keeps (``AlertEngine.merge``): sums add, peer pairs
join the pair table (beyond the exact bound, its HyperLogLog sketches, which merge by
register maxima), contributions add. Values only grow within a period, so the merged windows,
and COUNT, are those of one server fed all the traffic, whatever order the partials come in.

On the wire a ``Partial`` is an Arrow IPC stream: its header (collector, epoch, sequence) in
the schema's metadata, one record batch a part. ``(collector, epoch, seq)`` identifies it: the alerting node
merges each once however often it is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..flows.schema import addr_text
from ..query.filter import PROTOCOL_NAMES
from .definition import EntityType

FORMAT = "sluice-partial-1"
#: the JetStream stream that carries partials (``stream.py``)
STREAM = "SLUICE_PARTIALS"
_EMPTY_ADDR = np.zeros((0, 16), np.uint8)


class PartialError(ValueError):
    """A partial that cannot be merged: what is wrong with it."""


@dataclass
class PartRows:
    """One definition's rows for one alerting period, from one collector."""

    definition_id: int
    signature: str  # the definition's window signature: a part for another version is not merged
    kind: EntityType
    bucket: int  # the alerting period (step) the rows arrived in
    keys: np.ndarray  # uint64: the entity's key, as ``EntityRows`` makes it
    addr: np.ndarray  # (n, 16) uint8: the address that names the entity (a port's: its server's)
    addr2: np.ndarray  # (n, 16) uint8: a host pair's server; (0, 16) for the other kinds
    values: np.ndarray  # int64 amounts added; for a distinct count, uint64 peer keys
    contributions: np.ndarray  # int32: COUNT's (session, period) pairs
    # set by the merging engine, as on ``EntityRows``: dense ids, the distinct ids, each row's
    # place among them, each one's first row
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    uniq: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    inv: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    first: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def own_addresses(self) -> list[np.ndarray]:
        """The addresses a per-CIDR threshold is held against (as ``EntityRows``)."""
        return [self.addr, self.addr2] if self.kind is EntityType.HOST_PAIR else [self.addr]

    def text(self, row: int) -> str:
        """The entity of one row as text (the alert record's key)."""
        key = int(self.keys[row])
        if self.kind is EntityType.HOST:
            return addr_text(bytes(self.addr[row]))
        if self.kind is EntityType.HOST_PAIR:
            return f"{addr_text(bytes(self.addr[row]))} -> {addr_text(bytes(self.addr2[row]))}"
        if self.kind is EntityType.PORT:
            proto = key >> 16
            return f"{key & 0xFFFF}/{PROTOCOL_NAMES.get(proto, str(proto))}"
        if self.kind is EntityType.COUNTRY:
            return key.to_bytes(2, "big").decode("ascii", "replace")
        return str(key)

    def rows(self, start: int, stop: int) -> PartRows:
        """Rows ``start:stop`` as a part of their own (to keep messages small)."""
        return PartRows(
            self.definition_id,
            self.signature,
            self.kind,
            self.bucket,
            self.keys[start:stop],
            self.addr[start:stop],
            self.addr2[start:stop] if len(self.addr2) else _EMPTY_ADDR,
            self.values[start:stop],
            self.contributions[start:stop],
        )

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.addr, self.addr2, self.values, self.contributions))


@dataclass
class Partial:
    """What a collector ships at once: its parts since the last one, and who it is."""

    collector: str  # the collector's name ([cluster] node_name)
    epoch: int  # when the collector started (ms): a restarted collector numbers afresh
    seq: int  # 1, 2, ... per epoch
    sent_ms: int
    parts: list[PartRows]

    @property
    def position(self) -> tuple[int, int]:
        return (self.epoch, self.seq)

    def nbytes(self) -> int:
        return sum(part.nbytes() for part in self.parts)


_SCHEMA = pa.schema(
    [
        ("keys", pa.uint64()),
        ("addr", pa.binary(16)),
        ("addr2", pa.binary(16)),  # null but for host pairs
        ("values", pa.uint64()),  # amounts (never negative) or peer keys
        ("contributions", pa.int32()),
    ]
)


def encode(partial: Partial) -> bytes:
    """The partial's bytes, for the stream: an Arrow IPC stream, one record batch a part."""
    schema = _SCHEMA.with_metadata(
        {
            "format": FORMAT,
            "collector": partial.collector,
            "epoch": str(partial.epoch),
            "seq": str(partial.seq),
            "sent_ms": str(partial.sent_ms),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        for part in partial.parts:
            n = len(part)
            columns = [
                pa.array(part.keys, pa.uint64()),
                _addresses(part.addr),
                _addresses(part.addr2) if len(part.addr2) else pa.nulls(n, pa.binary(16)),
                pa.array(part.values.view(np.uint64) if part.values.dtype == np.int64 else part.values, pa.uint64()),
                pa.array(part.contributions, pa.int32()),
            ]
            meta = {
                "definition": str(part.definition_id),
                "signature": part.signature,
                "kind": part.kind.value,
                "bucket": str(part.bucket),
                "values": "peers" if part.values.dtype == np.uint64 else "amounts",
            }
            writer.write_batch(pa.record_batch(columns, schema=_SCHEMA), custom_metadata=meta)
    return sink.getvalue().to_pybytes()


def _addresses(addr: np.ndarray) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(addr), [None, pa.py_buffer(addr.tobytes())])


def _address_column(column: pa.Array) -> np.ndarray:
    data = column.buffers()[1]
    start = column.offset * 16
    return np.frombuffer(data, np.uint8)[start : start + 16 * len(column)].reshape(-1, 16).copy()


def decode(data: bytes) -> Partial:
    """A partial from its bytes; ``PartialError`` says what is wrong with bad ones."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        if meta.get("format") != FORMAT:
            raise PartialError(f"unknown format {meta.get('format')!r} (this server reads {FORMAT})")
        if not reader.schema.remove_metadata().equals(_SCHEMA):
            raise PartialError(f"unexpected columns: {reader.schema.remove_metadata()}")
        parts = []
        for i, (batch, batch_meta) in enumerate(reader.iter_batches_with_custom_metadata()):
            batch.validate(full=True)
            parts.append(_part(i, batch, {k.decode(): v.decode() for k, v in (batch_meta or {}).items()}))
        return Partial(meta["collector"], int(meta["epoch"]), int(meta["seq"]), int(meta["sent_ms"]), parts)
    except PartialError:
        raise
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise PartialError(f"not a partial ({type(exc).__name__}: {exc})") from None


def _part(i: int, batch: pa.RecordBatch, meta: dict[str, str]) -> PartRows:
    kind = EntityType(meta["kind"])
    if batch.column("keys").null_count or batch.column("values").null_count or batch.column("addr").null_count:
        raise PartialError(f"part {i}: missing values")
    pair = kind is EntityType.HOST_PAIR
    if batch.column("addr2").null_count != (0 if pair else batch.num_rows):
        raise PartialError(f"part {i}: a host pair's rows need both addresses, and only those")
    values = batch.column("values").to_numpy()
    if meta["values"] == "amounts":
        values = values.view(np.int64)
        if (values < 0).any():
            raise PartialError(f"part {i}: negative amounts")
    elif meta["values"] != "peers":
        raise PartialError(f"part {i}: values are {meta['values']!r}, expected amounts or peers")
    contributions = batch.column("contributions").to_numpy(zero_copy_only=False)
    if batch.column("contributions").null_count or (contributions < 0).any():
        raise PartialError(f"part {i}: missing or negative contributions")
    return PartRows(
        int(meta["definition"]),
        meta["signature"],
        kind,
        int(meta["bucket"]),
        batch.column("keys").to_numpy(),
        _address_column(batch.column("addr")),
        _address_column(batch.column("addr2")) if pair else _EMPTY_ADDR,
        values,
        contributions,
    )


class Positions:
    """Per collector, the (epoch, seq) of the partial merged last: what makes merging
    idempotent. A collector's partials come in the order it sent them (one stream); one
    delivered again, after a crash or a lost acknowledgement, is at or before its position."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, int]] = {}

    def is_new(self, partial: Partial) -> bool:
        return partial.position > self.last.get(partial.collector, (-1, -1))

    def note(self, partial: Partial) -> None:
        self.last[partial.collector] = partial.position

    def state(self) -> dict[str, list[int]]:
        return {name: list(position) for name, position in self.last.items()}

    @classmethod
    def from_state(cls, state: dict[str, list[int]]) -> Positions:
        out = cls()
        out.last = {str(name): (int(epoch), int(seq)) for name, (epoch, seq) in state.items()}
        return out
