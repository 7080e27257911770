"""The ingest pipeline behind the collector: flows -> sessions -> enrichment -> store.

Called once per decoded batch, on the collector's thread; every stage works on whole
batches. With one session worker the sessions and enrichment run right there; with more
(``sessions.workers``, one per core by default) the batch is sharded over worker processes
(flows/shards.py) and their session batches come back on reader threads. Either way every
session batch goes to the store's queue and to the listeners (alerts). A maintenance thread
flushes the store every ``flush_interval_s``, ends idle sessions and applies retention.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from .allocator import HeapTrimmer
from .config import Settings
from .counters import Counters
from .flows.enrich import Enricher
from .flows.schema import Arrivals, FlowBatch, SessionBatch
from .flows.sessions import SessionTracker, TrackerStats, first_session_id
from .flows.shards import ShardedSessions, default_workers
from .lifecycle import STORE_WRITING_NICENESS, Worker, lower_priority
from .store.backends import open_store
from .store.base import FlowStore, StoreUnavailable

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
#: how far ahead of the server's clock a flow's times may lie (exporters' clocks drift)
FUTURE_MS = DAY_MS


class Ingest:
    def __init__(self, settings: Settings, counters: Counters, store: FlowStore | None = None):
        sessions_settings = settings.sessions
        self.counters = counters
        self.workers = sessions_settings.workers or default_workers()
        # built here in any case: it prepares the geo lookup cache the workers then load
        self.enricher = Enricher(
            settings.enrich.country_mmdb, settings.enrich.asn_mmdb, cache_dir=Path(settings.data_dir) / "cache"
        )
        self.tracker: SessionTracker | None = None
        self.shards: ShardedSessions | None = None  # started with the server, when workers > 1
        if self.workers == 1:
            SessionTracker.warm_up()
            self.tracker = SessionTracker(
                sessions_settings.idle_timeout_s,
                sessions_settings.active_timeout_s,
                sessions_settings.max_sessions,
                sessions_settings.dedupe_exporters,
                first_id=first_session_id(sessions_settings.node_id),
            )
        self.store = store if store is not None else open_store(settings)
        self.settings = settings
        self._lock = threading.Lock()  # the tracker is used by the collector and by maintenance
        self._worker = Worker("sluice-maintenance", self._maintain, wake=self._wake_maintenance)
        self._flush_now = threading.Event()  # set by the store when its queue is full
        # the collector's thread only queues rows: the database write happens on the
        # maintenance thread, while the collector goes on reading its sockets
        self.store.on_full = self._flush_now.set
        #: later stages (alerts) receive each session batch, with how its rows arrived
        self.listeners: list[Callable[[SessionBatch, Arrivals], None]] = []
        #: whether the listeners want the batches now: with workers that store their own rows,
        #: batches nobody wants stay in the workers, and ``on_unseen_rows`` gets their count
        self.wants_sessions: Callable[[], bool] = lambda: bool(self.listeners)
        self.on_unseen_rows: list[Callable[[int], None]] = []
        #: retention in days set at run time (system settings), None: the configuration's
        self.retention_days: Callable[[], float | None] = lambda: None
        self._last_rate_sample: tuple[float, float] | None = None
        # how far back a flow's times may lie: the retention (kept current by maintenance,
        # not read from the database for every batch)
        self._kept_ms = int(settings.store.retention_days * DAY_MS)

    def __call__(self, flows: FlowBatch) -> None:
        now_ms = int(time.time() * 1000)
        flows = self._in_time(flows, now_ms)
        if self.shards is not None:
            self.shards.submit(flows, now_ms)
            return
        if self.tracker is None:
            raise RuntimeError("session workers not started: call Ingest.start() first")
        with self._lock:
            sessions, arrivals = self.tracker.track(flows, now_ms)
        if len(sessions):
            self._deliver(self.enricher(sessions), arrivals)

    def _in_time(self, flows: FlowBatch, now_ms: int) -> FlowBatch:
        """The flows whose start and end lie within [now - retention, now + a day], start not
        after end. An exporter's clock (or a forged datagram) may say 1970 or 9999: such a
        flow would make a day that retention never reaches, or count in every report since
        1970. The others are dropped and counted (``flows_out_of_range_total``)."""
        start, end = flows["time_start_ms"], flows["time_end_ms"]
        oldest, latest = now_ms - self._kept_ms, now_ms + FUTURE_MS
        future = (end > latest) | (start > latest)
        past = (start < oldest) | (end < oldest)
        backwards = start > end
        bad = future | past | backwards
        if not bad.any():
            return flows
        for reason, mask in (
            ("future", future),
            ("past", past & ~future),
            ("start_after_end", backwards & ~future & ~past),
        ):
            n = int(np.count_nonzero(mask))
            if n:
                self.counters.inc("flows_out_of_range_total", n, reason=reason)
        return flows.take(np.flatnonzero(~bad))

    def _deliver(self, sessions: SessionBatch, arrivals: Arrivals) -> None:
        """A session batch (and how its rows arrived) to the store and the listeners."""
        self.store.append(sessions)
        self._tell(sessions, arrivals)

    def _unseen(self, rows: int) -> None:
        """Rows a worker made and stored that nobody wanted to see."""
        self.counters.inc("session_rows_total", rows)
        for listener in self.on_unseen_rows:
            listener(rows)

    def _tell(self, sessions: SessionBatch, arrivals: Arrivals) -> None:
        """A session batch to the listeners (its rows are stored by the worker that made it)."""
        self.counters.inc("session_rows_total", len(sessions))
        for listener in self.listeners:
            listener(sessions, arrivals)

    def start(self) -> None:
        if self.workers > 1 and self.shards is None:
            s = self.settings
            stager = self.store.staging()  # the workers write their own rows' files where the store can take them
            self.shards = ShardedSessions(
                self.workers, s.sessions, s.enrich, Path(s.data_dir) / "cache",
                self._tell if stager is not None else self._deliver, self.counters, stager, self.store.adopt,
                lambda: self.wants_sessions(), self._unseen,
            )  # fmt: skip
        self._worker.start()

    def stop(self) -> None:
        if self.shards is not None:
            self.shards.stop()  # the workers hand on what they hold before the store closes
        self._worker.stop()
        self.store.close()

    def _wake_maintenance(self) -> None:
        self._flush_now.set()

    def _maintain(self) -> None:
        # Writing a second's sessions takes a fifth of a second of CPU at once; at the same
        # priority it would take that share from the receive loop, and on one busy core the
        # socket buffer overflows meanwhile. Yielding to it, the writing fills the gaps.
        lower_priority(STORE_WRITING_NICENESS)
        last_retention = 0.0
        trim = HeapTrimmer()
        interval = self.settings.store.flush_interval_s
        next_round = time.monotonic() + interval
        while not self._worker.stopping.is_set():
            self._flush_now.wait(max(0.0, next_round - time.monotonic()))
            if self._worker.stopping.is_set():
                break
            try:
                if self._flush_now.is_set():  # a full queue: write it now
                    self._flush_now.clear()
                    self.store.flush()
                if time.monotonic() < next_round:
                    continue
                next_round = time.monotonic() + interval
                due = time.monotonic() - last_retention > 600
                self.maintenance_round(retention=due)
                if due:
                    last_retention = time.monotonic()
                trim()
            except Exception:  # maintenance must go on; the next round retries
                log.exception("maintenance failed")
                self.counters.inc("maintenance_errors_total")

    def maintenance_round(self, retention: bool = True) -> None:
        """Flush, end idle sessions, let the store tidy up (merge files, build rollups); with
        ``retention``, also apply retention."""
        st = self.settings.store
        self.store.flush()
        now_ms = int(time.time() * 1000)
        if self.shards is not None:
            self.shards.expire(now_ms)
        elif self.tracker is not None:
            with self._lock:
                self.tracker.expire(now_ms)
        if retention:
            max_bytes = int(st.max_size_gb * 2**30) if st.max_size_gb else None
            days = self.retention_days() or st.retention_days
            self._kept_ms = int(days * DAY_MS)
            try:
                result = self.store.retain(now_ms, days * 86400, max_bytes)
                if result.rows_deleted:
                    log.info("retention", rows=result.rows_deleted, days_dropped=result.partitions_dropped)
            except StoreUnavailable as exc:  # applied at the next retention round
                log.warning("retention postponed: the store cannot answer", error=str(exc))
        self.store.maintain(now_ms)
        self._export_gauges()

    def _tracker_totals(self) -> tuple[int, int, TrackerStats]:
        """Live sessions, memory and statistics of the tracker, or of every worker's together."""
        if self.tracker is not None:
            return len(self.tracker), self.tracker.memory_bytes(), self.tracker.stats
        reports = self.shards.reports() if self.shards is not None else []  # workers not started yet
        total = TrackerStats()
        for report in reports:
            if report.stats is not None:
                for name in vars(total):
                    setattr(total, name, getattr(total, name) + getattr(report.stats, name))
        return sum(r.live for r in reports), sum(r.memory_bytes for r in reports), total

    def _export_gauges(self) -> None:
        live, memory, tracker_stats = self._tracker_totals()
        counters = self.counters
        # flow rate over the last round (about a second)
        now, flows = time.monotonic(), counters.get("flows_total")
        if self._last_rate_sample is not None and now > self._last_rate_sample[0]:
            counters.set("flows_per_second", (flows - self._last_rate_sample[1]) / (now - self._last_rate_sample[0]))
        self._last_rate_sample = (now, flows)
        counters.set("sessions_live", live)
        counters.set("sessions_tracker_bytes", memory)
        counters.set("sessions_started_total", tracker_stats.sessions_started)
        counters.set("sessions_evicted_total", tracker_stats.sessions_evicted)
        counters.set("flows_deduplicated_total", tracker_stats.flows_deduplicated)
        worker_errors = self.shards.write_errors() if self.shards is not None else 0
        counters.set("store_write_errors_total", getattr(self.store, "write_errors", 0) + worker_errors)
        for name, value in self.store.gauges().items():
            counters.set(f"store_{name}", value)
        try:
            stats = self.store.stats()
        except StoreUnavailable:  # a shard down: the figures that need it keep their last values
            return
        counters.set("store_rows", stats.rows)
        counters.set("store_bytes", stats.bytes_on_disk)
        if stats.oldest_ms is not None:
            counters.set("store_oldest_seconds", stats.oldest_ms / 1000)
