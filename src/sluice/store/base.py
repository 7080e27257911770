"""The FlowStore interface: what the rest of Sluice may ask of session storage.

Backends (DuckDB embedded, ClickHouse scale-out) implement it; nothing outside ``store/``
sees a database connection or writes SQL against it. Results are Arrow tables.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..flows.schema import SessionBatch
from ..query.filter import Node
from ..query.reports import ReportSpec, SeriesSpec


class StoreUnavailable(RuntimeError):
    """The store's servers cannot answer now (a ClickHouse shard down, a network cut): the
    message says which and why, in one line; the API answers 503 with it."""


@dataclass(frozen=True)
class TimeRange:
    """Half-open [start_ms, end_ms): a session row belongs when its span overlaps it."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"empty time range: end {self.end_ms} is not after start {self.start_ms}")


@dataclass
class StoreStats:
    rows: int
    bytes_on_disk: int
    oldest_ms: int | None
    newest_ms: int | None
    partitions: int


@dataclass
class RetentionResult:
    rows_deleted: int
    partitions_dropped: int


@dataclass(frozen=True)
class Stager:
    """How session workers write their own rows' files for ``FlowStore.adopt``: ``write(
    batches, directory, name)`` returns the files written (a module-level function: it
    travels to the worker processes by name), into ``directory``; a worker gathers about
    ``flush_rows`` (shared out among the workers) before it writes, else it writes at every
    flush interval."""

    write: Callable[[list[SessionBatch], Path, str], list[Any]]
    directory: Path
    flush_rows: int


class SessionQueue:
    """Session batches waiting for a store's next flush, and when to ask for one: with the
    store's ``on_full`` set, a full queue asks that callback (a writer thread) to flush, so the
    caller does not wait for the disk; only a queue twice over full is flushed by the caller,
    to bound memory."""

    def __init__(self, flush_rows: int):
        self.flush_rows = flush_rows
        self._lock = threading.Lock()
        self._batches: list[SessionBatch] = []
        self._rows = 0
        #: flushes a caller made because the writer thread had fallen behind (the queue twice
        #: over full): the receive loop writing files instead of reading its sockets
        self.overflow_flushes = 0

    def add(self, sessions: SessionBatch, flush: Callable[[], object], on_full: Callable[[], None] | None) -> None:
        if not len(sessions):
            return
        with self._lock:
            self._batches.append(sessions)
            self._rows += len(sessions)
            queued = self._rows
        if queued >= self.flush_rows * (2 if on_full is not None else 1):
            if on_full is not None:
                self.overflow_flushes += 1
            flush()
        elif queued >= self.flush_rows and on_full is not None:
            on_full()

    def take(self) -> list[SessionBatch]:
        """Everything queued, for a flush; the queue is empty after."""
        with self._lock:
            batches, self._batches, self._rows = self._batches, [], 0
        return batches


class FlowStore(ABC):
    """Append-only session storage with time-bounded queries, reports and retention."""

    #: set by the owner: called by ``append`` when a flush is due, so that the writing can
    #: happen on another thread; None: ``append`` flushes itself
    on_full: Callable[[], None] | None = None

    @abstractmethod
    def append(self, sessions: SessionBatch) -> None:
        """Queue sessions for storage (made durable by the next ``flush``)."""

    @abstractmethod
    def flush(self) -> int:
        """Write what is queued, atomically per call; returns the rows written."""

    @abstractmethod
    def sessions(self, time_range: TimeRange, where: Node | None = None, limit: int = 1000) -> pa.Table:
        """Session rows overlapping the range, newest first."""

    @abstractmethod
    def report(self, spec: ReportSpec) -> pa.Table:
        """A ranked report: the top entities by a metric (columns: entity fields, ``value``)."""

    @abstractmethod
    def timeseries(self, spec: SeriesSpec) -> pa.Table:
        """A metric per time bucket (columns: ``bucket_ms``, ``value``)."""

    @abstractmethod
    def retain(self, now_ms: int, max_age_s: float | None = None, max_bytes: int | None = None) -> RetentionResult:
        """Delete what is older than ``max_age_s``, then the oldest data until under ``max_bytes``."""

    def staging(self) -> Stager | None:
        """How session workers may write files for ``adopt`` themselves; None: they cannot,
        and hand their rows to ``append``."""
        return None

    def adopt(self, files: list[Any]) -> int:
        """Take in, as one flush, files that ``staging().write`` wrote; returns their rows."""
        raise NotImplementedError(f"{type(self).__name__} does not take staged files")

    def maintain(self, now_ms: int) -> None:  # noqa: B027  (optional: most stores have nothing to do)
        """Periodic housekeeping beyond retention (e.g. building rollups); by default none."""

    def gauges(self) -> dict[str, float]:
        """Figures of the backend for ``/metrics`` (as ``sluice_store_<name>``); by default none."""
        return {}

    @abstractmethod
    def stats(self) -> StoreStats:
        """Rows, bytes on disk, oldest and newest time."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the storage."""
