"""A collector's side of alerting: its session batches made into partial windows
(``partial.py``) for the alerting node to merge.

The per-row work is the single server's (``AlertEngine.select``: prefilters, exceptions,
roles, COUNT's contributions from the collector's own ``SlotHistory``); what is left out is
the windows. Each batch's rows are grouped by entity (sorting: a collector keeps no entity
index, so its memory does not grow with the entities it has seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import structlog

from ..flows.schema import Arrivals, SessionBatch
from ..query.evaluate import evaluate
from .definition import Definition, EntityType
from .engine import AlertEngine, AlertEvent, DefinitionState, _Periods
from .entities import BatchKeys, EntityRows
from .partial import Partial, PartRows

log = structlog.get_logger(__name__)

_NO_ADDR = np.zeros((0, 16), np.uint8)

#: a partial's rows at most: about 40 bytes each (a host pair's 56), so that a partial stays
#: under NATS's default message size of 1 MiB
MAX_PARTIAL_ROWS = 16_384


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
        """The parts of a batch of session delta rows (each row in the period it arrived in)."""
        engine = self.engine
        with engine.lock:
            if not len(sessions) or not engine.states:
                return []
            at_ms = arrivals.at_ms if arrivals.at_ms is not None else np.full(len(sessions), now_ms, np.int64)
            periods = _Periods(at_ms, engine.history.recall(arrivals.slot, arrivals.new, at_ms, sessions))
            engine.stats["rows_evaluated"] += len(sessions)
            shared = BatchKeys(sessions)
            masks: dict[str, np.ndarray] = {}
            by_kind: dict[EntityType, list[DefinitionState]] = {}
            for state in engine.states.values():
                by_kind.setdefault(state.definition.entity, []).append(state)
            out: list[PartRows] = []
            for kind, states in by_kind.items():
                rows = EntityRows(kind, sessions, arrivals.new, shared)
                keys, first, inv = np.unique(rows.keys, return_index=True, return_inverse=True)
                rows.ids = inv.astype(np.int64)  # a numbering of the batch's entities (``select`` compares them)
                for state in states:
                    try:
                        pre = None
                        if state.prefilter is not None:
                            text = state.definition.prefilter
                            pre = masks.get(text)
                            if pre is None:
                                pre = masks[text] = evaluate(state.prefilter, sessions)
                        out.extend(self._parts_of(state, rows, pre, periods, keys, first))
                    except Exception as exc:
                        engine._set_aside(state, "evaluation failed", exc)
            return out

    @staticmethod
    def _parts_of(
        state: DefinitionState,
        rows: EntityRows,
        pre: np.ndarray | None,
        periods: _Periods,
        keys: np.ndarray,
        first: np.ndarray,
    ) -> list[PartRows]:
        selected = AlertEngine.select(state, rows, pre, periods, -1)  # lateness is the alerting node's to judge
        if selected is None:
            return []
        mask, contributing, buckets, steps = selected
        definition = state.definition
        own = rows.own_addresses()
        out = []
        for bucket in steps.tolist():
            in_step = mask if len(steps) == 1 else mask & rows.session_col_of(buckets == bucket)
            ent = rows.ids[in_step]
            contrib = np.bincount(ent, weights=contributing[in_step], minlength=len(keys)).astype(np.int32)
            if definition.metric.is_distinct:
                peers = rows.peers(definition.metric)[in_step]
                order = np.lexsort((peers, ent))
                ent, peers = ent[order], peers[order]
                new = np.ones(len(ent), bool)
                new[1:] = (ent[1:] != ent[:-1]) | (peers[1:] != peers[:-1])
                ent, peers = ent[new], peers[new]
                lead = np.ones(len(ent), bool)  # an entity's first pair carries its contributions
                lead[1:] = ent[1:] != ent[:-1]
                values: np.ndarray = peers.astype(np.uint64)
                contributions = np.where(lead, contrib[ent], 0).astype(np.int32)
            else:
                amounts = np.zeros(len(keys), np.int64)
                np.add.at(amounts, ent, rows.values(definition.metric)[in_step])
                ent = np.flatnonzero(np.bincount(ent, minlength=len(keys)))
                values, contributions = amounts[ent], contrib[ent]
            rep = first[ent]  # a row of each entity: the addresses that name it
            out.append(
                PartRows(
                    definition.id,
                    state.signature,
                    definition.entity,
                    int(bucket),
                    keys[ent],
                    own[0][rep],
                    own[1][rep] if len(own) > 1 else _NO_ADDR,
                    values,
                    contributions,
                )
            )
        return out

    def pack(self, parts: list[PartRows], now_ms: int, max_rows: int = MAX_PARTIAL_ROWS) -> list[Partial]:
        """Parts in numbered partials of at most ``max_rows`` rows (a part is split if need be)."""
        out: list[Partial] = []
        batch: list[PartRows] = []
        size = 0
        for part in parts:
            start = 0
            while start < len(part):
                take = min(len(part) - start, max_rows - size)
                batch.append(part if take == len(part) else part.rows(start, start + take))
                size += take
                start += take
                if size >= max_rows:
                    out.append(self._numbered(batch, now_ms))
                    batch, size = [], 0
        if batch:
            out.append(self._numbered(batch, now_ms))
        return out

    def _numbered(self, parts: list[PartRows], now_ms: int) -> Partial:
        self.seq += 1
        return Partial(self.collector, self.epoch, self.seq, now_ms, parts)
