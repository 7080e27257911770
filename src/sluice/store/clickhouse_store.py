"""Sessions in a ClickHouse cluster: each server of the cluster holds a ``sessions_local``
MergeTree table (partitioned by the day of a row's end, ordered for the time-bounded report
queries), and a ``sessions`` Distributed table over all of them answers every query.

Rows are sharded here, by session id (a session's rows stay together), and inserted in
batches over the native protocol (``clickhouse-driver``, columnar numpy) into each shard's
local table. Rows a shard cannot take go to a bounded spool on local disk (``spool.py``) and
are replayed when it answers again, exactly once: every insert carries a random batch id in
the ``batch_id`` column, and an insert is at most one block of the driver, which the server
stores as one part per day partition, whole or not at all; so before a replay, counting the
batch's rows per day on the shard tells which days of an insert whose outcome was unknown
(the connection broke before the acknowledgement) are already there.

Addresses are ``FixedString(16)`` (IPv4 as ``::ffff:a.b.c.d``): compared byte by byte they
order like the 128-bit numbers they are, which the oldest servers this runs on (18.16,
Debian 12) have no type for. Reports and time series are the embedded store's SQL
(``query/reports.py``) in the ClickHouse dialect; their answers are the same row for row.

Host rollups, as in the embedded store: once a UTC day is over (and a grace period for the
sessions still ending in it), each shard sums its rows of the day per host into
``hosts_local`` (a ``SummingMergeTree``, with ``hosts`` the Distributed table over it), with
the number of rows summed. A rollup is current while twice that number (each row counts for
its client and its server) equals the day's rows in the shard's parts; an unfiltered host
traffic report reads the current rollups of the whole days in its frame and raw rows for
the rest, and a stale day (late rows, a replayed spool) is rebuilt.

The cluster's DDL is run on each server in turn (``ON CLUSTER`` needs ZooKeeper).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from ..flows.schema import ADDR, COUNTRY, SESSION_COLUMNS, SESSION_SCHEMA, SessionBatch
from ..query.filter import Node
from ..query.reports import (
    ENTITY_COLUMNS,
    ReportSpec,
    SeriesSpec,
    endpoint_sum_parts,
    frame_condition,
    merge_sums,
    report_sql,
    rollup_sum,
    rollups_answer,
    series_sql,
)
from ..query.sql import Dialect
from .base import FlowStore, RetentionResult, SessionQueue, StoreStats, StoreUnavailable, TimeRange
from .spool import Spool, SpoolEntry

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
#: rows per insert at most: one block of the driver (its ``insert_block_size`` is 1,048,576)
INSERT_ROWS = 1_000_000
#: a shard that failed is tried again after this long, doubled after each failure up to the maximum
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
#: a day's rollup is built this long after its end: sessions still ending in it arrive meanwhile
ROLLUP_GRACE_MS = 15 * 60_000
#: spooled entries replayed per flush at most, so that a long outage's backlog does not hold
#: the writer (new rows still go straight to the shard)
REPLAY_ENTRIES = 8

_TYPES: dict[object, str] = {
    np.uint8: "UInt8",
    np.uint16: "UInt16",
    np.uint32: "UInt32",
    np.uint64: "UInt64",
    np.int64: "Int64",
    ADDR: "FixedString(16)",
    COUNTRY: "FixedString(2)",
}
_COLUMNS_DDL = ", ".join(f"{name} {_TYPES[dtype]}" for name, dtype in SESSION_COLUMNS.items()) + ", batch_id UInt64"
_INSERT_COLUMNS = ", ".join([*SESSION_COLUMNS, "batch_id"])
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
        spool: Spool | None = None,
        retry_first_s: float = RETRY_FIRST_S,
    ):
        """``servers``: every server of the cluster as ``host:port`` (native protocol), in the
        order of the cluster's shards; ``cluster``: its name in their ``remote_servers``;
        ``spool``: where rows wait for a shard that is down (None: they are dropped and counted)."""
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
        self.write_errors = 0  # inserts that failed (their rows spooled, or dropped without a spool)
        self.spool = spool
        self.dropped_rows = 0  # rows neither stored nor spooled (no spool given)
        self.replayed_rows = 0  # spooled rows stored on their shard
        self.replay_found_rows = 0  # spooled rows found already stored (an acknowledgement lost)
        self._retry_first_s = retry_first_s
        self._retry_delay = [retry_first_s] * len(self.servers)
        self._retry_at = [0.0] * len(self.servers)  # a shard is skipped (spooled for) until then
        self._schema_missing = set(range(len(self.servers)))  # servers not reached yet
        with self._write:
            self._create_schema()
        if spool is not None:
            orphans = [shard for shard in spool.shards() if shard >= len(self.servers)]
            if orphans:
                log.error("the spool holds rows of shards the configuration no longer lists; they stay "
                          "in the spool until it does", shards=orphans, directory=str(spool.directory))  # fmt: skip

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
        tried again when its retry is due (the server starts, and collects, without it)."""
        db = self.database
        for i in sorted(self._schema_missing):
            if self._is_down(i):
                continue
            client = self._clients[i]
            try:
                client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
                client.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.sessions_local ({_COLUMNS_DDL}) ENGINE = MergeTree() "
                    # the UTC day number: days do not depend on the server's time zone
                    f"PARTITION BY intDiv(end_ms, {DAY_MS}) ORDER BY (end_ms, session_id)"
                )
                client.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.sessions AS {db}.sessions_local "
                    f"ENGINE = Distributed({self.cluster}, {db}, sessions_local, session_id)"
                )
                client.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.hosts_local (day UInt32, host FixedString(16), "
                    "sent_bytes UInt64, recv_bytes UInt64, sent_pkts UInt64, recv_pkts UInt64, sides UInt64) "
                    "ENGINE = SummingMergeTree() PARTITION BY day ORDER BY (day, host)"
                )
                client.execute(
                    f"CREATE TABLE IF NOT EXISTS {db}.hosts AS {db}.hosts_local "
                    f"ENGINE = Distributed({self.cluster}, {db}, hosts_local)"
                )
                self._add_batch_id(client)
                self._schema_missing.discard(i)
            except Exception as exc:  # down or unreachable: collection goes on
                self._failed(i, exc, "ClickHouse server not reached; its tables are created when it answers")

    def _add_batch_id(self, client: Any) -> None:
        """Tables created before inserts carried a batch id get the column (0 in old rows)."""
        db = self.database
        for table in ("sessions_local", "sessions"):
            [(has,)] = client.execute(
                "SELECT count() FROM system.columns WHERE database = %(db)s AND table = %(t)s AND name = 'batch_id'",
                {"db": db, "t": table},
            )
            if not has:
                client.execute(f"ALTER TABLE {db}.{table} ADD COLUMN batch_id UInt64")

    def _is_down(self, shard: int) -> bool:
        return time.monotonic() < self._retry_at[shard]

    def _takes(self, shard: int) -> bool:
        """Whether to send the shard rows now: its tables exist and no retry is pending."""
        return not self._is_down(shard) and shard not in self._schema_missing

    def _failed(self, shard: int, exc: BaseException, message: str) -> None:
        """Skip the shard for a while (longer after each failure in a row)."""
        first = self._retry_delay[shard] == self._retry_first_s
        self._retry_at[shard] = time.monotonic() + self._retry_delay[shard]
        self._retry_delay[shard] = min(RETRY_MAX_S, self._retry_delay[shard] * 2)
        if first:  # once per outage, not at every retry
            log.error(message, server=self.servers[shard], error=_first_line(exc))

    def _answered(self, shard: int) -> None:
        if self._retry_delay[shard] != self._retry_first_s:
            log.info("ClickHouse shard answers again", server=self.servers[shard])
        self._retry_delay[shard] = self._retry_first_s
        self._retry_at[shard] = 0.0

    # -- writing ---------------------------------------------------------------------------

    def append(self, sessions: SessionBatch) -> None:
        """Queue rows for the next flush (``SessionQueue``)."""
        self.queue.add(sessions, self.flush, self.on_full)

    def flush(self) -> int:
        """Insert what is queued, each shard's share in inserts of at most ``INSERT_ROWS``;
        what a shard does not take is spooled. Then replay some of the spool. Returns the
        rows stored now (spooled ones not counted)."""
        with self._write:
            batches = self.queue.take()
            if self._schema_missing:
                self._create_schema()
            stored = 0
            if batches:
                rows = SessionBatch.concat(batches)
                shard = (rows["session_id"] % np.uint64(len(self.servers))).astype(np.int64)
                for i in range(len(self.servers)):
                    part = rows.take(np.flatnonzero(shard == i))
                    for start in range(0, len(part), INSERT_ROWS):
                        stored += self._store(i, part.take(np.arange(start, min(start + INSERT_ROWS, len(part)))))
            self._replay()
            return stored

    def _insert(self, shard: int, rows: SessionBatch, batch_id: int) -> None:
        self._clients[shard].execute(
            f"INSERT INTO {self.database}.sessions_local ({_INSERT_COLUMNS}) VALUES",
            [*_columns(rows), np.full(len(rows), batch_id, np.uint64)],
            columnar=True,
            types_check=False,
        )

    def _store(self, shard: int, rows: SessionBatch) -> int:
        """Insert one batch into its shard, or spool it; the rows stored."""
        batch_id = secrets.randbits(63)
        if self._takes(shard):
            try:
                self._insert(shard, rows, batch_id)
                self._answered(shard)
                return len(rows)
            except Exception as exc:  # down, or the outcome unknown: the spool (and its replay) decides
                self.write_errors += 1
                self._failed(shard, exc, "a ClickHouse shard did not take sessions; they go to the spool")
        if self.spool is None or not self.spool.put(shard, batch_id, rows):
            if self.spool is None:
                self.dropped_rows += len(rows)
            log.error("session rows dropped: the shard is down and the spool is full or missing",
                      server=self.servers[shard], rows=len(rows))  # fmt: skip
        return 0

    def _replay(self) -> None:
        """Store some spooled entries of the shards that are up (oldest first)."""
        if self.spool is None:
            return
        budget = REPLAY_ENTRIES
        for shard in self.spool.shards():
            while budget and shard < len(self.servers) and self._takes(shard):
                entry = self.spool.oldest(shard)
                if entry is None:
                    break
                budget -= 1
                try:
                    rows = self.spool.read(entry)
                except Exception as exc:  # a damaged file: not replayed, its rows counted as dropped
                    self.spool.set_aside(entry, _first_line(exc))
                    continue
                try:
                    self._replay_entry(shard, entry, rows)
                except Exception as exc:
                    self._failed(shard, exc, "a ClickHouse shard did not take spooled sessions; they stay spooled")
                    break
                self._answered(shard)
                self.spool.remove(entry)

    def _replay_entry(self, shard: int, entry: SpoolEntry, rows: SessionBatch) -> None:
        """Insert the rows of the entry's days that its shard does not hold yet."""
        end = rows["end_ms"]
        found = dict(
            self._clients[shard].execute(
                f"SELECT intDiv(end_ms, {DAY_MS}) AS day, count() FROM {self.database}.sessions_local "
                "WHERE end_ms >= %(lo)s AND end_ms <= %(hi)s AND batch_id = %(batch)s GROUP BY day",
                {"lo": int(end.min()), "hi": int(end.max()), "batch": entry.batch_id},
            )
        )
        day = end // DAY_MS
        missing = ~np.isin(day, np.array(list(found), np.int64))
        for d, n in found.items():
            expected = int(np.count_nonzero(day == d))
            if int(n) != expected:  # cannot happen if a day's rows of one insert are one part
                log.error("a replayed batch was partly stored; left as found", server=self.servers[shard],
                          day=int(d), stored=int(n), rows=expected)  # fmt: skip
        if missing.any():
            self._insert(shard, rows.take(np.flatnonzero(missing)), entry.batch_id)
        self.replayed_rows += int(np.count_nonzero(missing))
        self.replay_found_rows += len(rows) - int(np.count_nonzero(missing))

    def gauges(self) -> dict[str, float]:
        spool = self.spool
        return {
            "spool_rows": spool.rows if spool else 0,
            "spool_bytes": spool.bytes if spool else 0,
            "spooled_rows_total": spool.spooled_rows if spool else 0,
            "replayed_rows_total": self.replayed_rows,
            "replay_found_rows_total": self.replay_found_rows,
            "dropped_rows_total": self.dropped_rows + (spool.dropped_rows if spool else 0),
            "shards_down": sum(not self._takes(i) for i in range(len(self.servers))),
            "overflow_flushes_total": self.queue.overflow_flushes,
        }

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

    def report(self, spec: ReportSpec, use_rollups: bool = True) -> pa.Table:
        rolled = self._rolled_days(spec.start_ms, spec.end_ms) if use_rollups and rollups_answer(spec) else []
        if rolled:
            sql, params = self._rollup_report_sql(spec, rolled)
        else:
            sql, params = report_sql(spec, f"{self.database}.sessions", Dialect.CLICKHOUSE)
        table = self._query(sql, params)
        return table.select([*ENTITY_COLUMNS[spec.entity], "value"])

    def _rollup_state(self, shard: int, first: int, last: int) -> tuple[dict[int, int], dict[int, int]]:
        """For the days ``first`` .. ``last``: the shard's rows per day (from its parts) and the
        rows its rollup of each day summed."""
        db = self.database
        rows = {
            int(day): n
            for day, n, _ in self._server_days(shard)
            if not _earlier_layout(day) and first <= int(day) <= last  # an earlier layout's days: no rollups
        }
        summed = {
            int(day): int(sides) // 2
            for day, sides in self._ask(
                shard,
                f"SELECT day, sum(sides) FROM {db}.hosts_local WHERE day >= %(first)s AND day <= %(last)s GROUP BY day",
                {"first": first, "last": last},
            )
        }
        return rows, summed

    def _rolled_days(self, start_ms: int, end_ms: int) -> list[int]:
        """Days wholly inside [start_ms, end_ms) whose rollup is current on every shard."""
        first, last = -(-start_ms // DAY_MS), end_ms // DAY_MS - 1
        if last < first:
            return []
        current = set(range(first, last + 1))
        for shard in range(len(self.servers)):
            rows, summed = self._rollup_state(shard, first, last)
            current -= {day for day in current if rows.get(day, 0) != summed.get(day, 0)}
        return sorted(current)

    def _rollup_report_sql(self, spec: ReportSpec, rolled: list[int]) -> tuple[str, list[object]]:
        """Host traffic from the rollups of whole days, plus raw rows ending on other days."""
        days = ", ".join(str(day) for day in rolled)
        rolled_part = (
            f"SELECT host AS e0, {rollup_sum(spec)} AS v FROM {self.database}.hosts WHERE day IN ({days}) GROUP BY host"
        )
        raw: list[tuple[int, int | None]] = []
        lo = spec.start_ms
        for day in rolled:
            if lo < day * DAY_MS:
                raw.append((lo, day * DAY_MS))
            lo = (day + 1) * DAY_MS
        raw.append((lo, None))
        parts, params = endpoint_sum_parts(spec, f"{self.database}.sessions", Dialect.CLICKHOUSE, raw)
        return merge_sums([rolled_part, *parts], "address", spec.top), params

    def maintain(self, now_ms: int) -> None:
        self.build_rollups(now_ms)

    def build_rollups(self, now_ms: int) -> int:
        """On every shard that answers, sum each finished day (its end and the grace period
        past) per host where not yet done or stale. Returns the (shard, day) rollups built."""
        last = (now_ms - ROLLUP_GRACE_MS) // DAY_MS - 1
        built = 0
        with self._write:
            for shard in range(len(self.servers)):
                if not self._takes(shard):
                    continue
                try:
                    rows, summed = self._rollup_state(shard, 0, last)
                    for day in sorted(set(rows) | set(summed)):
                        if rows.get(day, 0) != summed.get(day, 0):
                            self._build_rollup(shard, day)
                            built += 1
                except StoreUnavailable as exc:
                    self._failed(shard, exc, "a ClickHouse shard did not answer for its rollups")
        return built

    def _build_rollup(self, shard: int, day: int) -> None:
        db, lo, hi = self.database, day * DAY_MS, (day + 1) * DAY_MS
        self._ask(shard, f"ALTER TABLE {db}.hosts_local DROP PARTITION {day}")
        sides = " UNION ALL ".join(
            f"SELECT {own}_addr AS host, sum({own}_bytes) AS sb, sum({other}_bytes) AS rb, sum({own}_pkts) AS sp, "
            f"sum({other}_pkts) AS rp, count() AS n FROM {db}.sessions_local "
            f"WHERE end_ms >= {lo} AND end_ms < {hi} GROUP BY host"
            for own, other in (("cln", "srv"), ("srv", "cln"))
        )
        self._ask(
            shard,
            f"INSERT INTO {db}.hosts_local SELECT toUInt32({day}), host, sum(sb), sum(rb), sum(sp), sum(rp), sum(n) "
            f"FROM ({sides}) GROUP BY host",
        )

    def timeseries(self, spec: SeriesSpec) -> pa.Table:
        sql, params = series_sql(spec, f"{self.database}.sessions", Dialect.CLICKHOUSE)
        return self._query(sql, params)

    # -- upkeep ----------------------------------------------------------------------------

    def _partitions(self) -> list[tuple[int, str, int, int, int]]:
        """(server, partition id, session rows, bytes with the day's rollup, newest end) of
        every day on every server."""
        return [
            (i, day, rows, size, _day_end_ms(day))
            for i in range(len(self.servers))
            for day, rows, size in self._server_days(i)
        ]

    def _server_days(self, server: int) -> list[tuple[str, int, int]]:
        """(partition id, session rows, bytes with the day's rollup) of each day on a server,
        from its active parts."""
        found = self._ask(
            server,
            "SELECT partition_id, sum(if(table = 'sessions_local', rows, 0)), sum(bytes_on_disk) "
            "FROM system.parts WHERE database = %(db)s AND table IN ('sessions_local', 'hosts_local') "
            "AND active GROUP BY partition_id",
            {"db": self.database},
        )
        # strings come as bytes
        return [(pid.decode() if isinstance(pid, bytes) else str(pid), int(n), int(size)) for pid, n, size in found]

    def retain(self, now_ms: int, max_age_s: float | None = None, max_bytes: int | None = None) -> RetentionResult:
        """Drop whole days: those that ended before ``max_age_s``, then the oldest while the
        cluster holds more than ``max_bytes``."""
        with self._write:
            parts = self._partitions()
            days = sorted({p[1] for p in parts}, key=_day_end_ms)
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
                    client = self._clients[server]
                    client.execute(f"ALTER TABLE {self.database}.sessions_local DROP PARTITION {int(day)}")
                    if not _earlier_layout(day):  # its rollup (days of an earlier layout have none)
                        client.execute(f"ALTER TABLE {self.database}.hosts_local DROP PARTITION {int(day)}")
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


def _earlier_layout(partition_id: str) -> bool:
    """A ``YYYYMMDD`` partition, of a table created before days were UTC day numbers."""
    return len(partition_id) == 8


def _day_end_ms(partition_id: str) -> int:
    """The end of a day partition (the UTC day number), in ms since the epoch; an earlier
    layout's ``YYYYMMDD`` day is in the server's time zone, taken as UTC."""
    if _earlier_layout(partition_id):
        from datetime import UTC, datetime

        day = datetime.strptime(partition_id, "%Y%m%d").replace(tzinfo=UTC)
        return int(day.timestamp() * 1000) + DAY_MS
    return (int(partition_id) + 1) * DAY_MS
