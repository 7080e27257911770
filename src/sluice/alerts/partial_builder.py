"""A collector's side of alerting: its session batches made into partial windows
(``partial.py``) for the alerting node to merge.

The per-row work is the single server's (``AlertEngine.select``: prefilters, exceptions,
roles, COUNT's contributions from the collector's own ``SlotHistory``); what is left out is
the windows. Each batch's entities of a type are numbered once, in a key index cleared for
the next batch (so a collector's memory does not grow with the entities it has seen), and each
definition's rows are summed per entity in one compiled pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import structlog

from ..compiled import njit
from ..flows.schema import Arrivals, SessionBatch
from .definition import Definition, EntityType
from .engine import AlertEngine, AlertEvent, DefinitionState, Periods, prefilter_mask, warm_up_inputs
from .entities import BatchKeys, EntityRows
from .keyindex import KeyIndex
from .partial import EntityTable, Partial, PartRows, decode, encode

log = structlog.get_logger(__name__)

_NO_ADDR = np.zeros((0, 16), np.uint8)

#: a partial's arrays at most (about 16 bytes a row, 24 to 40 an entity): with Arrow's
#: framing, under the 1 MB a NATS server takes by default (``max_payload``)
MAX_PARTIAL_BYTES = 768 << 10


@njit(cache=True, nogil=True)
def _sum_part(
    entity_of: np.ndarray, mask: np.ndarray, amounts: np.ndarray, contributing: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The masked rows summed per entity (``entity_of``: each row's, of ``n``): (the entities
    with a masked row, in order; each one's amount; each one's contributions)."""
    acc = np.zeros(n, np.int64)
    count = np.zeros(n, np.int32)
    hit = np.zeros(n, np.bool_)
    k = 0
    for r in range(entity_of.shape[0]):
        if mask[r]:
            e = entity_of[r]
            if not hit[e]:
                hit[e] = True
                k += 1
            acc[e] += amounts[r]
            count[e] += contributing[r]
    entity = np.empty(k, np.int32)
    sums = np.empty(k, np.int64)
    counts = np.empty(k, np.int32)
    j = 0
    for e in range(n):
        if hit[e]:
            entity[j] = e
            sums[j] = acc[e]
            counts[j] = count[e]
            j += 1
    return entity, sums, counts


@njit(cache=True, nogil=True)
def _pairs_part(
    entity_of: np.ndarray, mask: np.ndarray, peers: np.ndarray, contributing: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The masked rows' distinct (entity, peer) pairs in entity order (the rows placed by
    entity in one counting pass, each entity's few peers sorted), and each entity's
    contributions on its first pair."""
    start = np.zeros(n + 1, np.int64)
    contrib = np.zeros(n, np.int32)
    for r in range(entity_of.shape[0]):
        if mask[r]:
            start[entity_of[r] + 1] += 1
            contrib[entity_of[r]] += contributing[r]
    for e in range(n):
        start[e + 1] += start[e]
    m = start[n]
    fill = start[:n].copy()
    by_entity = np.empty(m, np.uint64)
    for r in range(entity_of.shape[0]):
        if mask[r]:
            e = entity_of[r]
            by_entity[fill[e]] = peers[r]
            fill[e] += 1
    entity = np.empty(m, np.int32)
    peer = np.empty(m, np.uint64)
    counts = np.empty(m, np.int32)
    k = 0
    for e in range(n):
        a, b = start[e], start[e + 1]
        if b - a > 1:
            by_entity[a:b] = np.sort(by_entity[a:b])
        for i in range(a, b):
            if i == a or by_entity[i] != by_entity[i - 1]:
                entity[k] = e
                peer[k] = by_entity[i]
                counts[k] = contrib[e] if i == a else 0
                k += 1
    return entity[:k], peer[:k], counts[:k]


def _rows_of(part: PartRows, a: int, b: int, table: EntityTable, first: int) -> PartRows:
    """Rows ``a:b`` of a part, naming entities of ``table`` (the part's from row ``first`` on)."""
    return PartRows(
        part.definition_id,
        part.signature,
        part.bucket,
        table,
        part.entity[a:b] - first,
        part.values[a:b],
        part.contributions[a:b],
    )


def _by_rows(parts: list[PartRows], max_bytes: int) -> list[list[PartRows]]:
    """Parts cut by rows into groups of at most ``max_bytes``, counting each row with the
    table entry it may need; each group names only the entities its rows do."""
    groups: list[list[PartRows]] = [[]]
    room = max_bytes
    for part in parts:
        per_row = part.entity.itemsize + part.values.itemsize + part.contributions.itemsize
        per_row += part.table.nbytes() // max(len(part.table), 1)
        a = 0
        while a < len(part):
            take = min(len(part) - a, room // per_row)
            if take <= 0 and groups[-1]:  # this group is full: the next
                groups.append([])
                room = max_bytes
                continue
            take = max(take, 1)  # a row larger than the bound goes alone
            groups[-1].append(part.rows_slice(a, a + take) if take < len(part) else part)
            room -= take * per_row
            a += take
    return [_own_tables(group) for group in groups if group]


def _own_tables(parts: list[PartRows]) -> list[PartRows]:
    """Parts whose tables hold only the entities they name."""
    named: dict[int, np.ndarray] = {}
    for part in parts:
        named[id(part.table)] = np.union1d(named.get(id(part.table), part.entity[:0]), part.entity)
    subs: dict[int, EntityTable | None] = dict.fromkeys(named)
    out = []
    for part in parts:
        keep = named[id(part.table)]
        sub = subs[id(part.table)]
        if sub is None:
            t = part.table
            sub = subs[id(part.table)] = EntityTable(
                t.kind, t.keys[keep], t.addr[keep], t.addr2[keep] if len(t.addr2) else _NO_ADDR
            )
        out.append(
            PartRows(
                part.definition_id,
                part.signature,
                part.bucket,
                sub,
                np.searchsorted(keep, part.entity).astype(np.int32),
                part.values,
                part.contributions,
            )
        )
    return out


class PartialBuilder:
    """Makes the parts of session batches, and packs them into numbered ``Partial``s."""

    def __init__(
        self,
        collector: str,
        epoch_ms: int | None = None,
        on_partials: Callable[[list[Partial]], None] | None = None,
    ):
        self.collector = collector
        self.epoch = epoch_ms if epoch_ms is not None else int(time.time() * 1000)
        self.seq = 0
        self.on_partials = on_partials
        # the definitions and what COUNT remembers per tracker slot; no windows are filled
        self.engine = AlertEngine()
        # per entity type, a numbering of one batch's entities (cleared for the next)
        self._numbering: dict[EntityType, KeyIndex] = {}

    @staticmethod
    def warm_up() -> None:
        """Compile (or load from numba's cache) the loops of a collector's partials and of the
        alerting node's merge now, at start: compiled on the first batch instead, they held a
        new cluster's first partials up for tens of seconds on a slow machine."""
        definitions, sessions = warm_up_inputs()
        builder = PartialBuilder("warm-up", 0)
        builder.set_definitions(definitions)
        node = AlertEngine()
        node.set_definitions(definitions)
        for now_ms in (1_000, 2_000):
            partials = builder.pack(builder.parts(sessions, Arrivals(np.ones(2, bool), np.arange(2)), now_ms), now_ms)
            node.merge_partials([(decode(encode(p)), p.seq) for p in partials], now_ms)

    @property
    def stats(self) -> dict[str, int]:
        return self.engine.stats

    def set_definitions(self, definitions: Iterable[Definition]) -> None:
        self.engine.set_definitions(definitions)

    def evaluate(
        self, sessions: SessionBatch, arrivals: Arrivals, now_ms: int, now_us: int | None = None
    ) -> list[AlertEvent]:
        """``AlertEngine.evaluate``'s place on a collector (``EngineRunner`` calls it): the
        batch's partials go to ``on_partials``; the events are the alerting node's to find."""
        partials = self.pack(self.parts(sessions, arrivals, now_ms), now_ms)
        if partials and self.on_partials is not None:
            self.on_partials(partials)
        return []

    def parts(self, sessions: SessionBatch, arrivals: Arrivals, now_ms: int) -> list[PartRows]:
        """The parts of a batch of session delta rows (each row in the period it arrived in),
        naming their entities in one table per entity type."""
        engine = self.engine
        with engine.lock:
            if engine.failures:  # failed definitions are tried again in time, as on one server
                engine.retry_failed(now_ms)
            if not len(sessions) or not engine.states:
                return []
            at_ms = arrivals.at_ms if arrivals.at_ms is not None else np.full(len(sessions), now_ms, np.int64)
            periods = Periods(at_ms, engine.history.recall(arrivals.slot, arrivals.new, at_ms, sessions))
            engine.stats["rows_evaluated"] += len(sessions)
            shared = BatchKeys(sessions)
            masks: dict[str, np.ndarray] = {}
            by_kind: dict[EntityType, list[DefinitionState]] = {}
            for state in engine.states.values():
                by_kind.setdefault(state.definition.entity, []).append(state)
            out: list[PartRows] = []
            for kind, states in by_kind.items():
                rows = EntityRows(kind, sessions, arrivals.new, shared)
                # the batch's entities numbered in order of appearance (``select`` compares them)
                numbering = self._numbering.setdefault(kind, KeyIndex(4096))
                numbering.clear()
                rows.ids, added = numbering.get_or_add(rows.keys)
                first = np.flatnonzero(added)  # each entity's first row, in number order
                own = rows.own_addresses()
                table = EntityTable(kind, rows.keys[first], own[0][first], own[1][first] if len(own) > 1 else _NO_ADDR)
                for state in states:
                    try:
                        pre = prefilter_mask(state, sessions, masks)
                        out.extend(self._parts_of(state, rows, pre, periods, table))
                    except Exception as exc:
                        engine.set_aside(state, "evaluation failed", exc)
            return out

    @staticmethod
    def _parts_of(
        state: DefinitionState, rows: EntityRows, pre: np.ndarray | None, periods: Periods, table: EntityTable
    ) -> list[PartRows]:
        selected = AlertEngine.select(state, rows, pre, periods, -1)  # lateness is the alerting node's to judge
        if selected is None:
            return []
        mask, contributing, buckets, steps = selected
        definition = state.definition
        out = []
        for bucket in steps.tolist():
            in_step = mask if len(steps) == 1 else mask & rows.session_col_of(buckets == bucket)
            if definition.metric.is_distinct:
                entity, values, contributions = _pairs_part(
                    rows.ids, in_step, rows.peers(definition.metric), contributing, len(table)
                )
            else:
                entity, values, contributions = _sum_part(
                    rows.ids, in_step, rows.values(definition.metric), contributing, len(table)
                )
            out.append(PartRows(definition.id, state.signature, int(bucket), table, entity, values, contributions))
        return out

    def pack(self, parts: list[PartRows], now_ms: int, max_bytes: int = MAX_PARTIAL_BYTES) -> list[Partial]:
        """Parts in numbered partials of at most ``max_bytes`` of arrays each. A large batch is
        cut into ranges of each table's entities, each partial carrying its ranges of the
        tables and of the parts (whose rows are in entity order); a range still too large (an
        entity with very many distinct peers) is cut by rows."""
        if not parts:
            return []
        whole = Partial(self.collector, self.epoch, 0, now_ms, parts)
        pieces = -(-whole.nbytes() // max_bytes)
        if pieces <= 1:
            return [self._numbered(parts, now_ms)]
        out = []
        tables = whole.tables()
        for j in range(pieces):
            cut: dict[int, tuple[EntityTable, int, int]] = {}
            for table in tables:
                lo, hi = len(table) * j // pieces, len(table) * (j + 1) // pieces
                cut[id(table)] = (table.rows(lo, hi), lo, hi)
            chunk = []
            for part in parts:
                sub, lo, hi = cut[id(part.table)]
                a, b = np.searchsorted(part.entity, (lo, hi))
                if b > a:
                    chunk.append(_rows_of(part, a, b, sub, lo))
            if not chunk:
                continue
            if Partial("", 0, 0, now_ms, chunk).nbytes() <= max_bytes:
                out.append(self._numbered(chunk, now_ms))
            else:
                out.extend(self._numbered(rows, now_ms) for rows in _by_rows(chunk, max_bytes))
        return out

    def _numbered(self, parts: list[PartRows], now_ms: int) -> Partial:
        self.seq += 1
        return Partial(self.collector, self.epoch, self.seq, now_ms, parts)
