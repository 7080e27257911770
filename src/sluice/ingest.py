"""The ingest pipeline behind the collector: flows -> sessions -> enrichment -> store.

Called once per decoded batch, on the collector's thread; every stage works on whole
batches. A maintenance thread flushes the store every ``flush_interval_s``, ends idle
sessions and applies retention.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from .config import Settings
from .counters import Counters
from .flows.enrich import Enricher
from .flows.schema import FlowBatch, SessionBatch
from .flows.sessions import SessionTracker
from .lifecycle import Worker
from .store.base import FlowStore
from .store.duckdb_store import DuckDBStore

log = structlog.get_logger(__name__)


class Ingest:
    def __init__(self, settings: Settings, counters: Counters, store: FlowStore | None = None):
        sessions_settings = settings.sessions
        self.counters = counters
        SessionTracker.warm_up()
        self.tracker = SessionTracker(
            sessions_settings.idle_timeout_s,
            sessions_settings.active_timeout_s,
            sessions_settings.max_sessions,
            sessions_settings.dedupe_exporters,
        )
        self.enricher = Enricher(
            settings.enrich.country_mmdb, settings.enrich.asn_mmdb, cache_dir=Path(settings.data_dir) / "cache"
        )
        self.store = store if store is not None else DuckDBStore(Path(settings.data_dir) / "sessions.duckdb")
        self.settings = settings
        self._lock = threading.Lock()  # the tracker is used by the collector and by maintenance
        self._worker = Worker("sluice-maintenance", self._maintain, wake=self._wake_maintenance)
        self._flush_now = threading.Event()  # set by the store when its queue is full
        # the collector's thread only queues rows: the database write happens on the
        # maintenance thread, while the collector goes on reading its sockets
        self.store.on_full = self._flush_now.set
        #: later stages (alerts) receive each session batch, with a mask of the sessions it started
        self.listeners: list[Callable[[SessionBatch, np.ndarray], None]] = []
        #: retention in days set at run time (system settings), None: the configuration's
        self.retention_days: Callable[[], float | None] = lambda: None
        self._last_rate_sample: tuple[float, float] | None = None

    def __call__(self, flows: FlowBatch) -> None:
        now_ms = int(time.time() * 1000)
        with self._lock:
            first_new = self.tracker.next_session_id
            sessions = self.tracker.update(flows, now_ms)
        if not len(sessions):
            return
        sessions = self.enricher(sessions)
        self.store.append(sessions)
        self.counters.inc("session_rows_total", len(sessions))
        if self.listeners:
            new = sessions["session_id"] >= np.uint64(first_new)
            for listener in self.listeners:
                listener(sessions, new)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self.store.close()

    def _wake_maintenance(self) -> None:
        self._flush_now.set()

    def _maintain(self) -> None:
        last_retention = 0.0
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
            except Exception:  # maintenance must go on; the next round retries
                log.exception("maintenance failed")
                self.counters.inc("maintenance_errors_total")

    def maintenance_round(self, retention: bool = True) -> None:
        """Flush, end idle sessions; with ``retention``, also apply retention and build rollups."""
        st = self.settings.store
        self.store.flush()
        now_ms = int(time.time() * 1000)
        with self._lock:
            self.tracker.expire(now_ms)
        if retention:
            max_bytes = int(st.max_size_gb * 2**30) if st.max_size_gb else None
            days = self.retention_days() or st.retention_days
            result = self.store.retain(now_ms, days * 86400, max_bytes)
            if result.rows_deleted:
                log.info("retention", rows=result.rows_deleted, days_dropped=result.partitions_dropped)
            self.store.maintain(now_ms)
        self._export_gauges()

    def _export_gauges(self) -> None:
        tracker_stats = self.tracker.stats
        counters = self.counters
        # flow rate over the last round (about a second)
        now, flows = time.monotonic(), counters.get("flows_total")
        if self._last_rate_sample is not None and now > self._last_rate_sample[0]:
            counters.set("flows_per_second", (flows - self._last_rate_sample[1]) / (now - self._last_rate_sample[0]))
        self._last_rate_sample = (now, flows)
        counters.set("sessions_live", len(self.tracker))
        counters.set("sessions_tracker_bytes", self.tracker.memory_bytes())
        counters.set("sessions_started_total", tracker_stats.sessions_started)
        counters.set("sessions_evicted_total", tracker_stats.sessions_evicted)
        counters.set("flows_deduplicated_total", tracker_stats.flows_deduplicated)
        stats = self.store.stats()
        counters.set("store_rows", stats.rows)
        counters.set("store_bytes", stats.bytes_on_disk)
        counters.set("store_write_errors_total", getattr(self.store, "write_errors", 0))
        if stats.oldest_ms is not None:
            counters.set("store_oldest_seconds", stats.oldest_ms / 1000)
