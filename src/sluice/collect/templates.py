"""Template machinery shared by NetFlow v9 and IPFIX.

Templates (data and options) are kept per (exporter address, exporter port, source id /
observation domain, template id). Data sets are not decoded one by one: the set walkers
(``netflow9``, ``ipfix``) hand each data set to a :class:`SetCollector`, which groups the
sets of one batch of datagrams by template, and :func:`decode_sets` then decodes every set
of a template at once with numpy. Data that arrives before its template waits in a bounded
:class:`PendingData` buffer and is decoded when the template comes, or counted as a
template miss when it expires.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..counters import Counters
from .ie import ELEMENTS, REVERSE_PEN, V9_SCOPES, VARLEN, Kind
from .wire import be_uint, gather, ipv4_to_mapped

NTP_EPOCH_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01

ExporterKey = tuple[bytes, int]  # (16-byte address, UDP port)
TemplateKey = tuple[bytes, int, int, int]  # (address, port, domain, template id)


@dataclass(frozen=True)
class TemplateField:
    pen: int  # private enterprise number, 0 for IANA elements
    ie: int  # element id (for a v9 scope field: the scope type)
    length: int  # bytes, or VARLEN
    scope: bool = False  # a NetFlow v9 options scope field


@dataclass(frozen=True)
class FieldPlan:
    key: str
    kind: Kind
    index: int  # position of the field in the template
    length: int
    reverse: bool


class Template:
    """A compiled template: record layout plus which normalised keys it carries."""

    def __init__(self, version: int, template_id: int, kind: str, fields: tuple[TemplateField, ...]):
        self.version = version
        self.template_id = template_id
        self.kind = kind  # "flow" (data template) or "options"
        self.fields = fields
        self.variable = any(f.length == VARLEN for f in fields)
        fixed = sum(f.length for f in fields if f.length != VARLEN)
        self.record_length: int | None = None if self.variable else fixed
        # the shortest possible record: every variable field empty (one length byte)
        self.min_length = fixed + sum(1 for f in fields if f.length == VARLEN)
        self.offsets: list[int] = []
        pos = 0
        for f in fields:
            self.offsets.append(pos)
            pos += 0 if f.length == VARLEN else f.length
        self.plan = self._compile()
        self.record_dtype = self._record_dtype()

    def _record_dtype(self) -> np.dtype | None:
        """A structured dtype over one fixed-length record exposing the planned fields of
        standard widths as big-endian integers, so a field is read in one numpy pass."""
        if self.record_length is None or self.record_length == 0:
            return None
        names, formats, offsets = [], [], []
        for fp in self.plan:
            if fp.length in (1, 2, 4, 8) and fp.kind is not Kind.TIME_NTP:
                names.append(f"f{fp.index}")
                formats.append(f">u{fp.length}")
                offsets.append(self.offsets[fp.index])
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": self.record_length})

    def _compile(self) -> list[FieldPlan]:
        plan: list[FieldPlan] = []
        for index, f in enumerate(self.fields):
            if f.length == VARLEN or f.length == 0:
                continue  # strings and empty fields carry nothing Sluice interprets
            if f.scope:
                key = V9_SCOPES.get(f.ie)
                if key and f.length <= 8:
                    plan.append(FieldPlan(key, Kind.UINT, index, f.length, False))
                continue
            if f.pen not in (0, REVERSE_PEN) or f.ie not in ELEMENTS:
                continue
            key, kind = ELEMENTS[f.ie]
            if not _length_fits(kind, f.length):
                continue  # e.g. an address element of the wrong size: skip, don't misread
            plan.append(FieldPlan(key, kind, index, f.length, f.pen == REVERSE_PEN))
        return plan

    def same_layout(self, other: Template) -> bool:
        return self.kind == other.kind and self.fields == other.fields


def _length_fits(kind: Kind, length: int) -> bool:
    if kind is Kind.IPV4:
        return length == 4
    if kind is Kind.IPV6:
        return length == 16
    if kind is Kind.TIME_NTP:
        return length == 8
    return 1 <= length <= 8


@dataclass(slots=True)
class SetMeta:
    """Header values that every record of one set shares."""

    datagram: int  # index of the datagram in its batch
    ordinal: int  # set position within the datagram
    version: int
    source_id: int
    export_ms: int
    sys_uptime_ms: int  # v9 only; 0 for IPFIX
    exporter: ExporterKey


class PieceKeys:
    """Per piece (a set, or a v5 datagram), its exporter's key (exporter address, source id
    or domain), as an index into the batch's few distinct keys: what is looked up per
    exporter (its sampling rate, its init time) is then looked up once per key, not in a
    Python loop over a batch's thousand sets."""

    __slots__ = ("index", "distinct")

    def __init__(self, index: np.ndarray, distinct: list[tuple[bytes, int]]):
        self.index = index  # per piece: its key's position in ``distinct``
        self.distinct = distinct

    @classmethod
    def of(cls, keys: list[tuple[bytes, int]]) -> PieceKeys:
        """From each piece's key (the walk one datagram at a time)."""
        positions: dict[tuple[bytes, int], int] = {}
        index = np.array([positions.setdefault(key, len(positions)) for key in keys], np.int64)
        return cls(index, list(positions))

    @classmethod
    def of_arrays(cls, exporter: np.ndarray, domain: np.ndarray, addr16: list[bytes]) -> PieceKeys:
        """From each piece's exporter (an index into ``addr16``, their addresses) and domain
        (32 bits), without a loop over the pieces."""
        packed = (exporter.astype(np.int64) << 32) | (domain.astype(np.int64) & 0xFFFFFFFF)
        distinct, index = np.unique(packed, return_inverse=True)
        return cls(index.reshape(-1), [(addr16[k >> 32], k & 0xFFFFFFFF) for k in distinct.tolist()])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, piece: int) -> tuple[bytes, int]:
        return self.distinct[self.index[piece]]

    def as_list(self) -> list[tuple[bytes, int]]:
        """Each piece's key, in order."""
        return [self.distinct[i] for i in self.index.tolist()]


@dataclass
class RawRecords:
    """Records of one template (or of NetFlow v5) as normalised columns, in wire order."""

    version: int
    kind: str
    template_id: int | None
    columns: dict[str, np.ndarray]
    reverse: dict[str, np.ndarray]
    #: per record: source_id, export_ms, sys_uptime_ms, exporter (16 bytes), piece, seq
    meta: dict[str, np.ndarray]
    #: per piece (a set, or a v5 datagram): (exporter address, source id / domain); ``meta["piece"]``
    #: indexes it, so per-exporter lookups run once per distinct key instead of once per record
    piece_keys: PieceKeys

    def __len__(self) -> int:
        return len(self.meta["seq"])

    @property
    def datagram(self) -> np.ndarray:
        """Index of each record's datagram within its batch."""
        return self.meta["seq"] >> 36


class TemplateCache:
    """Templates per (exporter, domain, id), with a bound on how many are kept."""

    def __init__(self, counters: Counters, max_templates: int = 65536):
        self.counters = counters
        self.max_templates = max_templates
        self._templates: OrderedDict[TemplateKey, Template] = OrderedDict()

    def __len__(self) -> int:
        return len(self._templates)

    def get(self, key: TemplateKey) -> Template | None:
        return self._templates.get(key)

    def put(self, key: TemplateKey, template: Template, proto: str) -> bool:
        """Learn a template; returns True when it is new or changed its layout."""
        old = self._templates.get(key)
        if old is not None:
            if old.same_layout(template):
                return False
            self.counters.inc("templates_redefined_total", proto=proto)
        self._templates[key] = template
        self._templates.move_to_end(key)
        self.counters.inc("templates_learned_total", proto=proto)
        while len(self._templates) > self.max_templates:
            self._templates.popitem(last=False)
            self.counters.inc("templates_evicted_total", proto=proto)
        return True

    def withdraw(self, exporter: ExporterKey, domain: int, template_id: int | None, proto: str) -> None:
        """Forget one template, or (``template_id=None``) all of an exporter's domain."""
        if template_id is not None:
            if self._templates.pop((*exporter, domain, template_id), None) is not None:
                self.counters.inc("templates_withdrawn_total", proto=proto)
            return
        for key in [k for k in self._templates if k[:3] == (*exporter, domain)]:
            del self._templates[key]
            self.counters.inc("templates_withdrawn_total", proto=proto)


class PendingData:
    """Data sets waiting for their template, bounded in bytes and in age."""

    def __init__(self, counters: Counters, max_bytes: int = 8 << 20, max_age_s: float = 60.0):
        self.counters = counters
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._sets: OrderedDict[tuple[TemplateKey, int], tuple[float, bytes, SetMeta, str]] = OrderedDict()
        self._by_key: dict[TemplateKey, list[int]] = {}  # template key -> serials waiting for it
        self._bytes = 0
        self._serial = 0

    def __len__(self) -> int:
        return len(self._sets)

    def add(self, key: TemplateKey, payload: bytes, meta: SetMeta, proto: str, now: float) -> None:
        self.counters.inc("template_misses_total", proto=proto)
        self._serial += 1
        self._sets[(key, self._serial)] = (now, payload, meta, proto)
        self._by_key.setdefault(key, []).append(self._serial)
        self._bytes += len(payload)
        while self._bytes > self.max_bytes and self._sets:
            self._drop_oldest("pending_overflow")

    def waiting(self, key: TemplateKey) -> bool:
        return key in self._by_key

    def take(self, key: TemplateKey) -> list[tuple[bytes, SetMeta]]:
        """Remove and return the sets waiting for ``key``, oldest first."""
        out = []
        for serial in self._by_key.pop(key, []):
            _, payload, meta, _ = self._sets.pop((key, serial))
            self._bytes -= len(payload)
            out.append((payload, meta))
        return out

    def restore(self, key: TemplateKey, sets: list[tuple[bytes, SetMeta]], proto: str) -> None:
        """Put back sets that ``take`` returned (a batch that failed to decode gives them back)."""
        now = time.time()
        for payload, meta in sets:
            self._serial += 1
            self._sets[(key, self._serial)] = (now, payload, meta, proto)
            self._by_key.setdefault(key, []).append(self._serial)
            self._bytes += len(payload)

    def expire(self, now: float) -> None:
        while self._sets:
            arrived = next(iter(self._sets.values()))[0]
            if now - arrived < self.max_age_s:
                break
            self._drop_oldest("template_missing")

    def _drop_oldest(self, reason: str) -> None:
        (key, serial), (_, payload, _, proto) = self._sets.popitem(last=False)
        serials = self._by_key[key]
        serials.remove(serial)
        if not serials:
            del self._by_key[key]
        self._bytes -= len(payload)
        self.counters.inc("decode_errors_total", proto=proto, reason=reason)
        self.counters.inc("sets_dropped_total", proto=proto, reason=reason)


@dataclass
class SetCollector:
    """The data sets of one batch of datagrams, grouped by template."""

    groups: dict[TemplateKey, tuple[Template, list[bytes], list[SetMeta]]] = field(default_factory=dict)

    def add(self, key: TemplateKey, template: Template, payload: bytes, meta: SetMeta) -> None:
        group = self.groups.get(key)
        if group is None or group[0] is not template:
            if group is not None:  # redefined within the batch: decode what we have under a new key
                self.groups[(key[0], key[1], key[2], -len(self.groups))] = group
            group = (template, [], [])
            self.groups[key] = group
        group[1].append(payload)
        group[2].append(meta)


@dataclass
class Pieces:
    """What the sets of one template group share per set (a *piece*), as arrays: the
    header values of ``SetMeta``, one row per set."""

    datagram: np.ndarray  # index of the set's datagram in its batch
    ordinal: np.ndarray  # the set's position within its datagram
    source_id: np.ndarray
    export_ms: np.ndarray
    sys_uptime_ms: np.ndarray
    exporter: np.ndarray  # (sets, 16) uint8: the exporter's address
    keys: PieceKeys  # (exporter address, source id) per set

    @classmethod
    def of(cls, metas: list[SetMeta]) -> Pieces:
        return cls(
            np.array([m.datagram for m in metas], np.int64),
            np.array([m.ordinal for m in metas], np.int64),
            np.array([m.source_id for m in metas], np.int64),
            np.array([m.export_ms for m in metas], np.int64),
            np.array([m.sys_uptime_ms for m in metas], np.int64),
            np.frombuffer(b"".join(m.exporter[0] for m in metas), np.uint8).reshape(-1, 16),
            PieceKeys.of([(m.exporter[0], m.source_id) for m in metas]),
        )


def decode_sets(template: Template, payloads: list[bytes], metas: list[SetMeta]) -> RawRecords:
    """Decode every record of the given data sets of one template, vectorised."""
    if template.record_length is not None:
        reclen = template.record_length
        counts = np.array([len(p) // reclen for p in payloads], np.int64)
        buf = np.frombuffer(b"".join(p[: c * reclen] for p, c in zip(payloads, counts.tolist(), strict=True)), np.uint8)
        return decode_records(template, buf, counts, Pieces.of(metas))
    buf, starts, field_offsets, piece, counts = _walk_variable(template, payloads)
    return _decode(template, buf, len(starts), field_offsets, piece, counts, Pieces.of(metas))


def decode_records(template: Template, buf: np.ndarray, counts: np.ndarray, pieces: Pieces) -> RawRecords:
    """Decode the records of a fixed-length template laid end to end in ``buf``, ``counts``
    of them from each set (``pieces``), vectorised."""
    assert template.record_length is not None
    n = int(counts.sum())
    return _decode(template, buf[: n * template.record_length], n, None, np.repeat(np.arange(len(counts)), counts),
                   counts, pieces)  # fmt: skip


def _decode(
    template: Template,
    buf: np.ndarray,
    n: int,
    field_offsets: np.ndarray | None,
    piece: np.ndarray,
    counts: np.ndarray,
    pieces: Pieces,
) -> RawRecords:
    columns: dict[str, np.ndarray] = {}
    reverse: dict[str, np.ndarray] = {}
    export_ms = pieces.export_ms[piece]
    fixed_length = template.record_length if field_offsets is None and n else None
    matrix = buf.reshape(n, fixed_length) if fixed_length is not None else None
    records = buf.view(template.record_dtype) if matrix is not None and template.record_dtype is not None else None
    record_fields = records.dtype.fields if records is not None else None
    for fp in template.plan:
        name = f"f{fp.index}"
        if records is not None and record_fields is not None and name in record_fields:
            value = _interpret_int(fp.kind, records[name], export_ms)
        else:
            if field_offsets is not None:
                cols = gather(buf, field_offsets[:, fp.index], fp.length)
            elif matrix is not None:
                o = template.offsets[fp.index]
                cols = matrix[:, o : o + fp.length]
            else:
                cols = np.zeros((0, fp.length), np.uint8)
            value = _interpret(fp.kind, cols, export_ms)
        target = reverse if fp.reverse else columns
        if fp.key not in target:
            target[fp.key] = value
        elif fp.key in ("src_addr", "dst_addr"):  # both families carried: keep the specified one
            target[fp.key] = _prefer_specified(target[fp.key], value)

    meta_columns: dict[str, np.ndarray] = {
        "source_id": pieces.source_id[piece],
        "export_ms": export_ms,
        "sys_uptime_ms": pieces.sys_uptime_ms[piece],
        "exporter": pieces.exporter[piece],
        "piece": piece,
        # wire order across the batch: datagram, then set, then record within the set
        "seq": _wire_order(pieces, piece, counts),
    }
    return RawRecords(template.version, template.kind, template.template_id, columns, reverse, meta_columns,
                      pieces.keys)  # fmt: skip


def _wire_order(pieces: Pieces, piece: np.ndarray, counts: np.ndarray) -> np.ndarray:
    set_key = (pieces.datagram << 16) | pieces.ordinal
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    within = np.arange(len(piece), dtype=np.int64) - first[piece] if len(piece) else np.zeros(0, np.int64)
    return (set_key[piece] << 20) | within


def _interpret_int(kind: Kind, values: np.ndarray, export_ms: np.ndarray) -> np.ndarray:
    """Like ``_interpret`` for a field already read as big-endian integers (1/2/4/8 bytes)."""
    if kind is Kind.UINT:
        return values.astype(np.uint64)
    if kind is Kind.IPV4:
        return ipv4_to_mapped(values)
    if kind is Kind.TIME_S:
        return values.astype(np.int64) * 1000
    if kind is Kind.TIME_MS:
        return values.astype(np.int64)
    if kind is Kind.DELTA_US:
        return (export_ms * 1000 - values.astype(np.int64)) // 1000
    raise AssertionError(kind)


def _interpret(kind: Kind, cols: np.ndarray, export_ms: np.ndarray) -> np.ndarray:
    if kind is Kind.UINT:
        return be_uint(cols)
    if kind is Kind.IPV4:
        return ipv4_to_mapped(be_uint(cols).astype(np.uint32))
    if kind is Kind.IPV6:
        return np.ascontiguousarray(cols)
    if kind is Kind.TIME_S:
        return be_uint(cols).astype(np.int64) * 1000
    if kind is Kind.TIME_MS:
        return be_uint(cols).astype(np.int64)
    if kind is Kind.TIME_NTP:
        seconds = be_uint(cols[:, :4]).astype(np.int64) - NTP_EPOCH_OFFSET_S
        fraction = be_uint(cols[:, 4:]).astype(np.int64)
        return seconds * 1000 + ((fraction * 1000) >> 32)
    if kind is Kind.DELTA_US:
        delta_us = be_uint(cols).astype(np.int64)
        return (export_ms * 1000 - delta_us) // 1000
    raise AssertionError(kind)


def _prefer_specified(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per record, the address that is not unspecified (0.0.0.0 / ::) when both are carried."""
    v4_zero = (first[:, :12] == _V4_PREFIX).all(axis=1) & ~first[:, 12:].any(axis=1)
    unspecified = ~first.any(axis=1) | v4_zero
    return np.where(unspecified[:, None], second, first)


_V4_PREFIX = np.array([0] * 10 + [0xFF, 0xFF], np.uint8)


def _walk_variable(
    template: Template, payloads: list[bytes]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Find record and field offsets in sets of a variable-length template.

    Records within one set must be walked in order, but the walk runs across all sets of
    the batch at once: one numpy step per (record position, field), not per record.
    """
    buf = np.frombuffer(b"".join(payloads), np.uint8)
    lengths = np.array([len(p) for p in payloads], np.int64)
    ends = np.cumsum(lengths)
    pos = ends - lengths
    nfields = len(template.fields)
    rec_starts, rec_offsets, rec_piece, rec_index = [], [], [], []
    alive = np.arange(len(payloads))
    index = 0
    while len(alive):
        fits = pos[alive] + template.min_length <= ends[alive]
        alive = alive[fits]
        if not len(alive):
            break
        p = pos[alive].copy()
        start = p.copy()
        offsets = np.empty((len(alive), nfields), np.int64)
        for i, f in enumerate(template.fields):
            if f.length != VARLEN:
                offsets[:, i] = p
                p += f.length
                continue
            first = buf[np.minimum(p, len(buf) - 1)].astype(np.int64)
            long_form = first == 255
            second = be_uint(gather(buf, p + 1, 2)).astype(np.int64)
            flen = np.where(long_form, second, first)
            p += np.where(long_form, 3, 1)
            offsets[:, i] = p
            p += flen
        ok = p <= ends[alive]  # a record that runs past its set is padding or garbage: stop
        rec_starts.append(start[ok])
        rec_offsets.append(offsets[ok])
        rec_piece.append(alive[ok])
        rec_index.append(np.full(int(ok.sum()), index))
        pos[alive] = p
        alive = alive[ok]
        index += 1
    if not rec_starts:
        empty = np.zeros(0, np.int64)
        return buf, empty, np.zeros((0, nfields), np.int64), empty, np.zeros(len(payloads), np.int64)
    piece = np.concatenate(rec_piece)
    order = np.lexsort((np.concatenate(rec_index), piece))  # wire order: by set, then record
    counts = np.bincount(piece, minlength=len(payloads)).astype(np.int64)
    return buf, np.concatenate(rec_starts)[order], np.concatenate(rec_offsets)[order], piece[order], counts
