"""Alerting inside ``sluice serve``: the engine on its thread, records in the state database,
the window state saved to disk and restored at start, gauges for ``/metrics``."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import structlog

from ..config import AlertSettings, ClusterSettings
from ..counters import Counters
from ..flows.schema import Arrivals, SessionBatch
from ..flows.shards import default_workers
from ..lifecycle import Worker, lower_priority
from ..state.db import StateDB
from . import persist
from .engine import AlertEngine, AlertEvent
from .partial import Partial
from .partial_builder import PartialBuilder
from .records import AlertStore
from .runner import EngineRunner
from .stream import PartialPublisher, PartialSubscriber

log = structlog.get_logger(__name__)


#: see ``AlertEngine.arrival_slack_ms``
ARRIVAL_SLACK_MS = 2_000


#: in a cluster, definitions changed through another node's API are taken up this often
DEFINITIONS_POLL_S = 5.0

#: snapshots take at most this share of one core on average: the next waits until the last
#: one's CPU time is this share of the time since it began. A state of gigabytes (millions
#: of host pairs) takes seconds of CPU to write into the page cache; saved every 30 s, it
#: cost the server more than evaluating its traffic did
SNAPSHOT_CPU_SHARE = 1 / 30


class AlertService:
    """Alerting in one of three roles ([cluster] role): ``single`` evaluates the windows
    itself; a ``collector`` ships its batches as partial windows to the stream and keeps no
    windows; the ``alerting`` node merges the collectors' partials from the stream."""

    def __init__(
        self,
        db: StateDB,
        settings: AlertSettings,
        data_dir: Path,
        counters: Counters,
        cluster: ClusterSettings | None = None,
    ):
        self.settings = settings
        self.counters = counters
        self.store = AlertStore(db)
        self.role = cluster.role if cluster is not None else "single"
        AlertEngine.warm_up()
        self.publisher: PartialPublisher | None = None
        self.subscriber: PartialSubscriber | None = None
        self.builder: PartialBuilder | None = None
        if cluster is not None and self.role != "single":
            PartialBuilder.warm_up()
            # the node's own flows, if any are sent to it, go through the stream like a
            # collector's: the alerting node merges everything there, its own included
            self.publisher = PartialPublisher(
                cluster.nats_url, counters, cluster.stream_retention_s, cluster.stream_max_bytes
            )
            self.builder = PartialBuilder(cluster.node_name, on_partials=self.publisher.submit)
        if self.role == "collector":
            assert self.builder is not None
            self.engine = self.builder.engine  # its definitions and COUNT's slot history; no windows
        else:
            self.engine = AlertEngine(
                settings.exact_distinct_limit,
                settings.max_pairs_per_definition,
                settings.max_entities,
                max_step_bytes=settings.step_bytes_per_definition,
                # batches wait up to a tenth of a second for evaluation, and longer behind session
                # workers under load: the clock moves a window on only this long after its step
                arrival_slack_ms=ARRIVAL_SLACK_MS,
                evaluation_threads=settings.evaluation_threads or default_workers(),
            )
        # an alerting node: the stream sequence through which its alerts are recorded (the
        # partials it merges again after a restart do not record theirs twice)
        self._recorded_seq = 0
        if cluster is not None and self.role == "alerting":
            self._recorded_seq = self.store.recorded_seq()
            self.subscriber = PartialSubscriber(
                cluster.nats_url,
                counters,
                self._merge,
                lambda: self.engine.stream_seq,
                cluster.stream_retention_s,
                cluster.stream_max_bytes,
            )
        self.runner = EngineRunner(
            self.builder or self.engine,
            self._record,
            interval_s=settings.evaluate_interval_ms / 1000,
            max_pending_rows=settings.max_pending_rows,
        )
        self._last_definitions_poll = time.monotonic()
        self.state_path = Path(data_dir) / persist.STATE_FILE
        self._legacy_state_path = Path(data_dir) / persist.LEGACY_STATE_FILE
        self._unrecorded: list[AlertEvent] = []
        self._record_lock = threading.Lock()
        self._last_snapshot = time.monotonic()
        self.last_save_cpu_s = 0.0  # what writing the last snapshot cost (its thread's CPU time)
        self.last_save_bytes = 0  # and how large it was
        self._worker = Worker("sluice-alert-state", self._housekeeping)
        self._writer: threading.Thread | None = None  # the snapshot being written, if any
        self.store.on_definitions.append(self.reload)
        self.reload()
        for path in (self.state_path, self._legacy_state_path) if self.role != "collector" else ():
            if persist.load(self.engine, path):
                log.info("alert state restored", path=str(path))
                break

    def reload(self) -> None:
        """Take the definitions from the database (after any change through the API)."""
        definitions = self.store.definitions()
        self.engine.set_definitions(definitions)
        if self.builder is not None and self.builder.engine is not self.engine:
            self.builder.set_definitions(definitions)

    def failed_definitions(self) -> dict[int, tuple[str, str]]:
        """Per definition set aside: its title and why (for SYSTEM alerts)."""
        with self.engine.lock:
            return {i: (f.definition.title, f.reason) for i, f in self.engine.failures.items()}

    def wants_sessions(self) -> bool:
        """Whether there is anything to evaluate session batches against."""
        return bool(self.engine.states)

    def skip(self, rows: int) -> None:
        """Rows not handed over because no definition wanted them: evaluated, as nothing."""
        self.engine.stats["rows_evaluated"] += rows

    def submit(self, sessions: SessionBatch, arrivals: Arrivals) -> None:
        """The ingest listener: queue a batch for evaluation (nothing to do without definitions;
        the count of evaluated rows still moves, so "every row evaluated" stays true)."""
        if not self.wants_sessions():
            self.skip(len(sessions))
            return
        self.runner.submit(sessions, arrivals)

    def _merge(self, partials: list[tuple[Partial, int]]) -> None:
        """The alerting node: collectors' partials from the stream, merged in order."""
        now = time.time()
        events = self.engine.merge_partials(partials, int(now * 1000), int(now * 1_000_000))
        self.counters.inc("alert_partials_merged_total", len(partials))
        if self._recorded_seq:  # after a restart: what the partials merged again had recorded
            again = [e for e in events if e.seq and e.seq <= self._recorded_seq]
            if again:
                self.counters.inc("alert_events_recorded_before_total", len(again))
                events = [e for e in events if not (e.seq and e.seq <= self._recorded_seq)]
        if events:
            self._record(events)

    def _record(self, events: list[AlertEvent]) -> None:
        """Write triggers to the alert records; if the database fails, keep them and retry
        (with the next events, or from housekeeping within a second)."""
        self.counters.inc("alert_events_total", len(events))
        with self._record_lock:
            events = self._unrecorded + events
            if not events:
                return
            try:
                self.store.apply(events)
                self._unrecorded = []
            except Exception:  # the database is busy or failing
                log.exception("alert records not written; retrying")
                self.counters.inc("alert_record_errors_total")
                kept = events[-100_000:]
                if len(kept) < len(events):  # bounded memory: the oldest go, counted
                    self.counters.inc("alert_events_dropped_total", len(events) - len(kept))
                self._unrecorded = kept

    def start(self) -> None:
        self.runner.start()
        for side in (self.publisher, self.subscriber):
            if side is not None:
                side.start()
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        self.runner.stop()
        if self.publisher is not None:  # what the last evaluation made is published first
            self.publisher.stop()
        if self.subscriber is not None:
            self.subscriber.stop()
        if self.role != "collector":
            self.save()
        self.engine.close()

    def save(self) -> None:
        """Save the state now (at a stop), after any snapshot still being written."""
        if self._writer is not None:
            self._writer.join()
        self._save()

    def save_in_background(self) -> bool:
        """Save the state from a thread of its own, at background priority: writing a state of
        a gigabyte or more takes a second or more of CPU, which the receive loop needs first.
        Evaluation waits for it meanwhile (the rows queue, up to ``max_pending_rows``) and
        catches up. While one is still being written, another is not started (False)."""
        if self._writer is not None and self._writer.is_alive():
            return False

        def save() -> None:
            lower_priority()
            started = time.thread_time()
            self._save()
            self.last_save_cpu_s = time.thread_time() - started
            self.counters.set("alert_state_save_cpu_seconds", self.last_save_cpu_s)

        self._writer = threading.Thread(target=save, name="sluice-alert-state-write", daemon=True)
        self._writer.start()
        return True

    def snapshot_gap_s(self) -> float:
        """How long after a snapshot began the next is due: ``snapshot_interval_s``, or longer
        where writing the last one took more than ``SNAPSHOT_CPU_SHARE`` of that, or wrote more
        than ``snapshot_max_bytes_per_s`` over it (a state of gigabytes saved every 30 s would
        rewrite the disk at about 80 MB/s, day and night)."""
        settings = self.settings
        return max(
            settings.snapshot_interval_s,
            self.last_save_cpu_s / SNAPSHOT_CPU_SHARE,
            self.last_save_bytes / settings.snapshot_max_bytes_per_s,
        )

    def _save(self) -> None:
        try:
            self.last_save_bytes = persist.save(self.engine, self.state_path)
            self.counters.set("alert_state_save_bytes", self.last_save_bytes)
            self._legacy_state_path.unlink(missing_ok=True)  # superseded: never restored over the new one
        except OSError as exc:
            log.error("alert state not saved", path=str(self.state_path), error=str(exc))
            self.counters.inc("alert_state_save_errors_total")

    def _housekeeping(self) -> None:
        while not self._worker.stopping.wait(1.0):
            if self._unrecorded:
                self._record([])
            self.export_gauges()
            if self.role != "single" and time.monotonic() - self._last_definitions_poll >= DEFINITIONS_POLL_S:
                self._last_definitions_poll = time.monotonic()
                try:
                    self.reload()
                except Exception:  # the shared database away: the definitions held go on
                    log.exception("alert definitions not reloaded")
            # a collector has no windows to save
            due = self.role != "collector" and time.monotonic() - self._last_snapshot >= self.snapshot_gap_s()
            if due and self.save_in_background():  # else: tried again each second until it starts
                self._last_snapshot = time.monotonic()

    def export_gauges(self) -> None:
        c, stats = self.counters, self.engine.stats
        c.set("alert_definitions_active", len(self.engine.states))
        c.set("alert_definitions_failed", len(self.engine.failures))
        c.set("alert_definition_failures_total", stats["definition_failures"])
        c.set("alert_evaluation_errors_total", stats["evaluation_errors"])
        c.set("alert_rows_evaluated_total", stats["rows_evaluated"])
        c.set("alert_evaluations_total", stats["evaluations"])
        c.set("alert_evaluation_seconds_total", self.runner.evaluation_seconds)
        c.set("alert_rows_dropped_total", stats["rows_dropped"])
        c.set("alert_entities_dropped_total", stats["entities_dropped"])
        c.set("alert_pairs_dropped_total", self.engine.pairs_dropped())
        c.set("alert_rows_pending", self.runner.pending_rows())
        c.forget("alert_state_bytes")
        c.forget("alert_window_spread_steps")
        for part, size in self.engine.memory().items():
            kind, _, name = part.partition(":")
            if kind == "definition":
                c.set("alert_state_bytes", size, definition=name)
                c.set("alert_window_spread_steps", self.engine.spread_steps(int(name)), definition=name)
            else:
                c.set("alert_index_bytes", size, entity=name)
        c.forget("alert_definition_cpu_seconds_total")
        for task, seconds in self.engine.cpu_seconds().items():
            kind, _, name = task.partition(":")
            if kind == "definition":
                c.set("alert_definition_cpu_seconds_total", seconds, definition=name)
            elif kind == "rows":
                c.set("alert_rows_cpu_seconds_total", seconds, entity=name)
            else:
                c.set("alert_history_cpu_seconds_total", seconds)
