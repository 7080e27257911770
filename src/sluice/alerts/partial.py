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

A partial names each entity once, in a table per entity type that every definition's part
refers to by position. On the wire it is Arrow IPC (LZ4-compressed buffers): its header
(collector, epoch, sequence), the tables, the parts. ``(collector, epoch, seq)`` identifies it: the alerting node
merges each once however often it is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..flows.schema import addr_text, arrow_to_numpy, numpy_to_arrow
from ..query.filter import PROTOCOL_NAMES
from .definition import EntityType

FORMAT = "sluice-partial-2"
#: the JetStream stream that carries partials (``stream.py``)
STREAM = "SLUICE_PARTIALS"
_EMPTY_ADDR = np.zeros((0, 16), np.uint8)
_NO_ROWS = np.empty(0, np.int64)


class PartialError(ValueError):
    """A partial that cannot be merged: what is wrong with it."""


@dataclass
class EntityTable:
    """The entities of one type that a partial's parts name, each once: its key (as
    ``EntityRows`` makes it) and the addresses that name it (a port's, a country's and an AS's:
    one of its rows' own, for per-CIDR thresholds), shared by every definition of the type."""

    kind: EntityType
    keys: np.ndarray  # uint64
    addr: np.ndarray  # (n, 16) uint8
    addr2: np.ndarray  # (n, 16) uint8: a host pair's server; (0, 16) for the other kinds

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, start: int, stop: int) -> EntityTable:
        return EntityTable(
            self.kind,
            self.keys[start:stop],
            self.addr[start:stop],
            self.addr2[start:stop] if len(self.addr2) else _EMPTY_ADDR,
        )

    def text(self, i: int) -> str:
        """Entity ``i`` as text (the alert record's key)."""
        key = int(self.keys[i])
        if self.kind is EntityType.HOST:
            return addr_text(bytes(self.addr[i]))
        if self.kind is EntityType.HOST_PAIR:
            return f"{addr_text(bytes(self.addr[i]))} -> {addr_text(bytes(self.addr2[i]))}"
        if self.kind is EntityType.PORT:
            proto = key >> 16
            return f"{key & 0xFFFF}/{PROTOCOL_NAMES.get(proto, str(proto))}"
        if self.kind is EntityType.COUNTRY:
            return key.to_bytes(2, "big").decode("ascii", "replace")
        return str(key)

    def nbytes(self) -> int:
        return self.keys.nbytes + self.addr.nbytes + self.addr2.nbytes


@dataclass
class PartRows:
    """One definition's rows for one alerting period, from one collector: per row an entity
    of ``table``, and what it added (sum metrics: one row per entity; distinct counts: one
    row per distinct (entity, peer) pair, the value the peer's key)."""

    definition_id: int
    signature: str  # the definition's window signature: a part for another version is not merged
    bucket: int  # the alerting period (step) the rows arrived in
    table: EntityTable
    entity: np.ndarray  # int32: each row's entity, a row of ``table``
    values: np.ndarray  # int64 amounts added; for a distinct count, uint64 peer keys
    contributions: np.ndarray  # int32: COUNT's (session, period) pairs (a distinct count's: on one row)

    @property
    def kind(self) -> EntityType:
        return self.table.kind

    def __len__(self) -> int:
        return len(self.entity)

    def own_addresses(self) -> list[np.ndarray]:
        """Per row, the addresses a per-CIDR threshold is held against (as ``EntityRows``)."""
        addr = [self.table.addr[self.entity]]
        return addr + [self.table.addr2[self.entity]] if self.kind is EntityType.HOST_PAIR else addr

    def text(self, row: int) -> str:
        return self.table.text(int(self.entity[row]))

    def rows_slice(self, start: int, stop: int) -> PartRows:
        """Rows ``start:stop``, naming the same table."""
        return PartRows(
            self.definition_id,
            self.signature,
            self.bucket,
            self.table,
            self.entity[start:stop],
            self.values[start:stop],
            self.contributions[start:stop],
        )

    def nbytes(self) -> int:
        return self.entity.nbytes + self.values.nbytes + self.contributions.nbytes


class PartGroup:
    """Parts of one definition and period, from one partial or several, folded as one: their
    rows one after another (``EntityRows``'s interface for the engine's thresholds and
    messages)."""

    def __init__(self, parts: list[PartRows], numbering: dict[int, tuple[np.ndarray, np.ndarray | None]]):
        """``numbering``: per entity table (by ``id``), the merging engine's dense id of each
        entity and which are valid (None: all)."""
        self.parts = parts
        self.kind = parts[0].kind
        ids, valid = [], []
        for p in parts:
            table_ids, table_valid = numbering[id(p.table)]
            ids.append(table_ids[p.entity])
            valid.append(np.ones(len(p), bool) if table_valid is None else table_valid[p.entity])
        self.ids = np.concatenate(ids)
        self.valid = np.concatenate(valid)
        self.values = np.concatenate([p.values for p in parts]) if len(parts) > 1 else parts[0].values
        self.contributions = (
            np.concatenate([p.contributions for p in parts]) if len(parts) > 1 else parts[0].contributions
        )
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        # set by the merging engine, as on ``EntityRows``
        self.uniq = self.inv = self.first = _NO_ROWS

    def __len__(self) -> int:
        return int(self.starts[-1])

    def own_addresses(self) -> list[np.ndarray]:
        each = [p.own_addresses() for p in self.parts]
        return [np.concatenate([addresses[k] for addresses in each]) for k in range(len(each[0]))]

    def text(self, row: int) -> str:
        i = int(np.searchsorted(self.starts, row, "right")) - 1
        return self.parts[i].text(row - int(self.starts[i]))


@dataclass
class Partial:
    """What a collector ships at once: its parts since the last one, the entity tables they
    name, and who it is."""

    collector: str  # the collector's name ([cluster] node_name)
    epoch: int  # when the collector started (ms): a restarted collector numbers afresh
    seq: int  # 1, 2, ... per epoch
    sent_ms: int
    parts: list[PartRows]

    @property
    def position(self) -> tuple[int, int]:
        return (self.epoch, self.seq)

    def tables(self) -> list[EntityTable]:
        """The entity tables the parts name, each once."""
        seen: dict[int, EntityTable] = {}
        for part in self.parts:
            seen.setdefault(id(part.table), part.table)
        return list(seen.values())

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self.tables()) + sum(part.nbytes() for part in self.parts)


_TABLE_SCHEMA = pa.schema([("keys", pa.uint64()), ("addr", pa.binary(16)), ("addr2", pa.binary(16))])
_PART_SCHEMA = pa.schema(
    [
        ("entity", pa.int32()),
        ("values", pa.uint64()),  # amounts (never negative) or peer keys
        ("contributions", pa.int32()),
    ]
)
#: the Arrow buffers are compressed: keys and amounts of new conversations are a quarter of
#: their size in LZ4 (an entity's contributions and small amounts shrink the most)
_WRITE = pa.ipc.IpcWriteOptions(compression=None)


def encode(partial: Partial) -> bytes:
    """The partial's bytes, for the stream: two Arrow IPC streams, the entity tables (one
    record batch a table) and the parts (one a part, naming its table by position), each
    after its length (8 bytes, little-endian)."""
    tables = partial.tables()
    position = {id(t): i for i, t in enumerate(tables)}
    header = {
        "format": FORMAT,
        "collector": partial.collector,
        "epoch": str(partial.epoch),
        "seq": str(partial.seq),
        "sent_ms": str(partial.sent_ms),
    }
    out = bytearray()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _TABLE_SCHEMA.with_metadata(header), options=_WRITE) as writer:
        for table in tables:
            n = len(table)
            columns = [
                numpy_to_arrow(table.keys, pa.uint64()),
                _addresses(table.addr),
                _addresses(table.addr2) if len(table.addr2) else pa.nulls(n, pa.binary(16)),
            ]
            writer.write_batch(
                pa.record_batch(columns, schema=_TABLE_SCHEMA), custom_metadata={"kind": table.kind.value}
            )
    stream = sink.getvalue()
    out += len(stream).to_bytes(8, "little") + stream.to_pybytes()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _PART_SCHEMA, options=_WRITE) as writer:
        for part in partial.parts:
            amounts = part.values.dtype == np.int64
            columns = [
                numpy_to_arrow(part.entity, pa.int32()),
                numpy_to_arrow(part.values.view(np.uint64) if amounts else part.values, pa.uint64()),
                numpy_to_arrow(part.contributions, pa.int32()),
            ]
            meta = {
                "definition": str(part.definition_id),
                "signature": part.signature,
                "table": str(position[id(part.table)]),
                "bucket": str(part.bucket),
                "values": "amounts" if amounts else "peers",
            }
            writer.write_batch(pa.record_batch(columns, schema=_PART_SCHEMA), custom_metadata=meta)
    stream = sink.getvalue()
    out += len(stream).to_bytes(8, "little") + stream.to_pybytes()
    return bytes(out)


def _addresses(addr: np.ndarray) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(addr), [None, pa.py_buffer(addr.tobytes())])


def _address_column(column: pa.Array) -> np.ndarray:
    data = column.buffers()[1]
    start = column.offset * 16
    return np.frombuffer(data, np.uint8)[start : start + 16 * len(column)].reshape(-1, 16).copy()


def _streams(data: bytes) -> tuple[pa.ipc.RecordBatchStreamReader, pa.ipc.RecordBatchStreamReader]:
    view = memoryview(data)
    out = []
    at = 0
    for _ in range(2):
        if len(view) < at + 8:
            raise PartialError("not a partial (too short)")
        size = int.from_bytes(view[at : at + 8], "little")
        if size > len(view) - at - 8:
            raise PartialError("not a partial (a part is cut short)")
        out.append(pa.ipc.open_stream(pa.py_buffer(view[at + 8 : at + 8 + size])))
        at += 8 + size
    if at != len(view):
        raise PartialError(f"not a partial ({len(view) - at} bytes after its end)")
    return out[0], out[1]


def _meta(raw: dict[bytes, bytes] | None) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (raw or {}).items()}


def decode(data: bytes) -> Partial:
    """A partial from its bytes; ``PartialError`` says what is wrong with bad ones."""
    try:
        table_reader, part_reader = _streams(data)
        header = _meta(table_reader.schema.metadata)
        if header.get("format") != FORMAT:
            raise PartialError(f"unknown format {header.get('format')!r} (this server reads {FORMAT})")
        if not table_reader.schema.remove_metadata().equals(_TABLE_SCHEMA):
            raise PartialError(f"unexpected entity table columns: {table_reader.schema.remove_metadata()}")
        if not part_reader.schema.remove_metadata().equals(_PART_SCHEMA):
            raise PartialError(f"unexpected part columns: {part_reader.schema.remove_metadata()}")
        tables = [
            _table(i, batch, _meta(meta))
            for i, (batch, meta) in enumerate(table_reader.iter_batches_with_custom_metadata())
        ]
        parts = [
            _part(i, batch, _meta(meta), tables)
            for i, (batch, meta) in enumerate(part_reader.iter_batches_with_custom_metadata())
        ]
        return Partial(header["collector"], int(header["epoch"]), int(header["seq"]), int(header["sent_ms"]), parts)
    except PartialError:
        raise
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise PartialError(f"not a partial ({type(exc).__name__}: {exc})") from None


def _table(i: int, batch: pa.RecordBatch, meta: dict[str, str]) -> EntityTable:
    batch.validate(full=True)
    kind = EntityType(meta["kind"])
    if batch.column("keys").null_count or batch.column("addr").null_count:
        raise PartialError(f"entity table {i}: missing keys or addresses")
    pair = kind is EntityType.HOST_PAIR
    if batch.column("addr2").null_count != (0 if pair else batch.num_rows):
        raise PartialError(f"entity table {i}: a host pair needs both addresses, and only a host pair")
    return EntityTable(
        kind,
        arrow_to_numpy(batch.column("keys")),
        _address_column(batch.column("addr")),
        _address_column(batch.column("addr2")) if pair else _EMPTY_ADDR,
    )


def _part(i: int, batch: pa.RecordBatch, meta: dict[str, str], tables: list[EntityTable]) -> PartRows:
    batch.validate(full=True)
    if (
        batch.column("entity").null_count
        or batch.column("values").null_count
        or batch.column("contributions").null_count
    ):
        raise PartialError(f"part {i}: missing values")
    position = int(meta["table"])
    if not 0 <= position < len(tables):
        raise PartialError(f"part {i}: names entity table {position} of {len(tables)}")
    table = tables[position]
    entity = arrow_to_numpy(batch.column("entity"))
    if len(entity) and (entity.min() < 0 or entity.max() >= len(table)):
        raise PartialError(f"part {i}: names entities beyond its table's {len(table)}")
    values = arrow_to_numpy(batch.column("values"))
    if meta["values"] == "amounts":
        values = values.view(np.int64)
        if (values < 0).any():
            raise PartialError(f"part {i}: negative amounts")
    elif meta["values"] != "peers":
        raise PartialError(f"part {i}: values are {meta['values']!r}, expected amounts or peers")
    contributions = arrow_to_numpy(batch.column("contributions"))
    if (contributions < 0).any():
        raise PartialError(f"part {i}: negative contributions")
    return PartRows(
        int(meta["definition"]), meta["signature"], int(meta["bucket"]), table, entity, values, contributions
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
