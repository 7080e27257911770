"""The alert engine: every definition's sliding window, fed batch by batch as sessions arrive.

One evaluation takes a batch of session delta rows (what each touched session carried since
the last batch) and, per entity type in use, turns it into entity rows once (``entities.py``).
Entity keys get dense ids from one ``KeyIndex`` per type, shared by all definitions; each
definition then needs only masks, ``bincount``s and lookups of its window. Nothing here
loops over sessions in Python; the loops are over definitions, exception entries and
alerting entities.

Windows run on the server's clock: data counts in the step (alerting period) in which it
arrives, as with a rate meter, so that a record exported late by a router still counts once,
when it arrives. An entity alerts when its window value *exceeds* its threshold (equal is not
enough). COUNT: when a batch finds an entity over its threshold, each distinct session of
that batch that concerns the entity counts once for the current alerting period (see
docs/alerts.md).
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import structlog

from ..flows.schema import SessionBatch
from ..query.evaluate import evaluate, in_range
from ..query.filter import AddressRange, Node, parse
from .definition import AlertMetric, Definition, EntityType, alert_message, step_seconds
from .entities import BatchKeys, EntityRows
from .keyindex import KeyIndex, combine, distinct_first, group_rows, grown
from .window import DistinctWindow, SumWindow

log = structlog.get_logger(__name__)


@dataclass
class AlertEvent:
    """One (definition, entity) found over its threshold by one evaluation."""

    definition_id: int
    user_id: int
    entity_type: EntityType
    entity: str  # canonical text: the alert record's key with the definition
    message: str
    severity: str
    count: int  # new (session, period) pairs: added to the record's COUNT (v1)
    threshold: int  # v2: the threshold that applied to this entity
    value: int  # the window value that exceeded it
    time_us: int  # the trigger time (server clock, microseconds)


@dataclass
class _Exceptions:
    addresses: list[AddressRange]
    ports: np.ndarray
    countries: np.ndarray
    thresholds: list[tuple[AddressRange, int, int]]  # (range, prefix length, threshold)


class DefinitionState:
    """A definition with its compiled prefilter, exceptions and window."""

    def __init__(
        self,
        definition: Definition,
        exact_limit: int = 10_000,
        max_pairs: int = 16_000_000,
        max_step_bytes: int = 64 << 20,
    ):
        self.definition = definition
        self.signature = definition.window_signature()
        self.prefilter: Node | None = parse(definition.prefilter) if definition.prefilter else None
        step = step_seconds(definition.interval_s)
        self.step_ms = step * 1000
        self.n_buckets = definition.interval_s // step
        if definition.metric.is_distinct:
            self.window: SumWindow | DistinctWindow = DistinctWindow(
                self.step_ms, self.n_buckets, exact_limit, max_pairs
            )
        else:
            self.window = SumWindow(self.step_ms, self.n_buckets, max_step_bytes)
        self.counted = np.empty(0, np.uint64)  # (entity, session) pairs counted in this period
        self.counted_bucket = -1
        self.bucket = -1
        self.update(definition)

    def update(self, definition: Definition) -> None:
        """Take a new version of the definition whose window signature is unchanged."""
        self.definition = definition
        ex = definition.exceptions
        overrides = [(ipaddress.ip_network(o.cidr), o.threshold) for o in ex.thresholds]
        self.exceptions = _Exceptions(
            addresses=[AddressRange.of(ipaddress.ip_network(address)) for address in ex.addresses],
            ports=np.array(ex.ports, np.uint16),
            countries=np.array([c.encode() for c in ex.countries], "S2"),
            # prefix length in 128-bit terms, so IPv4 and IPv6 CIDRs compare by specificity
            thresholds=sorted(
                (
                    (AddressRange.of(net), net.prefixlen + (96 if net.version == 4 else 0), thr)
                    for net, thr in overrides
                ),
                key=lambda t: t[1],
            ),
        )

    def nbytes(self) -> int:
        return self.window.nbytes() + self.counted.nbytes


@dataclass(frozen=True)
class Failure:
    """Why a definition is not being evaluated: it failed to compile or to evaluate."""

    definition: Definition
    reason: str  # for its owner: what went wrong and what to do
    at_ms: int


#: a failed definition is tried again after this long (sooner if it is changed)
FAILED_RETRY_MS = 300_000


class AlertEngine:
    """Evaluates the enabled definitions over each batch; hands ``AlertEvent``s on.

    Definitions are isolated from each other: one that fails to compile or to evaluate is set
    aside as failed (``failures``: shown in the API, the editor and ``/metrics``) and the others
    go on; it is tried again when it changes, or after ``FAILED_RETRY_MS``."""

    def __init__(
        self,
        exact_limit: int = 10_000,
        max_pairs: int = 16_000_000,
        max_entities: int = 1 << 24,
        clock: Callable[[], float] = time.time,
        max_step_bytes: int = 64 << 20,
    ):
        self.exact_limit = exact_limit
        self.max_pairs = max_pairs
        self.max_step_bytes = max_step_bytes
        self.max_entities = max_entities
        self.clock = clock
        self.states: dict[int, DefinitionState] = {}
        self.failures: dict[int, Failure] = {}
        self.indexes: dict[EntityType, KeyIndex] = {}
        self.last_seen: dict[EntityType, np.ndarray] = {}
        self._scratch: dict[EntityType, np.ndarray] = {}  # per entity type, for ``group_rows``
        self.stats = {
            "rows_evaluated": 0,
            "rows_dropped": 0,
            "entities_dropped": 0,
            "events": 0,
            "evaluations": 0,
            "definition_failures": 0,
            "evaluation_errors": 0,
        }
        self.lock = threading.RLock()  # evaluation, definition changes, persistence, API reads
        self._last_reclaim_ms = 0
        self._ids_kept = 0  # snapshots being written: no entity id is given back meanwhile

    @staticmethod
    def warm_up() -> None:
        """Compile (or load from numba's cache) the engine's loops now, at start, rather than
        on the first evaluation, which would hold the ingest thread up for seconds."""
        engine = AlertEngine(max_step_bytes=0)  # no byte budget: every closed step is spread
        engine.set_definitions(
            Definition(
                id=i, user_id=0, title="warm-up", entity=EntityType.HOST, metric=metric, interval="1m", threshold=1
            )
            for i, metric in enumerate((AlertMetric.BYTES_SENT, AlertMetric.UNIQUE_HOSTS), 1)
        )
        sessions = SessionBatch.build(2, session_id=np.array([1, 2], np.uint64), cln_bytes=5, cln_pkts=1)
        # two batches in one step, the step closed (its chunks merged and spread), the spread
        # part taken back as its steps leave, then the window gone
        for now_ms in (1_000, 1_001, 3_000, 5_000, 62_000, 200_000):
            engine.evaluate(sessions, np.ones(2, bool), now_ms)
        KeyIndex(16).get_or_add(np.arange(64, dtype=np.uint64))  # a table that grows
        KeyIndex.from_state({"ids": np.arange(2), "keys": np.arange(1, 3, dtype=np.uint64)})  # and one restored

    # -- definitions ----------------------------------------------------------------------

    def set_definitions(self, definitions: Iterable[Definition]) -> None:
        """Install the current definitions; a definition whose window signature is unchanged
        keeps its state, a changed or new one starts empty."""
        with self.lock:
            new: dict[int, DefinitionState] = {}
            failures: dict[int, Failure] = {}
            for definition in definitions:
                if not definition.enabled:
                    continue
                failed = self.failures.get(definition.id)
                if failed is not None and failed.definition == definition:  # unchanged: waits for its retry
                    failures[definition.id] = failed
                    continue
                old = self.states.get(definition.id)
                try:
                    if old is not None and old.signature == definition.window_signature():
                        old.update(definition)
                        new[definition.id] = old
                    else:
                        new[definition.id] = self._prepare(definition)
                except Exception as exc:
                    failures[definition.id] = self._failure(definition, "could not be prepared", exc)
            self.states = new
            self.failures = failures

    def _prepare(self, definition: Definition) -> DefinitionState:
        return DefinitionState(definition, self.exact_limit, self.max_pairs, self.max_step_bytes)

    def _failure(self, definition: Definition, what: str, exc: BaseException) -> Failure:
        detail = f"{type(exc).__name__}: {exc}"[:300]
        log.error(
            "alert definition failed; the others go on",
            definition=definition.id,
            user=definition.user_id,
            what=what,
            error=detail,
        )
        self.stats["definition_failures"] += 1
        return Failure(
            definition,
            f"{what} ({detail}); it is skipped until it is changed, and retried every "
            f"{FAILED_RETRY_MS // 60_000} minutes",
            int(self.clock() * 1000),
        )

    def _set_aside(self, state: DefinitionState, what: str, exc: BaseException) -> None:
        definition = state.definition
        self.failures[definition.id] = self._failure(definition, what, exc)
        self.states.pop(definition.id, None)

    def _retry_failed(self, now_ms: int) -> None:
        """Failed definitions whose retry time has come start again, with an empty window."""
        for definition_id, failed in list(self.failures.items()):
            if now_ms - failed.at_ms < FAILED_RETRY_MS:
                continue
            try:
                self.states[definition_id] = self._prepare(failed.definition)
                del self.failures[definition_id]
            except Exception as exc:
                self.failures[definition_id] = self._failure(failed.definition, "could not be prepared", exc)

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(
        self, sessions: SessionBatch, new: np.ndarray, now_ms: int, now_us: int | None = None
    ) -> list[AlertEvent]:
        """Fold a batch of session delta rows (``new``: the session started in this batch)
        into every window at time ``now_ms``; the alert events it causes (stamped ``now_us``,
        by default ``now_ms``)."""
        with self.lock:
            self.stats["evaluations"] += 1
            if self.failures:
                self._retry_failed(now_ms)
            self._advance(now_ms)
            if not len(sessions) or not self.states:
                return []
            self.stats["rows_evaluated"] += len(sessions)
            masks: dict[str, np.ndarray] = {}
            rows_by_kind: dict[EntityType, EntityRows | None] = {}
            shared = BatchKeys(sessions)
            events: list[AlertEvent] = []
            for state in list(self.states.values()):
                kind = state.definition.entity
                if kind not in rows_by_kind:
                    try:
                        rows_by_kind[kind] = self._entity_rows(kind, sessions, new, now_ms, shared)
                    except Exception:  # not one definition's fault: this batch skips the entity type
                        log.exception("alert entity rows failed", entity=kind.value)
                        self.stats["evaluation_errors"] += 1
                        rows_by_kind[kind] = None
                rows = rows_by_kind[kind]
                if rows is None:
                    continue
                try:
                    pre = None
                    if state.prefilter is not None:
                        text = state.definition.prefilter
                        pre = masks.get(text)
                        if pre is None:
                            pre = masks[text] = evaluate(state.prefilter, sessions)
                    events.extend(self._evaluate_one(state, rows, pre, now_ms, now_us or now_ms * 1000))
                except Exception as exc:
                    self._set_aside(state, "evaluation failed", exc)
            self.stats["events"] += len(events)
            return events

    def _entity_rows(
        self, kind: EntityType, sessions: SessionBatch, new: np.ndarray, now_ms: int, shared: BatchKeys
    ) -> EntityRows:
        rows = EntityRows(kind, sessions, new, shared)
        index = self.indexes.get(kind)
        if index is None:
            index = self.indexes[kind] = KeyIndex(4096, max_ids=self.max_entities)
            self.last_seen[kind] = np.zeros(4096, np.int64)
        ids, _ = index.get_or_add(rows.keys)
        full = ids < 0
        if full.any():
            self.stats["entities_dropped"] += int(full.sum())
            rows.valid = ~full if rows.valid is None else rows.valid & ~full
            ids = np.where(full, 0, ids)
        seen = self.last_seen[kind]
        if len(seen) < index.id_capacity:
            seen = self.last_seen[kind] = grown(seen, index.id_capacity)
        seen[ids if rows.valid is None else ids[rows.valid]] = now_ms
        rows.ids = ids
        # a compact numbering of this batch's entities, shared by every definition of the type
        scratch = self._scratch.get(kind)
        if scratch is None or len(scratch) < index.id_capacity:
            scratch = self._scratch[kind] = np.empty(index.id_capacity, np.int64)
        rows.uniq, rows.inv, rows.first = group_rows(ids, scratch)
        return rows

    def _row_mask(self, state: DefinitionState, rows: EntityRows, pre: np.ndarray | None) -> np.ndarray:
        definition = state.definition
        mask = rows.role(definition.metric)
        if pre is not None:
            mask = mask & rows.session_col_of(pre)
        ex = state.exceptions
        if len(ex.ports):
            mask = mask & ~np.isin(rows.session_col("srv_port"), ex.ports)
        for col in rows.own_addresses() if ex.addresses else ():
            for address_range in ex.addresses:
                mask = mask & ~in_range(col, address_range)
        for col in rows.own_countries() if len(ex.countries) else ():
            mask = mask & ~np.isin(col, ex.countries)
        return mask

    def _thresholds(self, state: DefinitionState, rows: EntityRows, rep: np.ndarray) -> np.ndarray:
        """Threshold per entity (``rep``: one row of each), overrides by CIDR applied."""
        definition = state.definition
        thr = np.full(len(rep), definition.threshold, np.int64)
        for address_range, _, value in state.exceptions.thresholds:  # least specific first: the most specific wins
            hit = np.zeros(len(rep), bool)
            for col in rows.own_addresses():
                hit |= in_range(col[rep], address_range)
            thr[hit] = value
        return thr

    def _evaluate_one(
        self, state: DefinitionState, rows: EntityRows, pre: np.ndarray | None, now_ms: int, time_us: int
    ) -> list[AlertEvent]:
        definition = state.definition
        mask = self._row_mask(state, rows, pre)
        if not mask.any():
            return []
        bucket = now_ms // state.step_ms
        n_uniq = len(rows.uniq)
        window = state.window  # distinct metrics have a DistinctWindow, the others a SumWindow
        if isinstance(window, DistinctWindow):
            local, values = window.fold(rows.inv, rows.uniq, rows.ids, mask, rows.peers(definition.metric), bucket)
        else:
            # a session row may concern an entity and add nothing; for the other metrics the
            # role is "adds something": the entities concerned are those with a sum
            local, values = window.fold(
                rows.inv, rows.uniq, mask, rows.values(definition.metric),
                definition.metric.value.startswith("sessions"), bucket,
            )  # fmt: skip
        thresholds = self._thresholds(state, rows, rows.first[local])
        over = values > thresholds
        if not over.any():
            return []
        # COUNT: distinct (entity, session) pairs of this batch, once per alerting period
        over_local = np.zeros(n_uniq, bool)
        over_local[local[over]] = True
        hit_rows = np.flatnonzero(mask & over_local[rows.inv])
        sid = rows.sessions["session_id"][rows.session_row[hit_rows]]
        pair, first_of_pair = distinct_first(combine(rows.ids[hit_rows].astype(np.uint64), sid))
        if state.counted_bucket != bucket:
            state.counted, state.counted_bucket = np.empty(0, np.uint64), bucket
        at = np.searchsorted(state.counted, pair)
        fresh = (
            (at >= len(state.counted)) | (state.counted[np.minimum(at, max(len(state.counted) - 1, 0))] != pair)
            if len(state.counted)
            else np.ones(len(pair), bool)
        )
        state.counted = np.insert(state.counted, at[fresh], pair[fresh])  # stays sorted
        pair_rows = hit_rows[first_of_pair[fresh]]
        increments = np.bincount(rows.inv[pair_rows], minlength=n_uniq)
        events = []
        for li, value, thr in zip(local[over].tolist(), values[over].tolist(), thresholds[over].tolist(), strict=True):
            inc = int(increments[li])
            if inc == 0:
                continue
            text = rows.text(int(rows.first[li]))
            events.append(
                AlertEvent(
                    definition.id,
                    definition.user_id,
                    definition.entity,
                    text,
                    alert_message(definition.metric, definition.entity, text),
                    definition.severity.value,
                    inc,
                    int(thr),
                    int(value),
                    time_us,
                )
            )
        return events

    # -- time -----------------------------------------------------------------------------

    def _advance(self, now_ms: int) -> None:
        for state in list(self.states.values()):
            bucket = now_ms // state.step_ms
            if bucket != state.bucket:
                try:
                    state.window.advance(bucket)
                except Exception as exc:
                    self._set_aside(state, "its window could not slide", exc)
                state.bucket = bucket
        if now_ms - self._last_reclaim_ms > 60_000 and not self._ids_kept:
            self._reclaim(now_ms)
            self._last_reclaim_ms = now_ms

    @contextlib.contextmanager
    def ids_kept(self) -> Iterator[None]:
        """No entity id is given back while inside (a snapshot written window by window: the
        indexes, written last, must hold every id of the windows written before them)."""
        with self.lock:
            self._ids_kept += 1
        try:
            yield
        finally:
            with self.lock:
                self._ids_kept -= 1

    def _reclaim(self, now_ms: int) -> None:
        """Give back the ids of entities that no window holds any more."""
        for kind, index in self.indexes.items():
            windows = [state for state in self.states.values() if state.definition.entity is kind]
            horizon = max((state.definition.interval_s * 1000 + state.step_ms for state in windows), default=0)
            seen = self.last_seen[kind]
            ids = index.live_ids()
            old = ids[seen[ids] < now_ms - horizon]
            for state in windows:
                if len(old):
                    old = old[state.window.value(old) == 0]
            index.remove(old)

    # -- bookkeeping ----------------------------------------------------------------------

    def memory(self) -> dict[str, int]:
        """Bytes held: per definition (its window), and by the shared entity indexes."""
        with self.lock:
            out = {f"definition:{definition_id}": state.nbytes() for definition_id, state in self.states.items()}
            for kind, index in self.indexes.items():
                out[f"index:{kind.value}"] = index.nbytes() + self.last_seen[kind].nbytes
            return out

    def failure(self, definition_id: int) -> Failure | None:
        """Why a definition is set aside, or None if it is being evaluated (or disabled)."""
        with self.lock:
            return self.failures.get(definition_id)

    def spread_steps(self, definition_id: int) -> int:
        """How many of a definition's window steps are held as an even spread (0: exact)."""
        with self.lock:
            state = self.states.get(definition_id)
            return state.window.spread_steps() if state is not None and isinstance(state.window, SumWindow) else 0

    def active_entities(self, definition_id: int) -> int:
        with self.lock:
            state = self.states.get(definition_id)
            return 0 if state is None else len(state.window.active_ids())
