"""The sessions stage on several cores: flows sharded by conversation, one tracker per worker.

Session assembly and enrichment are Python (numpy and compiled loops) and hold the
interpreter lock, so one process uses one core for them. With ``workers`` > 1 each runs in
a worker process of its own:

- the collector's batch is split by a hash of the **conversation key without the exporter**,
  so every flow of a conversation - both directions, from every exporter that reports it -
  reaches the same worker: one conversation is one session, and exporter de-duplication
  holds as with one tracker;
- every worker gets the batch's clock, so timeouts end the same sessions as one tracker
  would; session ids stay unique (worker i of n hands out base + i, base + i + n, ...);
- a reader thread per worker hands the session batches on (store, alerts) as they come;
- the batches travel through shared memory (``batch_ring``), the pipe carries only where
  they are;
- where the store takes files written elsewhere (``FlowStore.staging``), each worker writes
  its own rows' files at every flush and the server only adopts them, so that one process
  does not encode every row; the session batches come back only while something (the
  alerts) wants them, otherwise just their number.

A worker that dies is started again (its shard's live sessions start anew, counted in
``session_worker_restarts_total``); a worker that falls behind makes the collector wait,
and the kernel's socket buffer then takes - and counts - the excess (see collect/overload).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from ..allocator import HeapTrimmer, keep_freed_memory
from ..compiled import njit
from ..config import EnrichSettings, SessionSettings
from ..counters import Counters
from .batch_ring import BatchRing, RingClosed, borrow, pack, unpack
from .enrich import Enricher
from .schema import Arrivals, FlowBatch, SessionBatch
from .session_table import GOLDEN, mix64
from .sessions import SessionTracker, TrackerStats, first_session_id

log = structlog.get_logger(__name__)

Deliver = Callable[[SessionBatch, Arrivals], None]


class Stager(Protocol):
    """How a worker writes its own rows' files (the store's ``staging()``, store/base.py)."""

    @property
    def write(self) -> Callable[[list[SessionBatch], Path, str], list[Any]]: ...

    @property
    def directory(self) -> Path: ...

    @property
    def flush_rows(self) -> int: ...


@njit(cache=True, nogil=True, inline="always")
def _endpoint_hash(words: np.ndarray, i: int, port: np.uint64) -> np.uint64:
    return mix64(words[i, 0] ^ (words[i, 1] * GOLDEN) ^ port)


@njit(cache=True, nogil=True)
def _shard_order(
    src: np.ndarray, dst: np.ndarray, src_port: np.ndarray, dst_port: np.ndarray, protocol: np.ndarray, shards: int
) -> tuple[np.ndarray, np.ndarray]:
    n = src.shape[0]
    shard = np.empty(n, np.int64)
    bounds = np.zeros(shards + 1, np.int64)
    for i in range(n):
        p = np.uint64(protocol[i])
        icmp = p == 1 or p == 58  # no ports, as in the tracker's key
        sp = np.uint64(0) if icmp else np.uint64(src_port[i])
        dp = np.uint64(0) if icmp else np.uint64(dst_port[i])
        # each endpoint hashed alone and the two added: the same either way round
        h = mix64(_endpoint_hash(src, i, sp) + _endpoint_hash(dst, i, dp) + p)
        k = np.int64(h % np.uint64(shards))
        shard[i] = k
        bounds[k + 1] += 1
    for j in range(shards):
        bounds[j + 1] += bounds[j]
    at = bounds[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):  # in their order within each shard: a conversation's flows in wire order
        order[at[shard[i]]] = i
        at[shard[i]] += 1
    return order, bounds


def shard_order(flows: FlowBatch, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """The flows by worker: (their positions, worker by worker, each in the batch's order;
    where each worker's start in it, and the end). A flow's worker is a hash of its
    conversation without the exporter - both endpoints, the same whichever is the source -
    modulo ``shards``. Two passes, no sort: the collector's thread does this for every flow."""

    def words(addresses: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(addresses).view(np.uint64)  # (n, 2): byte order does not matter to a hash

    return _shard_order(
        words(flows["src_addr"]), words(flows["dst_addr"]), flows["src_port"], flows["dst_port"], flows["protocol"],
        shards,
    )  # fmt: skip


@dataclass
class WorkerReport:
    """What a worker's tracker holds, sent with every reply."""

    live: int = 0
    memory_bytes: int = 0
    stats: TrackerStats | None = None
    write_errors: int = 0  # flushes of its own files that failed (their rows are lost)


def _send(conn: Connection, message: tuple[Any, ...]) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


class _OwnFiles:
    """A worker's rows waiting for its next flush into the store's staging area."""

    def __init__(self, stager: Stager, index: int, count: int):
        self.stager, self.index = stager, index
        self.flush_rows = max(1, stager.flush_rows // count)
        self.batches: list[SessionBatch] = []
        self.rows = 0
        self.flushes = 0
        self.write_errors = 0

    def add(self, sessions: SessionBatch) -> bool:
        """Keep a batch for the next flush; True when enough rows wait for one now."""
        self.batches.append(sessions)
        self.rows += len(sessions)
        return self.rows >= self.flush_rows

    def flush(self) -> list[Any]:
        """The files of the rows waiting (none if none wait, or if writing failed)."""
        batches, self.batches, self.rows = self.batches, [], 0
        if not batches:
            return []
        self.flushes += 1
        try:
            return self.stager.write(batches, self.stager.directory, f"w{self.index}-{os.getpid()}-{self.flushes}")
        except OSError as exc:  # e.g. disk full: the server counts it from the report
            self.write_errors += 1
            log.error("could not write sessions; rows dropped", rows=sum(len(b) for b in batches), error=str(exc))
            return []


def _owned(sessions: SessionBatch, ring: BatchRing) -> SessionBatch:
    """``sessions`` with no column that is a view of ``ring``: the tracker writes its rows
    into its own arrays, so this copies nothing unless that changes, and then keeps the rows
    from being written over once the ring's space is given back."""
    if not any(ring.holds(column) for column in sessions.columns.values()):
        return sessions
    return SessionBatch({name: c.copy() if ring.holds(c) else c for name, c in sessions.columns.items()})


def _report(tracker: SessionTracker, files: _OwnFiles | None = None) -> WorkerReport:
    errors = files.write_errors if files is not None else 0
    return WorkerReport(len(tracker), tracker.memory_bytes(), tracker.stats, errors)


#: how long a worker sent SIGTERM waits for the server to stop it before it goes by itself
TERM_GRACE_S = 30.0


def _leave_after_grace(signum: int, frame: object) -> None:
    timer = threading.Timer(TERM_GRACE_S, os._exit, (1,))
    timer.daemon = True
    timer.start()


def _worker_main(
    conn: Connection,
    index: int,
    count: int,
    first_id: int,
    sessions: SessionSettings,
    enrich: EnrichSettings,
    cache_dir: Path,
    stager: Stager | None,
) -> None:
    """A worker process: flows in, enriched session deltas out, until told to stop."""
    # the server stops its workers itself, storing what they hold: a signal to the whole
    # process group (Ctrl-C, systemctl stop, timeout) is the server's to act on. SIGTERM is
    # not ignored outright: a server exiting without stopping them (a crash) terminates its
    # workers and waits for them, so one that is not told to stop within the grace goes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_after_grace)
    keep_freed_memory()
    flows_in, sessions_out = BatchRing(recv_handle(conn)), BatchRing(recv_handle(conn))  # sent first
    server = os.getppid()
    trim = HeapTrimmer(time.monotonic())
    SessionTracker.warm_up()
    tracker = SessionTracker(
        sessions.idle_timeout_s,
        sessions.active_timeout_s,
        # the bound is the server's: each worker holds its share of the conversations
        max(1, sessions.max_sessions // count),
        sessions.dedupe_exporters,
        first_id=first_id + index,
        id_step=count,
    )
    enricher = Enricher(enrich.country_mmdb, enrich.asn_mmdb, cache_dir=cache_dir)
    files = _OwnFiles(stager, index, count) if stager is not None else None
    _send(conn, ("ready", _report(tracker)))
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the server went away
        kind = message[0]
        if kind == "flows":
            _, payload, now_ms, wanted = message
            # the flows are read where they lie in the ring (copying them out cost about an
            # eighth of the tracking); what the tracker returns is its own memory, and the
            # space goes back as soon as it has returned
            columns, give_back = borrow(flows_in, payload)
            # slots: row * count + index, distinct from every other worker's
            out, arrivals = tracker.track(FlowBatch(columns), now_ms, count, index)
            out = _owned(out, flows_in)
            give_back()
            del columns
            if len(out):
                out = enricher(out)
                if wanted or files is None:
                    columns = {**out.columns, _NEW: arrivals.new, _SLOT: arrivals.slot, _AT: np.full(len(out), now_ms)}
                    try:
                        payload = pack(sessions_out, columns, lambda: os.getppid() == server)
                    except RingClosed:
                        return  # the server went away
                    _send(conn, ("sessions", payload, _report(tracker, files)))
                else:  # stored here, and nobody else wants them: only their number goes back
                    _send(conn, ("rows", len(out), _report(tracker, files)))
                if files is not None and files.add(out):
                    _send(conn, ("staged", files.flush(), _report(tracker, files)))
            else:  # every flow a duplicate, say: the counts still changed
                _send(conn, ("report", _report(tracker, files)))
        elif kind == "expire":  # once per flush interval
            tracker.expire(message[1])
            enricher.refresh()
            trim()  # what the heap keeps free (``keep_freed_memory``) goes back now and then, as the server's does
            staged = files.flush() if files is not None else []
            _send(conn, ("staged", staged, _report(tracker, files)))
        elif kind == "stop":
            if files is not None:
                _send(conn, ("staged", files.flush(), _report(tracker, files)))
            return


#: batches waiting for a worker at most; beyond, the collector waits (and the kernel buffers)
OUTBOX_BATCHES = 4
#: the columns of a session batch from a worker that say how its rows arrived (``Arrivals``)
_NEW, _SLOT, _AT = "_new", "_slot", "_at_ms"


class _Worker:
    def __init__(self, pool: ShardedSessions, index: int):
        self.pool, self.index = pool, index
        self.report = WorkerReport()
        self.write_errors_before = 0  # of the processes this worker had before a restart
        self.send_lock = threading.Lock()
        # a thread of its own writes to the pipe: the collector hands a batch over and goes
        # on reading its sockets while the worker is still busy with the previous one
        self.outbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue(OUTBOX_BATCHES)
        self._spawn()
        self.sender = threading.Thread(target=self._write, name=f"sluice-sessions-{index}-writer", daemon=True)
        self.sender.start()

    def _start(self) -> None:
        self._spawn()
        self.wait_ready()

    def _spawn(self) -> None:
        pool = self.pool
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self.conn, child = context.Pipe()
        self.to_worker, self.from_worker = BatchRing.create(), BatchRing.create()
        self.process = context.Process(
            target=_worker_main,
            args=(
                child,
                self.index,
                pool.count,
                # counted from now: a worker started again must not hand out its old ids again
                first_session_id(pool.sessions.node_id, pool.count),
                pool.sessions,
                pool.enrich,
                pool.cache_dir,
                pool.stager,
            ),  # fmt: skip
            name=f"sluice-sessions-{self.index}",
            daemon=True,
        )
        self.process.start()
        child.close()
        for ring in (self.to_worker, self.from_worker):
            send_handle(self.conn, ring.fd, self.process.pid)

    def wait_ready(self) -> None:
        try:
            message = pickle.loads(self.conn.recv_bytes())  # "ready": compiled and listening
        except (EOFError, OSError):
            raise RuntimeError(
                f"session worker {self.index} exited while starting (exit code {self.process.exitcode}); "
                "its error is in the log above, or run with --workers 1"
            ) from None
        self.report = message[1]
        self.reader = threading.Thread(target=self._read, name=f"sluice-sessions-{self.index}-reader", daemon=True)
        self.reader.start()

    def send(self, message: tuple[Any, ...]) -> float:
        """Queue a message for the worker (waits while OUTBOX_BATCHES are queued); returns the
        seconds it waited for room."""
        try:
            self.outbox.put_nowait(message)
            return 0.0
        except queue.Full:
            started = time.perf_counter()
            self.outbox.put(message)
            return time.perf_counter() - started

    def _write(self) -> None:
        while (message := self.outbox.get()) is not None:
            with self.send_lock:
                conn = self.conn
                try:
                    if message[0] == "flows":
                        _, columns, rows, now_ms, wanted = message
                        payload = pack(self.to_worker, columns, self.process.is_alive, rows)
                        message = ("flows", payload, now_ms, wanted)
                    _send(conn, message)
                    continue
                except (BrokenPipeError, OSError, RingClosed):
                    pass
            self._restart(conn)

    def _read(self) -> None:
        conn, ring = self.conn, self.from_worker
        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                if not self.pool.stopping and conn is self.conn:
                    log.error("a session worker died; starting it again", worker=self.index)
                    threading.Thread(target=self._restart, args=(conn,), daemon=True).start()
                return
            if message[0] == "sessions":
                _, payload, self.report = message
                columns = unpack(ring, payload)
                arrivals = Arrivals(columns.pop(_NEW), columns.pop(_SLOT), columns.pop(_AT))
                try:
                    self.pool.deliver(SessionBatch(columns), arrivals)
                except Exception:  # the next batch goes on; the store and alerts count their own failures
                    log.exception("handing session batch on failed", worker=self.index)
                    self.pool.counters.inc("sink_errors_total")
            elif message[0] == "rows":
                _, rows, self.report = message
                if self.pool.unseen is not None:
                    self.pool.unseen(rows)
            elif message[0] == "staged":
                _, files, self.report = message
                try:
                    if files and self.pool.adopt is not None:
                        self.pool.adopt(files)
                except Exception:
                    log.exception("adopting a worker's session files failed", worker=self.index)
                    self.pool.counters.inc("sink_errors_total")
            else:
                self.report = message[1]

    def _restart(self, dead: Connection) -> None:
        """Start the worker again, once, however many threads saw ``dead`` fail (the reader
        and the writer both may)."""
        with self.send_lock:
            if self.conn is not dead or self.pool.stopping:
                return
            self.pool.counters.inc("session_worker_restarts_total")
            self.write_errors_before += self.report.write_errors  # a new process counts from 0
            self.report = WorkerReport()  # until the new process's first report
            try:
                dead.close()
            except OSError:
                pass
            self.to_worker.close()
            self.from_worker.close()
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
            self._start()

    def stop(self) -> None:
        self.outbox.put(("stop",))  # after every batch queued before it
        self.outbox.put(None)
        self.sender.join(10)
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        self.reader.join(5)
        self.conn.close()
        self.to_worker.close()
        self.from_worker.close()


class ShardedSessions:
    """``count`` worker processes, each a tracker and an enricher for its share of the
    conversations; ``deliver`` receives their session batches (from reader threads)."""

    def __init__(
        self,
        count: int,
        sessions: SessionSettings,
        enrich: EnrichSettings,
        cache_dir: Path,
        deliver: Deliver,
        counters: Counters,
        stager: Stager | None = None,
        adopt: Callable[[list[Any]], object] | None = None,
        wanted: Callable[[], bool] = lambda: True,
        unseen: Callable[[int], None] | None = None,
    ):
        """``deliver`` gets every session batch; with a ``stager`` the workers also write
        them to files themselves and ``adopt`` gets those files, and while ``wanted`` says
        no, the batches stay in the workers and ``unseen`` gets their number of rows."""
        self.count = count
        self.sessions, self.enrich, self.cache_dir = sessions, enrich, cache_dir
        self.deliver = deliver
        self.stager, self.adopt = stager, adopt
        self.wanted, self.unseen = wanted, unseen
        self.counters = counters
        self.stopping = False
        shard_order(FlowBatch.build(1), count)  # compile the split now, not on the first batch
        self.workers = [_Worker(self, i) for i in range(count)]  # they start side by side
        for worker in self.workers:
            worker.wait_ready()
        log.info("session workers started", workers=count, pids=[w.process.pid for w in self.workers])

    def submit(self, flows: FlowBatch, now_ms: int) -> None:
        """Hand each worker its share of a batch (waits while a worker's queue is full)."""
        wanted = self.stager is None or self.wanted()  # without a stager the store needs them
        order, bounds = shard_order(flows, self.count)
        waited = 0.0
        for i, worker in enumerate(self.workers):
            part = order[bounds[i] : bounds[i + 1]]
            if len(part):  # the rows are taken straight into the worker's ring by its writer
                waited += worker.send(("flows", flows.columns, part, now_ms, wanted))
        self._count_wait(waited)

    def expire(self, now_ms: int) -> None:
        self._count_wait(sum(worker.send(("expire", now_ms)) for worker in self.workers))

    def _count_wait(self, seconds: float) -> None:
        # the receive loop waiting on a worker that is behind: meanwhile only the kernel's
        # socket buffer holds what comes, and drops once it is full
        if seconds:
            self.counters.inc("session_worker_wait_seconds_total", seconds)

    def reports(self) -> list[WorkerReport]:
        return [worker.report for worker in self.workers]

    def write_errors(self) -> int:
        """Flushes of the workers' own files that failed, restarts included."""
        return sum(worker.write_errors_before + worker.report.write_errors for worker in self.workers)

    def stop(self) -> None:
        self.stopping = True
        for worker in self.workers:
            worker.stop()


def default_workers() -> int:
    """One worker per core the server may run on."""
    return len(os.sched_getaffinity(0))
