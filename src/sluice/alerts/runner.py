"""The alert engine's thread: batches queue up from the ingest path and are evaluated together."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from ..flows.schema import Arrivals, SessionBatch
from ..lifecycle import EVALUATION_NICENESS, Worker, lower_priority
from .engine import AlertEngine, AlertEvent
from .partial_builder import PartialBuilder

log = structlog.get_logger(__name__)

#: under load, batches grow: the next evaluation waits as long as the last one took (wall
#: time: a contended core makes it longer), if that is longer than the interval, up to this
#: many intervals, so that the alerting latency stays bounded however busy the server. A
#: larger batch costs less per row: its entities are visited once however many rows each has
#: (20 definitions on new conversations, in process: 0.88 CPU-s per M rows in batches of
#: 30,000, 0.66 in batches of 120,000). Waits of 2 or 3 times the last evaluation kept the
#: batches larger but doubled the latency at 0.4 M flows/s (p99 1.1 s, against 0.6 s)
MAX_WAIT_INTERVALS = 5


@dataclass
class EngineRunner:
    """Runs the engine on its own thread: batches queue up and are evaluated together every
    ``interval_s`` (or sooner when ``max_rows`` wait), so that the per-evaluation costs
    are shared by many small collector batches; one evaluation takes at most ``max_rows``.
    When evaluating takes long (a busy server), the wait grows with it (``wait_s``)."""

    engine: AlertEngine | PartialBuilder  # a collector's builder ships partials instead
    on_events: Callable[[list[AlertEvent]], None]
    interval_s: float = 0.1
    max_rows: int = 262_144
    max_pending_rows: int = 4_000_000
    clock: Callable[[], float] = time.time
    _pending: deque = field(default_factory=deque)
    _pending_rows: int = 0
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _worker: Worker | None = None
    _last_evaluation_s: float = 0.0
    #: wall time spent evaluating, all evaluations together (for ``/metrics``)
    evaluation_seconds: float = 0.0

    def wait_s(self) -> float:
        """How long the queue gathers rows before the next evaluation: the interval, or as
        long as the last evaluation took, at most ``MAX_WAIT_INTERVALS`` intervals."""
        return min(max(self.interval_s, self._last_evaluation_s), MAX_WAIT_INTERVALS * self.interval_s)

    def submit(self, sessions: SessionBatch, arrivals: Arrivals) -> None:
        """Queue a batch (from the ingest thread); a full queue drops it, counted."""
        with self._cv:
            if self._pending_rows + len(sessions) > self.max_pending_rows:
                self.engine.stats["rows_dropped"] += len(sessions)
                return
            self._pending.append((sessions, arrivals))
            self._pending_rows += len(sessions)
            if self._pending_rows >= self.max_rows:
                self._cv.notify()

    def start(self) -> None:
        self._worker = Worker("sluice-alerts", self._run, wake=self._wake)
        self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def pending_rows(self) -> int:
        return self._pending_rows

    def run_once(self) -> list[AlertEvent]:
        with self._cv:
            # at most ``max_rows`` at a time (a batch is never split): a backlog is worked
            # off in several evaluations, so their temporaries stay bounded
            batches: list[tuple[SessionBatch, Arrivals]] = []
            rows = 0
            while self._pending and (not batches or rows + len(self._pending[0][0]) <= self.max_rows):
                batch = self._pending.popleft()
                batches.append(batch)
                rows += len(batch[0])
            self._pending_rows -= rows
        started = time.monotonic()
        now = self.clock()
        now_ms = int(now * 1000)
        sessions = SessionBatch.concat([b for b, _ in batches])
        arrivals = Arrivals.concat([a for _, a in batches], now_ms)
        events = self.engine.evaluate(sessions, arrivals, now_ms, int(now * 1_000_000))
        self._last_evaluation_s = time.monotonic() - started
        self.evaluation_seconds += self._last_evaluation_s
        if events:
            self.on_events(events)
        return events

    def _run(self) -> None:
        assert self._worker is not None
        lower_priority(EVALUATION_NICENESS)
        stopping = self._worker.stopping
        while True:
            with self._cv:
                if not stopping.is_set() and self._pending_rows < self.max_rows:
                    self._cv.wait(self.wait_s())
            if stopping.is_set():
                return
            try:
                self.run_once()
            except Exception:  # one bad evaluation must not end alerting
                log.exception("alert evaluation failed")
                self.engine.stats["evaluation_errors"] += 1
