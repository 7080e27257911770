"""Sessions in a ClickHouse cluster: each server of the cluster holds a ``sessions_local``
MergeTree table (partitioned by the day of a row's end, ordered for the time-bounded report
queries), and a ``sessions`` Distributed table over all of them answers every query.

Rows are sharded here, by session id (a session's rows stay together), and inserted in
batches over the native protocol (``clickhouse-driver``, columnar numpy) into each shard's
local table. Addresses are ``FixedString(16)`` (IPv4 as ``::ffff:a.b.c.d``): compared byte by
byte they order like the 128-bit numbers they are, which the oldest servers this runs on
(18.16, Debian 12) have no type for. Reports and time series are the embedded store's SQL
(``query/reports.py``) in the ClickHouse dialect; their answers are the same row for row.

The cluster's DDL is run on each server in turn (``ON CLUSTER`` needs ZooKeeper).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from ..flows.schema import ADDR, COUNTRY, SESSION_COLUMNS, SESSION_SCHEMA, SessionBatch
from ..query.filter import Node
from ..query.reports import ENTITY_COLUMNS, ReportSpec, SeriesSpec, frame_condition, report_sql, series_sql
from ..query.sql import Dialect
from .base import FlowStore, RetentionResult, SessionQueue, StoreStats, StoreUnavailable, TimeRange

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000

_TYPES: dict[object, str] = {
    np.uint8: "UInt8",
    np.uint16: "UInt16",
    np.uint32: "UInt32",
    np.uint64: "UInt64",
    np.int64: "Int64",
    ADDR: "FixedString(16)",
    COUNTRY: "FixedString(2)",
}
_COLUMNS_DDL = ", ".join(f"{name} {_TYPES[dtype]}" for name, dtype in SESSION_COLUMNS.items())
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_name(kind: str, name: str) -> str:
    """A database or cluster name goes into SQL text: letters, digits and _ only."""
    if not _NAME.match(name):
        raise ValueError(f"ClickHouse {kind} name {name!r}: use letters, digits and _ only")
    return name


def _bind(sql: str, params: list[object]) -> tuple[str, dict[str, object]]:
    """``?`` placeholders as clickhouse-driver's ``%(pN)s``; a 16-byte value (an address)
    travels as hex and is turned back into a FixedString(16) by the server."""
    parts = sql.replace("%", "%%").split("?")
    if len(parts) != len(params) + 1:
        raise ValueError(f"{len(parts) - 1} placeholders for {len(params)} parameters")
    out: list[str] = [parts[0]]
    values: dict[str, object] = {}
    for i, (value, rest) in enumerate(zip(params, parts[1:], strict=True)):
        name = f"p{i}"
        if isinstance(value, bytes | bytearray) and len(value) == 16:
            out.append(f"toFixedString(unhex(%({name})s), 16)")
            values[name] = bytes(value).hex()
        else:
            out.append(f"%({name})s")
            values[name] = value.decode() if isinstance(value, bytes | bytearray) else value
        out.append(rest)
    return "".join(out), values


class ClickHouseStore(FlowStore):
    def __init__(
        self,
        servers: list[str],
        cluster: str,
        database: str = "sluice",
        flush_rows: int = 1_000_000,
        connect: Callable[[str, int], Any] | None = None,
    ):
        """``servers``: every server of the cluster as ``host:port`` (native protocol), in the
        order of the cluster's shards; ``cluster``: its name in their ``remote_servers``."""
        if not servers:
            raise ValueError("a ClickHouse store needs at least one server (host:port)")
        self.servers = list(servers)
        self.cluster = _check_name("cluster", cluster)
        self.database = _check_name("database", database)
        self._connect = connect or _client
        self._addresses = [_host_port(server) for server in self.servers]
        # a connection runs one query at a time: each thread (the writer, the API's) has its own
        self._local = threading.local()
        self._opened: list[list[Any]] = []
        self._opened_lock = threading.Lock()
        self._write = threading.Lock()  # writing and DDL
        self.queue = SessionQueue(flush_rows)
        self.write_errors = 0
        self._schema_missing = set(range(len(self.servers)))  # servers not reached yet
        self._create_schema()

    @property
    def _clients(self) -> list[Any]:
        """This thread's connections, one per server (opened on first use)."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = [self._connect(host, port) for host, port in self._addresses]
            with self._opened_lock:
                self._opened.append(clients)
        return clients

    # -- schema ----------------------------------------------------------------------------

    def _create_schema(self) -> None:
        """Create the tables on every server not done yet; a server that does not answer is
        tried again at the next flush (the server starts, and collects, without it)."""
        db = self.database
        for i in sorted(self._schema_missing):
            client = self._clients[i]
            try:
                client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
                client.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.sessions_local ({_COLUMNS_DDL}) ENGINE = MergeTree() "
                    "PARTITION BY toYYYYMMDD(toDateTime(intDiv(end_ms, 1000))) ORDER BY (end_ms, session_id)"
                )
                client.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.sessions AS {db}.sessions_local "
                    f"ENGINE = Distributed({self.cluster}, {db}, sessions_local, session_id)"
                )
                self._schema_missing.discard(i)
            except Exception as exc:  # down or unreachable: collection goes on
                log.error(
                    "ClickHouse server not reached; its tables are created when it answers",
                    server=self.servers[i],
                    error=_first_line(exc),
                )

    # -- writing ---------------------------------------------------------------------------

    def append(self, sessions: SessionBatch) -> None:
        """Queue rows for the next flush (``SessionQueue``)."""
        self.queue.add(sessions, self.flush, self.on_full)

    def flush(self) -> int:
        with self._write:
            batches = self.queue.take()
            if not batches:
                return 0
            if self._schema_missing:
                self._create_schema()
            rows = SessionBatch.concat(batches)
            shard = (rows["session_id"] % np.uint64(len(self._clients))).astype(np.int64)
            kept = 0
            for i, client in enumerate(self._clients):
                part = rows.take(np.flatnonzero(shard == i))
                if not len(part):
                    continue
                try:
                    client.execute(
                        f"INSERT INTO {self.database}.sessions_local VALUES",
                        _columns(part),
                        columnar=True,
                        types_check=False,
                    )
                    kept += len(part)
                except Exception as exc:  # a shard that is down: counted (a local spool is to come)
                    self.write_errors += 1
                    log.error(
                        "could not store sessions on a ClickHouse shard",
                        server=self.servers[i],
                        rows=len(part),
                        error=_first_line(exc),
                    )
            return kept

    # -- reading ---------------------------------------------------------------------------

    def _ask(self, server: int, sql: str, params: dict[str, object] | None = None, **options: Any) -> Any:
        """Run a query on one server; a server or shard that cannot answer is StoreUnavailable."""
        try:
            return self._clients[server].execute(sql, params, **options)
        except Exception as exc:
            if _is_unavailable(exc):
                raise StoreUnavailable(f"ClickHouse {self.servers[server]}: {_first_line(exc)}") from exc
            raise

    def _query(self, sql: str, params: list[object]) -> pa.Table:
        text, values = _bind(sql, params)
        data, types = self._ask(0, text, values, columnar=True, with_column_types=True)
        arrays, names = [], []
        for (name, ch_type), column in zip(types, data or [[] for _ in types], strict=True):
            names.append(name)
            arrays.append(_arrow(np.asarray(column), ch_type))
        return pa.Table.from_arrays(arrays, names=names)

    def sessions(self, time_range: TimeRange, where: Node | None = None, limit: int = 1000) -> pa.Table:
        cond, params = frame_condition(where, time_range.start_ms, time_range.end_ms, Dialect.CLICKHOUSE)
        columns = ", ".join(SESSION_SCHEMA.names)
        table = self._query(
            f"SELECT {columns} FROM {self.database}.sessions WHERE {cond} ORDER BY end_ms DESC LIMIT {int(limit)}",
            params,
        )
        return table.cast(SESSION_SCHEMA)

    def report(self, spec: ReportSpec) -> pa.Table:
        sql, params = report_sql(spec, f"{self.database}.sessions", Dialect.CLICKHOUSE)
        table = self._query(sql, params)
        return table.select([*ENTITY_COLUMNS[spec.entity], "value"])

    def timeseries(self, spec: SeriesSpec) -> pa.Table:
        sql, params = series_sql(spec, f"{self.database}.sessions", Dialect.CLICKHOUSE)
        return self._query(sql, params)

    # -- upkeep ----------------------------------------------------------------------------

    def _partitions(self) -> list[tuple[int, str, int, int, int]]:
        """(server, partition id, rows, bytes, newest end) of every active part group."""
        out = []
        for i in range(len(self.servers)):
            rows = self._ask(
                i,
                "SELECT partition_id, sum(rows), sum(bytes_on_disk) FROM system.parts "
                "WHERE database = %(db)s AND table = 'sessions_local' AND active GROUP BY partition_id",
                {"db": self.database},
            )
            for pid, n, size in rows:
                day = pid.decode() if isinstance(pid, bytes) else str(pid)  # strings come as bytes
                out.append((i, day, int(n), int(size), _day_end_ms(day)))
        return out

    def retain(self, now_ms: int, max_age_s: float | None = None, max_bytes: int | None = None) -> RetentionResult:
        """Drop whole days: those that ended before ``max_age_s``, then the oldest while the
        cluster holds more than ``max_bytes``."""
        with self._write:
            parts = self._partitions()
            days = sorted({p[1] for p in parts})
            doomed: set[str] = set()
            if max_age_s is not None:
                doomed |= {day for day in days if _day_end_ms(day) <= now_ms - max_age_s * 1000}
            if max_bytes is not None:
                size = sum(p[3] for p in parts if p[1] not in doomed)
                for day in days:
                    if size <= max_bytes or day == days[-1]:
                        break
                    if day not in doomed:
                        doomed.add(day)
                        size -= sum(p[3] for p in parts if p[1] == day)
            deleted = 0
            for server, day, rows, _, _ in parts:
                if day in doomed:
                    self._clients[server].execute(
                        f"ALTER TABLE {self.database}.sessions_local DROP PARTITION {int(day)}"
                    )
                    deleted += rows
            return RetentionResult(deleted, len(doomed))

    def stats(self) -> StoreStats:
        [(rows, oldest, newest)] = self._ask(
            0, f"SELECT count(), min(start_ms), max(end_ms) FROM {self.database}.sessions"
        )
        parts = self._partitions()
        return StoreStats(
            int(rows),
            sum(p[3] for p in parts),
            int(oldest) if rows else None,
            int(newest) if rows else None,
            len({p[1] for p in parts}),
        )

    def close(self) -> None:
        self.flush()
        with self._opened_lock:
            for clients in self._opened:
                for client in clients:
                    client.disconnect()


def _first_line(exc: BaseException) -> str:
    """A driver's error in one line: its lines up to any stack trace, joined."""
    lines = []
    for line in str(exc).splitlines():
        if line.strip().startswith("Stack trace"):
            break
        if line.strip():
            lines.append(line.strip())
    return " ".join(lines)[:300] or type(exc).__name__


def _is_unavailable(exc: BaseException) -> bool:
    """A connection that failed, or a shard the server could not reach for a Distributed query
    (errors 210 NETWORK_ERROR, 209 SOCKET_TIMEOUT, 279 ALL_CONNECTION_TRIES_FAILED, 32
    ATTEMPT_TO_READ_AFTER_EOF): not a mistake in the query."""
    from clickhouse_driver import errors

    if isinstance(exc, (OSError, EOFError, errors.NetworkError, errors.SocketTimeoutError)):
        return True
    return getattr(exc, "code", None) in (32, 209, 210, 279)


def _client(host: str, port: int) -> Any:
    from clickhouse_driver import Client  # here: only a ClickHouse deployment needs it loaded

    # strings as bytes: addresses are FixedString(16), not text
    settings = {"use_numpy": True, "strings_as_bytes": True}
    return Client(host=host, port=port, settings=settings, connect_timeout=5, send_receive_timeout=60)


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ClickHouse server {server!r}: write it as host:port (the native protocol port, e.g. 9000)")
    return host.strip("[]"), int(port)


def _columns(batch: SessionBatch) -> list[np.ndarray]:
    """The batch's columns as clickhouse-driver inserts them (addresses as 16-byte strings)."""
    out = []
    for name, dtype in SESSION_COLUMNS.items():
        column = batch[name]
        if dtype is ADDR:
            column = np.ascontiguousarray(column, np.uint8).view("S16").ravel()
        out.append(column)
    return out


def _arrow(column: np.ndarray, ch_type: str) -> pa.Array:
    """A result column as Arrow: FixedString(16) as 16-byte binary, FixedString(2) as text."""
    if ch_type == "FixedString(16)":
        raw = np.ascontiguousarray(column.astype("S16"))
        return pa.Array.from_buffers(pa.binary(16), len(raw), [None, pa.py_buffer(raw.tobytes())])
    if ch_type.startswith("FixedString"):
        return pa.array(np.char.decode(column.astype("S"), "ascii"), pa.string())
    return pa.array(column)


def _day_end_ms(partition_id: str) -> int:
    """The end of a day partition (``YYYYMMDD``), in ms since the epoch."""
    from datetime import UTC, datetime

    day = datetime.strptime(partition_id, "%Y%m%d").replace(tzinfo=UTC)
    return int(day.timestamp() * 1000) + DAY_MS
