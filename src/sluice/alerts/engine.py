"""The alert engine: every definition's sliding window, fed batch by batch as sessions arrive.

One evaluation takes a batch of session delta rows (what each touched session carried since
the last batch) and, per entity type in use, turns it into entity rows once (``entities.py``).
Entity keys get dense ids from one ``KeyIndex`` per type, shared by all definitions; each
definition then needs only masks, ``bincount``s and lookups of its window. Nothing here
loops over sessions in Python; the loops are over definitions, exception entries and
alerting entities. Definitions share nothing but the batch, their entity type's rows and
what is worked out from the batch once, whichever asks first, so several threads evaluate
them side by side (``evaluation_threads``: the compiled loops release the GIL), each taking
the next definition when it is free (``tasks.py``).

Windows run on the server's clock: a row counts in the step (alerting period) in which it
arrived (``Arrivals.at_ms``, stamped when its flows were folded into sessions), as with a rate
meter, so that a record exported late by a router still counts once, when it arrives. An
entity alerts when its window value *exceeds* its threshold (equal is not enough).

COUNT counts (session, period) pairs, the same however the rows were batched: a session
*contributes* to an entity in a period when one of its rows arriving in that period concerns
the entity (``_contributions``: each session's first such row per period, told from when its
rows and its sides' traffic last came, kept per tracker slot in ``SlotHistory``). When the
entity is over its threshold in a period, every contribution in its window not counted yet
counts: on crossing, those already in the window; then each new one while it stays over.
Values only grow within a period (they fall when steps leave the window, at period
boundaries), so whether an entity is over by a period's end, and what it counts, do not
depend on when the evaluations ran (see docs/alerts.md).

A lower threshold ("falls below") is judged as each period ends, for its watched entities
only (``_step_to``): there, COUNT counts the periods spent below.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog

from ..allocator import grown
from ..flows.schema import Arrivals, SessionBatch
from ..lifecycle import EVALUATION_NICENESS, lower_priority
from ..query.evaluate import evaluate, in_range
from ..query.filter import AddressRange, Node, parse
from .definition import (
    BASELINE_LEARNING_S,
    AlertMetric,
    Definition,
    EntityType,
    ThresholdType,
    alert_message,
    step_seconds,
)
from .entities import BatchKeys, EntityRows, watched_keys
from .keyindex import BatchGrouping, KeyIndex, distinct, note_seen, room_for, used_nbytes
from .pairtable import BothWaysPairTable, PairTable
from .partial import PartGroup, Partial, PartRows, Positions
from .selection import has_row, select_sums
from .tasks import TaskList
from .window import CLN_BYTES, CLN_PKTS, LAST_ROW, SRV_BYTES, SRV_PKTS, DistinctWindow, SlotHistory, SumWindow

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
    count: int  # (session, period) pairs newly counted: added to the record's COUNT (v1)
    threshold: int  # v2: the threshold that applied to this entity
    value: int  # the window value that exceeded it
    time_us: int  # the trigger time (server clock, microseconds)
    seq: int = 0  # an alerting node's: the stream sequence of the partial that caused it


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
        #: the unique hosts of hosts: the window keeps pairs of hosts, both directions in a slot
        self.pairs_of_hosts = definition.entity is EntityType.HOST and definition.metric is AlertMetric.UNIQUE_HOSTS
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
        # COUNT: contributions ((session, period) pairs) per entity and step; per entity, the
        # step through which its contributions are counted (+ 1; 0: none) and how many of that
        # step's were
        self.contrib = SumWindow(self.step_ms, self.n_buckets, max_step_bytes, np.int32)
        self.counted_to = np.zeros(1024, np.int64)
        self.counted_amount = np.zeros(1024, np.int64)
        self.bucket = -1
        # a lower threshold: the watched entities' keys (its window holds only their rows), and
        # since when (server clock) its window has been filled: it judges a period only when
        # the whole window behind it was watched
        self.lower = definition.threshold_type is ThresholdType.LOWER
        self.watch_keys = watched_keys(definition.entity, definition.watch) if self.lower else None
        self.observed_from_ms: int | None = None
        # a baseline: per entity, the exponentially weighted sum of its window value sampled
        # once an interval (``usual``: 8 bytes an entity); the samples taken so far, and the
        # interval (bucket // n_buckets) to be sampled next, when it ends
        self.baseline = definition.threshold_type is ThresholdType.BASELINE
        self.usual_sum = np.zeros(1024 if self.baseline else 0, np.float64)
        self.samples = 0
        self.sampled = -1
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

    def nbytes(self, ids_used: int) -> int:
        """Bytes held, the per-entity arrays up to ``ids_used`` (beyond: room never written)."""
        counted = sum(used_nbytes(a, ids_used) for a in (self.counted_to, self.counted_amount, self.usual_sum))
        return self.window.nbytes(ids_used) + self.contrib.nbytes(ids_used) + counted

    def advance(self, bucket: int) -> None:
        """``bucket`` is the newest step: both windows slide to it."""
        self.window.advance(bucket)
        self.contrib.advance(bucket)
        self.bucket = bucket

    def _decay(self) -> float:
        """What a sample's weight is worth one interval later (the time constant: baseline_days)."""
        return float(np.exp(-self.definition.interval_s / (self.definition.baseline_days * 86_400)))

    def sample(self, bucket: int) -> None:
        """A baseline, its window at ``self.bucket`` about to slide to ``bucket``: at each
        interval's end the window value of every entity (its last interval) is a sample of
        its usual value; intervals passed without a sample (the server idle) count as zero."""
        if self.bucket < 0:
            self.sampled = bucket // self.n_buckets
            return
        due = bucket // self.n_buckets - self.sampled  # the intervals that ended since the last sample
        if due <= 0:
            return
        decay = self._decay()
        values = self.window.values
        self._room(len(values))
        self.usual_sum *= decay**due
        active = np.flatnonzero(values)
        self.usual_sum[active] += (1 - decay) * decay ** (due - 1) * values[active]
        self.samples += due
        self.sampled = bucket // self.n_buckets

    def _room(self, size: int) -> None:
        if size > len(self.usual_sum):
            self.usual_sum = grown(self.usual_sum, room_for(len(self.usual_sum), size))

    def learned(self) -> bool:
        return self.samples * self.definition.interval_s >= BASELINE_LEARNING_S

    def usual(self, ids: np.ndarray) -> np.ndarray:
        """Each entity's usual window value: the weighted mean of its samples (the weights of
        the samples taken so far sum to 1 - decay**samples; the rest is not known yet)."""
        self._room(int(ids.max()) + 1 if len(ids) else 0)
        known = 1 - self._decay() ** self.samples
        return self.usual_sum[ids] / known if known > 0 else np.zeros(len(ids))

    def baseline_thresholds(self, ids: np.ndarray) -> np.ndarray:
        """K times the usual value, at least the minimum volume (none while still learning)."""
        if not self.learned():
            return np.full(len(ids), 2**62, np.int64)
        k = self.definition.threshold
        return np.maximum(np.ceil(k * self.usual(ids)).astype(np.int64), self.definition.min_volume)

    def baseline_kept(self, ids: np.ndarray) -> np.ndarray:
        """Entities whose usual value still matters (K times it is above the minimum volume):
        their ids are not given back while the window is empty."""
        if not self.baseline or not len(ids):
            return np.zeros(len(ids), bool)
        return self.definition.threshold * self.usual(ids) >= self.definition.min_volume

    def first_judged(self) -> int:
        """A lower threshold's first period whose whole window was watched."""
        assert self.observed_from_ms is not None
        return -(-self.observed_from_ms // self.step_ms) + self.n_buckets - 1

    def count(self, ids: np.ndarray, bucket: int) -> np.ndarray:
        """The entities ``ids`` are over their thresholds in step ``bucket``: how many of their
        contributions count now - on crossing, every one in the window not counted before;
        while over, those that came since the last count."""
        size = int(ids.max()) + 1
        if size > len(self.counted_to):
            self.counted_to = grown(self.counted_to, room_for(len(self.counted_to), size))
            self.counted_amount = grown(self.counted_amount, len(self.counted_to))
        through = self.counted_to[ids] - 1
        in_step = self.contrib.amounts_of(ids, bucket)
        out = np.where(through == bucket, in_step - self.counted_amount[ids], 0)
        whole = through < bucket - self.n_buckets + 1  # nothing counted is still in the window
        out[whole] = self.contrib.value(ids[whole])
        since = (through < bucket) & ~whole  # counted until an earlier step in the window
        if since.any():
            earlier = self.contrib.amounts_in(ids[since], through[since] + 1, np.full(int(since.sum()), bucket - 1))
            out[since] = in_step[since] + earlier
        self.counted_to[ids] = bucket + 1
        self.counted_amount[ids] = in_step
        return out

    def forget(self, ids: np.ndarray) -> None:
        """Entity ids given back: what was counted (and learned) for them no longer applies."""
        self.usual_sum[ids[ids < len(self.usual_sum)]] = 0
        ids = ids[ids < len(self.counted_to)]
        self.counted_to[ids] = 0
        self.counted_amount[ids] = 0


class Periods:
    """The alerting periods of a batch's rows, per step length (definitions share a few), and
    whether a row's session had an earlier row, or side traffic, in the row's period."""

    def __init__(self, at_ms: np.ndarray, before: np.ndarray):
        self.at_ms = at_ms
        self.before = before  # ``SlotHistory.recall``
        self._by_step: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._earlier: dict[tuple[int, int], np.ndarray] = {}
        self._times: np.ndarray | None = None

    def of(self, step_ms: int, current: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(each row's period, the distinct periods, whether none was moved): a row that comes
        after its period has been left counts in the ``current`` one."""
        got = self._by_step.get(step_ms)
        if got is None:
            if self._times is None:
                # the batch's distinct times, sorted once: a batch has one per collector batch
                # in it, so each step length's periods come from those few, not a sort of the
                # rows per step length (five step lengths for the benchmark's 20 definitions)
                self._times = distinct(self.at_ms)
            got = self._by_step[step_ms] = (self.at_ms // step_ms, distinct(self._times // step_ms))
        if len(got[1]) and got[1][0] < current:  # late rows: in the current period
            return np.maximum(got[0], current), distinct(np.maximum(got[1], current)), False
        return got[0], got[1], True

    def earlier(self, step_ms: int, buckets: np.ndarray, what: int, shared: bool) -> np.ndarray:
        """Per row: whether ``what`` (``LAST_ROW``, ``CLN_BYTES`` ...) happened before it in its
        period (``shared``: ``buckets`` are the step's own, and the answer may be kept)."""
        key = (step_ms, what)
        if shared and key in self._earlier:
            return self._earlier[key]
        t = self.before[what]
        out = (t > 0) & (t // step_ms == buckets)
        if shared:
            self._earlier[key] = out
        return out


def prefilter_mask(state: DefinitionState, sessions: SessionBatch, masks: dict[str, np.ndarray]) -> np.ndarray | None:
    """The sessions a definition's prefilter keeps (None: no prefilter), computed once per
    batch for every definition with the same prefilter text (``masks``)."""
    if state.prefilter is None:
        return None
    text = state.definition.prefilter
    pre = masks.get(text)
    if pre is None:
        pre = masks[text] = evaluate(state.prefilter, sessions)
    return pre


def warm_up_inputs() -> tuple[list[Definition], SessionBatch]:
    """What the warm-ups (``AlertEngine.warm_up``, ``PartialBuilder.warm_up``) run their loops
    on: a sum definition and both kinds of distinct count (the unique hosts of hosts keep
    pairs of hosts, the others (entity, peer) pairs), and two sessions."""
    metrics = (AlertMetric.BYTES_SENT, AlertMetric.UNIQUE_HOSTS, AlertMetric.UNIQUE_PORTS)
    definitions = [
        Definition(id=i, user_id=0, title="warm-up", entity=EntityType.HOST, metric=metric, interval="1m", threshold=1)
        for i, metric in enumerate(metrics, 1)
    ]
    return definitions, SessionBatch.build(2, session_id=np.array([1, 2], np.uint64), cln_bytes=5, cln_pkts=1)


@dataclass(frozen=True)
class Failure:
    """Why a definition is not being evaluated: it failed to compile or to evaluate."""

    definition: Definition
    reason: str  # for its owner: what went wrong and what to do
    at_ms: int


def _rows_task(kind: EntityType) -> str:
    """The name of the task that makes an entity type's rows (``AlertEngine.cpu_seconds``)."""
    return f"rows:{kind.value}"


def _definition_task(definition_id: int) -> str:
    """The name of the task that evaluates (or merges) a definition."""
    return f"definition:{definition_id}"


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
        arrival_slack_ms: int = 0,
        evaluation_threads: int = 1,
    ):
        self.exact_limit = exact_limit
        #: definitions are evaluated on up to this many threads at once (they share no window)
        self.evaluation_threads = max(1, evaluation_threads)
        self._pool: ThreadPoolExecutor | None = None
        #: the CPU time each task took last (``rows:<type>``, ``definition:<id>``, ``history``):
        #: the costliest are taken first; and every evaluation's added up (``cpu_seconds``)
        self._task_cost: dict[str, float] = {}
        self._cpu_seconds: dict[str, float] = {}
        self._stats_lock = threading.Lock()  # counters updated from the evaluation threads
        #: the clock moves the windows on only this long after a step ends: rows stamped in it
        #: and still queued then count in their own step, not in the next
        self.arrival_slack_ms = arrival_slack_ms
        self.max_pairs = max_pairs
        self.max_step_bytes = max_step_bytes
        self.max_entities = max_entities
        self.clock = clock
        self.states: dict[int, DefinitionState] = {}
        self.failures: dict[int, Failure] = {}
        self.indexes: dict[EntityType, KeyIndex] = {}
        self.history = SlotHistory()  # COUNT: per tracker slot, when its session's rows came
        self.last_seen: dict[EntityType, np.ndarray] = {}
        self._groupings: dict[EntityType, BatchGrouping] = {}  # per entity type
        self.stats = {
            "rows_evaluated": 0,
            "rows_dropped": 0,
            "entities_dropped": 0,
            "events": 0,
            "evaluations": 0,
            "definition_failures": 0,
            "evaluation_errors": 0,
            "rows_merged": 0,  # partial rows from collectors
            "parts_ignored": 0,  # partials of definitions not installed here (or of another version)
            "partials_repeated": 0,  # delivered again: merged once
        }
        # the alerting node of several collectors: what it merged (saved with the windows)
        self.positions = Positions()
        self.stream_seq = 0
        # restored: per definition, the stream sequence its saved window holds the partials of
        self.merged_seq: dict[int, int] = {}
        self.lock = threading.RLock()  # evaluation, definition changes, persistence, API reads
        self._last_reclaim_ms = 0
        self._ids_kept = 0  # snapshots being written: no entity id is given back meanwhile

    @staticmethod
    def warm_up() -> None:
        """Compile (or load from numba's cache) the engine's loops now, at start, rather than
        on the first evaluation, which would hold the ingest thread up for seconds."""
        engine = AlertEngine(max_step_bytes=0)  # no byte budget: every closed step is spread
        definitions, sessions = warm_up_inputs()
        engine.set_definitions(definitions)
        arrivals = Arrivals(np.ones(2, bool), np.arange(2))
        # two batches in one step, the step closed (its chunks merged and spread), the spread
        # part taken back as its steps leave, then the window gone; a batch over two steps,
        # and an entity over again after a gap (its count read from the closed steps)
        for now_ms in (1_000, 1_001, 3_000, 5_000, 62_000, 200_000):
            engine.evaluate(sessions, arrivals, now_ms)
        two_steps = Arrivals(np.zeros(2, bool), np.arange(2), np.array([201_000, 202_000]))
        engine.evaluate(sessions, two_steps, 202_000)
        engine.evaluate(sessions, arrivals, 230_000)
        # every sum metric of an endpoint type and of another: ``select_sums`` is compiled per plan
        sum_metrics = [metric for metric in AlertMetric if not metric.is_distinct]
        kinds = (EntityType.HOST, EntityType.HOST_PAIR)
        every_sum = [
            Definition(id=i, user_id=0, title="warm-up", entity=kind, metric=metric, interval="1m", threshold=1)
            for i, (kind, metric) in enumerate(itertools.product(kinds, sum_metrics), 1)
        ]
        engine.set_definitions(every_sum)
        engine.evaluate(sessions, arrivals, 240_000)
        grown_index = KeyIndex(16)
        grown_index.get_or_add(np.arange(64, dtype=np.uint64))  # a table that grows
        grown_index.remove(np.arange(4))  # and gives ids back, as the reclaim does a minute in
        KeyIndex.from_state({"ids": np.arange(2), "keys": np.arange(1, 3, dtype=np.uint64)})  # and one restored
        # pair tables of both kinds that grow, expire and give an entity's pairs to a sketch
        keys, values = np.arange(1, 9, dtype=np.uint64), np.zeros(2, np.int64)
        pairs = PairTable(size=4)
        pairs.add(keys, np.zeros(8, np.int64), 1, 2**62, values)
        pairs.take_entity(0)
        pairs.add(keys, np.zeros(8, np.int64), 1, 2**62, values)
        pairs.expire(2, values)
        both = BothWaysPairTable(size=4)
        both.add_both(keys, np.tile(np.arange(2), (8, 1)), 1, 2**62, values)
        both.take_entity(0)
        both.expire(2, values)

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
            # what each task cost: of the definitions gone, nothing is kept
            kept = {_definition_task(i) for i in new}

            def without_gone(costs: dict[str, float]) -> dict[str, float]:
                return {k: v for k, v in costs.items() if not k.startswith("definition:") or k in kept}

            with self._stats_lock:
                self._task_cost, self._cpu_seconds = without_gone(self._task_cost), without_gone(self._cpu_seconds)

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
        self._tally("definition_failures")
        return Failure(
            definition,
            f"{what} ({detail}); it is skipped until it is changed, and retried every "
            f"{FAILED_RETRY_MS // 60_000} minutes",
            int(self.clock() * 1000),
        )

    def set_aside(self, state: DefinitionState, what: str, exc: BaseException) -> None:
        definition = state.definition
        self.failures[definition.id] = self._failure(definition, what, exc)
        self.states.pop(definition.id, None)

    def retry_failed(self, now_ms: int) -> None:
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
        self, sessions: SessionBatch, arrivals: Arrivals, now_ms: int, now_us: int | None = None
    ) -> list[AlertEvent]:
        """Fold a batch of session delta rows (and how they arrived) into every window, the
        clock at ``now_ms``; the alert events it causes (stamped ``now_us``, by default
        ``now_ms``)."""
        with self.lock:
            self.stats["evaluations"] += 1
            if self.failures:
                self.retry_failed(now_ms)
            for state in self.states.values():
                if state.lower and state.observed_from_ms is None:
                    state.observed_from_ms = now_ms
            time_us = now_us or now_ms * 1000
            # the rows, then the clock: the rows (all stamped before now) moved the windows to
            # their steps (each window slides right after its rows, on the same thread)
            clock_ms = now_ms - self.arrival_slack_ms
            events = self._fold_rows(sessions, arrivals, now_ms, time_us, clock_ms)
            events += self._advance(clock_ms, time_us)
            self.stats["events"] += len(events)
            return events

    def merge(self, parts: Iterable[PartRows], now_ms: int, now_us: int | None = None) -> list[AlertEvent]:
        """Fold collectors' partial windows (``partial.py``) into the windows, the clock at
        ``now_ms``: the alerting node's evaluation. A part of a definition not installed here,
        or of another version of it, is not merged (counted: ``parts_ignored``). A part of a
        period the window has left counts in the current one, as a late row does."""
        return self.merge_partials([(Partial("", 0, 0, now_ms, list(parts)), 0)], now_ms, now_us, dedupe=False)

    def merge_partials(
        self, partials: list[tuple[Partial, int]], now_ms: int, now_us: int | None = None, dedupe: bool = True
    ) -> list[AlertEvent]:
        """``merge`` for whole partials with their stream sequence: each (collector, epoch,
        seq) is merged once (``positions``), and the stream sequence reached is kept
        (``stream_seq``), both saved with the windows."""
        with self.lock:
            self.stats["evaluations"] += 1
            if self.failures:
                self.retry_failed(now_ms)
            time_us = now_us or now_ms * 1000
            events: list[AlertEvent] = []
            for watched in self.states.values():
                if watched.lower and watched.observed_from_ms is None:
                    watched.observed_from_ms = now_ms
            fresh: list[tuple[Partial, int]] = []
            for partial, seq in partials:
                if dedupe and not self.positions.is_new(partial):
                    self.stats["partials_repeated"] += 1
                    continue
                if dedupe:
                    self.positions.note(partial)
                fresh.append((partial, seq))
            if not fresh:  # the clock alone: nothing new came for a while
                events += self._advance(now_ms - self.arrival_slack_ms, time_us)
                self.stats["events"] += len(events)
                return events
            # the partials' own time is the clock (never ahead of ours): partials read again
            # after a restart land in their own periods, as they did the first time
            clock = min(now_ms, max(partial.sent_ms for partial, _ in fresh))
            seq = max(seq for _, seq in fresh)
            # the parts of one definition and period are folded together, whichever
            # collector and partial they came in: one pass over the window each
            groups: dict[tuple[int, int], list[PartRows]] = {}
            for partial, partial_seq in fresh:
                for part in partial.parts:
                    if part.definition_id in self.merged_seq and partial_seq <= self.merged_seq[part.definition_id]:
                        continue  # read again after a restart: its saved window holds it
                    state = self.states.get(part.definition_id)
                    if state is None or state.signature != part.signature or state.definition.entity is not part.kind:
                        self.stats["parts_ignored"] += 1
                        continue
                    self.stats["rows_merged"] += len(part)
                    groups.setdefault((part.bucket, part.definition_id), []).append(part)
            # each entity table numbered once, for every part that names it
            numbering: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
            for parts in groups.values():
                for part in parts:
                    if id(part.table) not in numbering:
                        started = time.thread_time()
                        numbering[id(part.table)] = self._number(part.kind, part.table.keys, None, clock)
                        self._spent(_rows_task(part.kind), time.thread_time() - started)
            for (bucket, definition_id), parts in sorted(groups.items(), key=lambda item: item[0]):
                group_state = self.states.get(definition_id)
                if group_state is None:  # set aside by a failure of its earlier group
                    continue
                started = time.thread_time()
                try:
                    group = PartGroup(parts, numbering)
                    events.extend(self._merge_parts(group_state, group, bucket, time_us))
                except Exception as exc:
                    self.set_aside(group_state, "merging a collector's partial failed", exc)
                self._spent(_definition_task(definition_id), time.thread_time() - started)
            events += self._advance(clock - self.arrival_slack_ms, time_us)
            self.stream_seq = max(self.stream_seq, seq)
            if self.merged_seq and self.stream_seq >= max(self.merged_seq.values()):
                self.merged_seq = {}  # the replay is over
            for event in events:
                event.seq = seq
            self.stats["events"] += len(events)
            return events

    def _merge_parts(self, state: DefinitionState, group: PartGroup, bucket: int, time_us: int) -> list[AlertEvent]:
        mask = group.valid
        group.uniq, group.inv, group.first = self._group(group.kind, group.ids)
        events: list[AlertEvent] = []
        bucket = max(bucket, state.bucket)  # a late part counts in the current period
        if bucket > state.bucket:
            events.extend(self._step_to(state, bucket, time_us))
        window = state.window
        if isinstance(window, DistinctWindow):
            local, values = window.fold(group.inv, group.uniq, group.ids, mask, group.values, bucket)
            state.contrib.count(group.inv, group.uniq, mask, group.contributions, bucket)
        else:
            local, values = window.fold(
                group.inv, group.uniq, mask, group.values, True, bucket, group.contributions, state.contrib
            )
        return events + self._judge(state, group, local, values, time_us, bucket)

    def _fold_rows(
        self, sessions: SessionBatch, arrivals: Arrivals, now_ms: int, time_us: int, clock_ms: int
    ) -> list[AlertEvent]:
        """Fold the rows into every window, then slide each window to the clock ``clock_ms``.
        The events: those of the rows (definitions by entity type, in order), then those of
        the slides (in definition order), as if every row were folded before any window slid.

        The work is a list of tasks on up to ``evaluation_threads`` threads (``TaskList``):
        the rows' history, then type by type its rows (one type ahead) and each of its
        definitions (its rows folded, its window slid), the costliest first by the CPU time
        each took last time.
        Definitions share no window; those of one type share its rows, which are let go once
        the last of them is done."""
        if not len(sessions) or not self.states:
            return []
        at_ms = arrivals.at_ms if arrivals.at_ms is not None else np.full(len(sessions), now_ms, np.int64)
        self.stats["rows_evaluated"] += len(sessions)
        masks: dict[str, np.ndarray] = {}
        shared = BatchKeys(sessions)
        by_kind: dict[EntityType, list[DefinitionState]] = {}
        for state in self.states.values():
            by_kind.setdefault(state.definition.entity, []).append(state)
        order = list(self.states)
        # what a task makes for later ones (``TaskList``: a task waits only for earlier ones)
        periods: Future[Periods | None] = Future()
        rows: dict[EntityType, Future[EntityRows | None]] = {kind: Future() for kind in by_kind}
        left = {kind: len(states) for kind, states in by_kind.items()}  # definitions yet to fold its rows
        folded: dict[int, list[AlertEvent]] = {}
        slid: dict[int, list[AlertEvent]] = {}
        lock = threading.Lock()

        def recall() -> None:
            started = time.thread_time()
            made = None
            try:
                made = Periods(at_ms, self.history.recall(arrivals.slot, arrivals.new, at_ms, sessions))
            except Exception:  # no definition can fold this batch; the windows still slide
                log.exception("alert rows' history failed")
                self._tally("evaluation_errors")
            finally:
                periods.set_result(made)
            self._spent("history", time.thread_time() - started)

        def make_rows(kind: EntityType) -> None:
            started = time.thread_time()
            made = None
            try:
                made = self._entity_rows(kind, sessions, arrivals.new, now_ms, shared)
            except Exception:  # not one definition's fault: this batch skips the entity type
                log.exception("alert entity rows failed", entity=kind.value)
                self._tally("evaluation_errors")
            finally:
                rows[kind].set_result(made)
            self._spent(_rows_task(kind), time.thread_time() - started)

        def evaluate_definition(state: DefinitionState) -> None:
            started = time.thread_time()
            kind = state.definition.entity
            batch_periods, kind_rows = periods.result(), rows[kind].result()
            if batch_periods is not None and kind_rows is not None:
                folded[state.definition.id] = self._evaluate_definition(
                    state, kind_rows, sessions, masks, batch_periods, time_us
                )
            with lock:
                left[kind] -= 1
                if not left[kind]:
                    del rows[kind]  # its rows (tens of bytes a session row) are let go
            slid.update(self._slide([state], clock_ms, time_us))
            self._spent(_definition_task(state.definition.id), time.thread_time() - started)

        def cost(task: str) -> float:
            return self._task_cost.get(task, 0.0)

        def kind_cost(kind: EntityType) -> float:
            return cost(_rows_task(kind)) + sum(cost(_definition_task(state.definition.id)) for state in by_kind[kind])

        # type by type, the costliest first, each type's definitions costliest first, and
        # the next type's rows made before them: while one thread makes a type's rows, the
        # others have a type's definitions to take, and the threads hold a few types' rows
        # at a time, not every type's
        kinds = sorted(by_kind, key=kind_cost, reverse=True)
        tasks: list[Callable[[], None]] = [recall, functools.partial(make_rows, kinds[0])]
        for i, kind in enumerate(kinds):
            if i + 1 < len(kinds):
                tasks.append(functools.partial(make_rows, kinds[i + 1]))
            for state in sorted(
                by_kind[kind], key=lambda state: cost(_definition_task(state.definition.id)), reverse=True
            ):
                tasks.append(functools.partial(evaluate_definition, state))
        helpers = min(self.evaluation_threads, len(self.states)) - 1
        TaskList(tasks).run(self._evaluation_pool() if helpers > 0 else None, helpers)
        events: list[AlertEvent] = []
        for kind_states in by_kind.values():
            for state in kind_states:
                events.extend(folded.get(state.definition.id, ()))
        for definition_id in order:
            events.extend(slid.get(definition_id, ()))
        return events

    def _evaluation_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.evaluation_threads - 1,
                thread_name_prefix="sluice-alerts",
                initializer=lower_priority,
                initargs=(EVALUATION_NICENESS,),
            )
        return self._pool

    def close(self) -> None:
        """Let the evaluation threads go (the engine may still evaluate: on this thread alone)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.evaluation_threads = 1

    def _tally(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    def _spent(self, task: str, seconds: float) -> None:
        """What a task took: the last time (its place in the next evaluation) and in all."""
        with self._stats_lock:
            self._task_cost[task] = seconds
            self._cpu_seconds[task] = self._cpu_seconds.get(task, 0.0) + seconds

    def cpu_seconds(self) -> dict[str, float]:
        """The CPU time evaluations spent, task by task, since the engine started: each
        definition's (``definition:<id>``: folding its rows, sliding its window), each entity
        type's rows (``rows:<type>``: made once an evaluation for all its definitions), and the
        rows' history (``history``: what COUNT remembers per session). What an operator looks
        at to see which definitions a busy server spends its alerting on."""
        with self._stats_lock:
            return dict(self._cpu_seconds)

    def _evaluate_definition(
        self,
        state: DefinitionState,
        rows: EntityRows,
        sessions: SessionBatch,
        masks: dict[str, np.ndarray],
        periods: Periods,
        time_us: int,
    ) -> list[AlertEvent]:
        """One definition over its entity type's rows; one that fails is set aside."""
        try:
            pre = prefilter_mask(state, sessions, masks)
            return self._evaluate_one(state, rows, pre, periods, time_us)
        except Exception as exc:
            self.set_aside(state, "evaluation failed", exc)
            return []

    def _entity_rows(
        self, kind: EntityType, sessions: SessionBatch, new: np.ndarray, now_ms: int, shared: BatchKeys
    ) -> EntityRows:
        rows = EntityRows(kind, sessions, new, shared)
        ids, seen = self._ids(kind, rows.keys)
        rows.uniq, rows.inv, rows.first, full = self._grouping(kind).group(ids, len(seen), rows.valid, seen, now_ms)
        if len(full):  # rows beyond ``max_entities``: not valid, counted, their id 0
            self._tally("entities_dropped", len(full))
            rows.valid = np.ones(len(ids), bool) if rows.valid is None else rows.valid.copy()
            rows.valid[full] = False
        rows.ids = ids
        return rows

    def _ids(self, kind: EntityType, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dense ids for entity keys, -1 for those beyond ``max_entities``; the type's last
        seen times by id, as long as its ids)."""
        index = self.indexes.get(kind)
        if index is None:
            index = self.indexes[kind] = KeyIndex(4096, max_ids=self.max_entities)
            self.last_seen[kind] = np.zeros(4096, np.int64)
        ids, _ = index.get_or_add(keys)
        seen = self.last_seen[kind]
        if len(seen) < index.id_capacity:
            seen = self.last_seen[kind] = grown(seen, index.id_capacity)
        return ids, seen

    def _number(
        self, kind: EntityType, keys: np.ndarray, valid: np.ndarray | None, now_ms: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Dense ids for entity keys, noted as seen at ``now_ms``; (ids, the rows still valid):
        rows beyond ``max_entities`` are not (counted), their id 0."""
        ids, seen = self._ids(kind, keys)
        dropped = note_seen(ids, np.ones(len(ids), bool) if valid is None else valid, seen, now_ms)
        if dropped:
            self._tally("entities_dropped", dropped)
            full = ids < 0
            valid = ~full if valid is None else valid & ~full
            ids = np.where(full, 0, ids)
        return ids, valid

    def _group(self, kind: EntityType, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A compact numbering of merged parts' entities, shared by every definition of the
        type (their ids were noted as seen when their tables were numbered)."""
        uniq, inv, first, _ = self._grouping(kind).group(ids, self.indexes[kind].id_capacity)
        return uniq, inv, first

    def _grouping(self, kind: EntityType) -> BatchGrouping:
        grouping = self._groupings.get(kind)
        if grouping is None:
            grouping = self._groupings[kind] = BatchGrouping()
        return grouping

    @staticmethod
    def _kept(state: DefinitionState, rows: EntityRows, pre: np.ndarray | None) -> np.ndarray | None:
        """The rows the prefilter and the exceptions keep (None: every row)."""
        ex = state.exceptions
        if pre is None and not (len(ex.ports) or ex.addresses or len(ex.countries)):
            return None
        mask = rows.session_col_of(pre) if pre is not None else np.ones(len(rows.keys), bool)
        if len(ex.ports):
            mask = mask & ~np.isin(rows.session_col("srv_port"), ex.ports)
        for col in rows.own_addresses() if ex.addresses else ():
            for address_range in ex.addresses:
                mask = mask & ~in_range(col, address_range)
        for col in rows.own_countries() if len(ex.countries) else ():
            mask = mask & ~np.isin(col, ex.countries)
        return mask

    def _thresholds(self, state: DefinitionState, rows: EntityRows | PartGroup, rep: np.ndarray) -> np.ndarray:
        """Threshold per entity (``rep``: one row of each), overrides by CIDR applied, as the
        window's total is held against it (a rate times the interval)."""
        definition = state.definition
        thr = np.full(len(rep), definition.window_threshold(definition.threshold), np.int64)
        for address_range, _, value in state.exceptions.thresholds:  # least specific first: the most specific wins
            hit = np.zeros(len(rep), bool)
            for col in rows.own_addresses():
                hit |= in_range(col[rep], address_range)
            thr[hit] = definition.window_threshold(value)
        return thr

    def _evaluate_one(
        self,
        state: DefinitionState,
        rows: EntityRows,
        pre: np.ndarray | None,
        periods: Periods,
        time_us: int,
    ) -> list[AlertEvent]:
        if not state.lower and isinstance(state.window, SumWindow):
            return self._evaluate_sums(state, rows, pre, periods, time_us)
        selected = self.select(state, rows, pre, periods, state.bucket)
        if selected is None:
            return []
        mask, contributing, buckets, steps = selected
        events = []
        for bucket in steps.tolist():  # one, unless the batch spans a period's end
            if bucket > state.bucket:
                events.extend(self._step_to(state, bucket, time_us))
            in_step = mask if len(steps) == 1 else mask & rows.session_col_of(buckets == bucket)
            events.extend(self._fold(state, rows, in_step, contributing, bucket, time_us))
        return events

    def _evaluate_sums(
        self,
        state: DefinitionState,
        rows: EntityRows,
        pre: np.ndarray | None,
        periods: Periods,
        time_us: int,
    ) -> list[AlertEvent]:
        """``_evaluate_one`` for a sum definition with an upper threshold or a baseline: what
        ``select`` and ``_fold`` do, each step's rows in one compiled pass (``selection``)."""
        assert isinstance(state.window, SumWindow)
        metric = state.definition.metric
        kept = self._kept(state, rows, pre)
        buckets, steps, _ = periods.of(state.step_ms, state.bucket)
        one_step = len(steps) == 1
        sums = [
            select_sums(rows, metric, kept, buckets, bucket, one_step, state.step_ms, periods.before)
            for bucket in steps.tolist()
        ]
        if not any(has_row(step_sums) for step_sums in sums):  # no row concerns its entities
            return []
        events: list[AlertEvent] = []
        for bucket, step_sums in zip(steps.tolist(), sums, strict=True):
            if bucket > state.bucket:
                events.extend(self._step_to(state, bucket, time_us))
            local, values = state.window.fold_accumulated(
                rows.uniq, step_sums, metric.value.startswith("sessions"), bucket, state.contrib
            )
            events.extend(self._judge(state, rows, local, values, time_us, bucket))
        return events

    @classmethod
    def select(
        cls, state: DefinitionState, rows: EntityRows, pre: np.ndarray | None, periods: Periods, current: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """What of a batch's entity rows a definition takes: (the rows that concern its
        entities, those of them that are contributions (COUNT), each session's period, the
        distinct periods), or None if no row does. Rows of a period before ``current`` count
        in ``current``."""
        kept = cls._kept(state, rows, pre)
        role = rows.role(state.definition.metric)  # shared by the definitions: never written to
        mask = role if kept is None else role & kept
        if state.lower:
            assert state.watch_keys is not None
            mask = mask & np.isin(rows.keys, state.watch_keys)
        if not mask.any():
            return None
        buckets, steps, shared = periods.of(state.step_ms, current)
        if state.lower:  # counts periods, not sessions
            contributing = np.zeros(len(mask), bool)
        else:
            contributing = cls._contributions(state, rows, mask, kept, periods, buckets, shared)
        return mask, contributing, buckets, steps

    @staticmethod
    def _contributions(
        state: DefinitionState,
        rows: EntityRows,
        mask: np.ndarray,
        kept: np.ndarray | None,
        periods: Periods,
        buckets: np.ndarray,
        shared: bool,
    ) -> np.ndarray:
        """Per entity row, 1 if it is its session's first in its period that concerns the
        entity. A row concerns it as the mask says: the prefilter, exceptions and entity type
        are the same for every row of a session, the rest of the role is the traffic of a side
        (traffic metrics) or any row (sessions, distinct counts); so an earlier row of the
        period concerned the entity when the session had a row there, or that side's traffic
        (and, where both ends are one entity, that side concerns it at all)."""
        metric = state.definition.metric.value

        def earlier(what: int) -> np.ndarray:
            return periods.earlier(state.step_ms, buckets, what, shared)

        if state.definition.metric.is_distinct or metric.startswith("sessions"):
            client = server = earlier(LAST_ROW)
        else:
            cln, srv = (CLN_PKTS, SRV_PKTS) if metric.startswith("packets") else (CLN_BYTES, SRV_BYTES)
            c, s = earlier(cln), earlier(srv)
            direction = metric.rpartition("_")[2]
            # the client side's row (a pair's or a port's one row: "sent" is the client's)
            client = c if direction == "sent" else s if direction == "received" else c | s
            server = s if direction == "sent" else c if direction == "received" else c | s
        if not rows.kind.is_endpoint:
            return mask & ~client
        n = rows.n_sessions
        same, any_same = rows.same_entity  # both ends one entity (two hosts of one country)
        if any_same:
            # what of each side concerns the entity whatever its traffic: kept, and its role
            # where that does not depend on traffic (sessions), else a valid row
            if metric.startswith("sessions"):
                side = rows.role(state.definition.metric)
            else:
                side = rows.every_row if rows.valid is None else rows.valid
            if kept is not None:
                side = side & kept
            either = (client & side[:n]) | (server & side[n:])
            client, server = np.where(same, either, client), np.where(same, either, server)
        out = mask & ~np.concatenate([client, server])
        if any_same:
            out[n:] &= ~(same & out[:n])  # such a session counts once for it
        return out

    def _fold(
        self,
        state: DefinitionState,
        rows: EntityRows,
        mask: np.ndarray,
        contributing: np.ndarray,
        bucket: int,
        time_us: int,
    ) -> list[AlertEvent]:
        """Fold the masked rows (all of step ``bucket``) into the windows; events for the
        entities they take or find over their thresholds."""
        definition = state.definition
        window = state.window  # distinct metrics have a DistinctWindow, the others a SumWindow
        if isinstance(window, DistinctWindow):
            if state.pairs_of_hosts:  # both directions of a pair of hosts in one slot: one probe a session
                keys_by_id = self.indexes[EntityType.HOST].keys_by_id
                local, values = window.fold_hosts(rows.inv, rows.uniq, rows.ids, mask, rows.keys, keys_by_id, bucket)
            else:
                local, values = window.fold(rows.inv, rows.uniq, rows.ids, mask, rows.peers(definition.metric), bucket)
            state.contrib.count(rows.inv, rows.uniq, mask, contributing, bucket)
        else:
            # a session row may concern an entity and add nothing; for the other metrics the
            # role is "adds something": the entities concerned are those with a sum. The
            # contributions go to the COUNT window in the same pass
            local, values = window.fold(
                rows.inv, rows.uniq, mask, rows.values(definition.metric),
                definition.metric.value.startswith("sessions"), bucket, contributing, state.contrib,
            )  # fmt: skip
        return self._judge(state, rows, local, values, time_us, bucket)

    def _judge(
        self, state: DefinitionState, rows: EntityRows | PartGroup, local: np.ndarray, values: np.ndarray,
        time_us: int, bucket: int,
    ) -> list[AlertEvent]:  # fmt: skip
        """Events for the entities just folded (``local``: positions in ``rows.uniq``, with
        their window ``values`` now) that are over their thresholds in step ``bucket``."""
        definition = state.definition
        if not len(local) or state.lower:  # a lower threshold is judged as periods end
            return []
        if state.baseline:
            thresholds = state.baseline_thresholds(rows.uniq[local])
        elif state.exceptions.thresholds:
            thresholds = self._thresholds(state, rows, rows.first[local])
        else:  # one for every entity: a number (0-d), not an array of the batch's entities
            thresholds = np.asarray(definition.window_threshold(definition.threshold), np.int64)
        over = values > thresholds
        if not over.any():
            return []
        over_local = local[over]
        counts = state.count(rows.uniq[over_local], bucket)
        # v2: the threshold as written (a rate: per second); a baseline's: the usual value
        if state.baseline:
            written = np.ceil(state.usual(rows.uniq[over_local])).astype(np.int64)
        else:
            written = np.broadcast_to(thresholds, values.shape)[over] // definition.window_threshold(1)
        events = []
        for li, value, thr, inc in zip(
            over_local.tolist(), values[over].tolist(), written.tolist(), counts.tolist(), strict=True
        ):
            if inc <= 0:
                continue
            text = rows.text(int(rows.first[li]))
            message = alert_message(
                definition.metric,
                definition.entity,
                text,
                definition.per_second,
                baseline=(definition.threshold, thr) if state.baseline else None,
            )
            events.append(
                AlertEvent(
                    definition.id,
                    definition.user_id,
                    definition.entity,
                    text,
                    message,
                    definition.severity.value,
                    inc,
                    thr,
                    definition.reported(int(value)),
                    time_us,
                )
            )
        return events

    # -- time -----------------------------------------------------------------------------

    def _advance(self, now_ms: int, time_us: int) -> list[AlertEvent]:
        slid = self._slide(list(self.states.values()), now_ms, time_us)
        events = [event for state_events in slid.values() for event in state_events]
        if now_ms - self._last_reclaim_ms > 60_000 and not self._ids_kept:
            self._reclaim(now_ms)
            self._last_reclaim_ms = now_ms
        return events

    def _slide(self, states: list[DefinitionState], now_ms: int, time_us: int) -> dict[int, list[AlertEvent]]:
        """Slide each window to the clock ``now_ms``; the events, per definition (in order)."""
        events: dict[int, list[AlertEvent]] = {}
        for state in states:
            bucket = now_ms // state.step_ms
            if bucket > state.bucket:  # never back: rows may have moved it on already
                try:
                    events[state.definition.id] = self._step_to(state, bucket, time_us)
                except Exception as exc:
                    self.set_aside(state, "its window could not slide", exc)
        return events

    def _step_to(self, state: DefinitionState, bucket: int, time_us: int) -> list[AlertEvent]:
        """Slide a definition's window to ``bucket``; a lower threshold first judges each period
        that ends on the way: a watched entity whose window value over it is below the
        threshold counts that period (COUNT: the periods spent below)."""
        if state.baseline:
            state.sample(bucket)
        if not state.lower or state.bucket < 0:
            state.advance(bucket)
            return []
        definition = state.definition
        threshold = definition.window_threshold(definition.threshold)
        assert state.watch_keys is not None
        below = np.zeros(len(state.watch_keys), np.int64)  # periods, per watched entity
        last = np.zeros(len(state.watch_keys), np.int64)  # the value of its last period below
        first, e = state.first_judged(), state.bucket
        while e < bucket:
            values = self._watched_values(state)
            if e >= first:
                hit = values < threshold
                below += hit
                last = np.where(hit, values, last)
            if not values.any():  # the window is empty and stays so: the periods to come are alike
                rest = bucket - max(e + 1, first)
                if rest > 0 and threshold > 0:
                    below += rest
                    last[:] = 0
                break
            e += 1
            state.advance(e)
        if state.bucket < bucket:
            state.advance(bucket)
        return [
            AlertEvent(
                definition.id,
                definition.user_id,
                definition.entity,
                definition.watch[i],
                alert_message(
                    definition.metric,
                    definition.entity,
                    definition.watch[i],
                    definition.per_second,
                    ThresholdType.LOWER,
                ),
                definition.severity.value,
                int(below[i]),
                definition.threshold,
                definition.reported(int(last[i])),
                time_us,
            )
            for i in np.flatnonzero(below).tolist()
        ]

    def _watched_values(self, state: DefinitionState) -> np.ndarray:
        """A lower threshold's window value for each watched entity (0 for one never seen)."""
        index = self.indexes.get(state.definition.entity)
        assert state.watch_keys is not None
        if index is None:
            return np.zeros(len(state.watch_keys), np.int64)
        ids = index.lookup(state.watch_keys)
        known = ids >= 0
        return np.where(known, state.window.value(np.where(known, ids, 0)), 0).astype(np.int64)

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
            old = index.unseen_since(self.last_seen[kind], now_ms - horizon)
            for state in windows:
                if len(old):
                    old = old[
                        (state.window.value(old) == 0) & (state.contrib.value(old) == 0) & ~state.baseline_kept(old)
                    ]
            index.remove(old)
            for state in windows:
                state.forget(old)

    # -- bookkeeping ----------------------------------------------------------------------

    def memory(self) -> dict[str, int]:
        """Bytes held: per definition (its windows), by the shared entity indexes, and by what
        COUNT keeps per tracker slot (``index:sessions``)."""
        with self.lock:
            used = {kind: index.ids_used for kind, index in self.indexes.items()}
            out = {
                f"definition:{i}": state.nbytes(used.get(state.definition.entity, 0))
                for i, state in self.states.items()
            }
            out["index:sessions"] = self.history.nbytes()
            for kind, index in self.indexes.items():
                grouping = self._groupings.get(kind)
                out[f"index:{kind.value}"] = (
                    index.nbytes()
                    + used_nbytes(self.last_seen[kind], used[kind])
                    + (grouping.nbytes(used[kind]) if grouping is not None else 0)
                )
            return out

    def pairs_dropped(self) -> int:
        """(entity, peer) pairs not kept by distinct-count windows that were full."""
        with self.lock:
            return sum(s.window.pairs.dropped for s in self.states.values() if isinstance(s.window, DistinctWindow))

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
