"""The embedded session store: one DuckDB file, one table per UTC day.

- **Addresses** are stored as 128-bit integers (UHUGEINT): fixed-size keys insert, compress
  and group faster than 16-byte blobs. They go in as two 64-bit halves and come out as the
  16-byte binary of the session schema; filters pass address bounds as integers.
- **Appends** are Arrow batches inserted without per-row Python; ``append`` queues them and
  ``flush`` writes everything queued in one transaction (the server flushes every second), so a
  crash loses at most the unflushed second and never leaves a half-written batch.
- **Time partitioning**: a row goes to the table of its end time's day
  (``sessions_YYYYMMDD``); a query opens only the days its time frame overlaps, and within a
  day DuckDB's per-row-group min/max skip what lies outside the frame (rows arrive in time order).
- **Retention** drops whole days, oldest first, and trims the oldest remaining day to the
  cutoff; by size, it drops the oldest days until the data fits. DuckDB reuses the freed space
  (the file does not shrink, it stops growing).
- **Durability**: DuckDB's write-ahead log makes every flush atomic; a database killed mid-write
  opens again with whole flushes only.
- **Rollups**: once a UTC day is over, ``build_rollups`` sums it per host (bytes and packets
  sent and received) into ``hosts_YYYYMMDD``; an unfiltered host traffic report then reads
  those sums for the whole days in its frame and raw rows only for the partial days at its
  edges. Nothing is added to the insert path. A day that receives late rows is rebuilt.
"""

from __future__ import annotations

import os
import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import structlog
from duckdb.value.constant import UnsignedHugeIntegerValue

from ..flows.schema import SESSION_SCHEMA, SessionBatch, address_words
from ..query.filter import Node
from ..query.reports import (
    ENTITY_COLUMNS,
    Entity,
    Metric,
    ReportSpec,
    SeriesSpec,
    endpoint_sum_parts,
    merge_sums,
    report_sql,
    series_sql,
)
from ..query.sql import compile_filter
from .base import FlowStore, RetentionResult, StoreStats, TimeRange

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
_PARTITION = re.compile(r"^sessions_(\d{8})$")
_ROLLUP_COLUMNS = "host UHUGEINT NOT NULL, sent_bytes HUGEINT, recv_bytes HUGEINT, sent_pkts HUGEINT, recv_pkts HUGEINT"

_DUCK_TYPES = {
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.int64(): "BIGINT",
    pa.binary(16): "UHUGEINT",
    pa.string(): "VARCHAR",
}
_COLUMNS_SQL = ", ".join(f"{field.name} {_DUCK_TYPES[field.type]} NOT NULL" for field in SESSION_SCHEMA)
ADDRESS_COLUMNS = [field.name for field in SESSION_SCHEMA if field.type == pa.binary(16)]
_LOW64 = "18446744073709551615::UHUGEINT"
# incoming rows carry each address as two 64-bit halves
_INSERT_SELECT = ", ".join(
    f"(({name}__hi::UHUGEINT) << 64) | {name}__lo" if name in ADDRESS_COLUMNS else name for name in SESSION_SCHEMA.names
)


def _split_addresses(batch: SessionBatch) -> pa.Table:
    """A session batch as the Arrow table the store inserts: addresses as (hi, lo) halves."""
    arrow = batch.to_arrow(skip=frozenset(ADDRESS_COLUMNS))
    columns, names = [], []
    for name in SESSION_SCHEMA.names:
        if name in ADDRESS_COLUMNS:
            hi, lo = address_words(batch[name])
            columns += [pa.array(hi), pa.array(lo)]
            names += [f"{name}__hi", f"{name}__lo"]
        else:
            columns.append(arrow.column(name))
            names.append(name)
    return pa.Table.from_arrays(columns, names=names)


def _address_out(column: str, alias: str | None = None) -> str:
    alias = alias or column
    return f"({column} >> 64)::UBIGINT AS {alias}__hi, ({column} & {_LOW64})::UBIGINT AS {alias}__lo"


def _join_addresses(table: pa.Table) -> pa.Table:
    """Turn every ``x__hi`` / ``x__lo`` pair of a result back into a 16-byte binary ``x``."""
    names = table.column_names
    out_names, out_cols = [], []
    for name in names:
        if name.endswith("__lo"):
            continue
        if name.endswith("__hi"):
            base = name[:-4]
            hi = table.column(name).to_numpy(zero_copy_only=False)
            words = np.empty((len(hi), 2), ">u8")  # big-endian: the address's bytes in order
            words[:, 0] = hi
            words[:, 1] = table.column(f"{base}__lo").to_numpy(zero_copy_only=False)
            raw = words.view(np.uint8).tobytes()
            out_cols.append(pa.Array.from_buffers(pa.binary(16), len(hi), [None, pa.py_buffer(raw)]))
            out_names.append(base)
        else:
            out_cols.append(table.column(name))
            out_names.append(name)
    return pa.Table.from_arrays(out_cols, names=out_names)


def _int_params(params: list[object]) -> list[object]:
    """Address bounds (16 bytes) as the 128-bit integers the address columns hold, typed
    UHUGEINT: an untyped Python int is bound as a signed type, and DuckDB then compares the
    column as INT128, which fails on every stored address from 8000:: up."""
    return [
        UnsignedHugeIntegerValue(int.from_bytes(param, "big"))
        if isinstance(param, bytes) and len(param) == 16
        else param
        for param in params
    ]


#: report result columns that hold addresses, per entity
_ADDRESS_RESULTS = {Entity.HOST: ("address",), Entity.HOST_PAIR: ("client", "server"), Entity.EXPORTER: ("exporter",)}


_MAX_MS = 253_402_300_799_000  # 9999-12-31: the last day a partition can be named


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The one value a one-row query answers (None for no row)."""
    row = con.execute(sql).fetchone()
    return row[0] if row else None


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(_scalar(con, f"SELECT count(*) FROM {table}") or 0)


def _day(ms: int) -> str:
    """The partition day of a time; times beyond what a calendar can name are clamped."""
    ms = min(max(ms, 0), _MAX_MS)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d")


def _day_start_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp() * 1000)


class DuckDBStore(FlowStore):
    def __init__(self, path: Path | str, flush_rows: int = 1_000_000, threads: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(self.path))
        # DuckDB counts the machine's cores; a server confined to fewer (taskset, cgroup
        # cpuset) would have its threads fight over them
        self._con.execute(f"SET threads = {int(threads or len(os.sched_getaffinity(0)))}")
        self._lock = threading.Lock()  # the queue
        self._write = threading.Lock()  # the writer connection: flush, retention, close
        self._queue: list[SessionBatch] = []
        self._queued_rows = 0
        self.flush_rows = flush_rows
        self.write_errors = 0
        self._days: set[str] = set(self._list_days())
        self._con.execute("CREATE TABLE IF NOT EXISTS rollup_days (day VARCHAR PRIMARY KEY, source_rows BIGINT)")
        #: day -> raw rows the day's host rollup was built from
        self._rollups: dict[str, int] = dict(self._con.execute("SELECT day, source_rows FROM rollup_days").fetchall())

    # -- writing ---------------------------------------------------------------------------

    def append(self, sessions: SessionBatch) -> None:
        """Queue rows for the next flush. With ``on_full`` set, a full queue asks that
        callback (a writer thread) to flush, so the caller does not wait for the database;
        only a queue twice over full is flushed here, to bound memory. (An insert costs about
        half as much per row at a million rows as at a hundred thousand: flushes are large.)"""
        if not len(sessions):
            return
        with self._lock:
            self._queue.append(sessions)
            self._queued_rows += len(sessions)
            queued = self._queued_rows
        if queued >= self.flush_rows * (2 if self.on_full is not None else 1):
            self.flush()
        elif queued >= self.flush_rows and self.on_full is not None:
            self.on_full()

    def flush(self) -> int:
        with self._write:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            batches, self._queue, self._queued_rows = self._queue, [], 0
        if not batches:
            return 0
        table = _split_addresses(SessionBatch.concat(batches))
        day_of_row = (table.column("end_ms").to_numpy() // DAY_MS).astype(np.int64)
        days = np.unique(day_of_row) if day_of_row.min() != day_of_row.max() else day_of_row[:1]
        con = self._con
        created: list[str] = []
        try:
            con.execute("BEGIN TRANSACTION")
            for day_number in days.tolist():
                day = _day(day_number * DAY_MS)
                if day not in self._days:
                    con.execute(f"CREATE TABLE IF NOT EXISTS sessions_{day} ({_COLUMNS_SQL})")
                    created.append(day)
                self._forget_rollup(day)  # late rows: the day's sums must be rebuilt
                part = table if len(days) == 1 else table.filter(pa.array(day_of_row == day_number))
                con.register("incoming", part)
                con.execute(f"INSERT INTO sessions_{day} SELECT {_INSERT_SELECT} FROM incoming")
                con.unregister("incoming")
            con.execute("COMMIT")
            # only now may queries (on other connections) name the new days' tables
            self._days.update(created)
        except duckdb.Error as exc:  # e.g. disk full: the transaction is rolled back, nothing half-written
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            self.write_errors += 1
            log.error("could not store sessions; batch dropped", rows=table.num_rows, error=str(exc))
            self._days = set(self._list_days())
            return 0
        return table.num_rows

    def _list_days(self) -> list[str]:
        rows = self._con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
        return sorted(m.group(1) for (name,) in rows if (m := _PARTITION.match(name)))

    # -- reading ---------------------------------------------------------------------------

    def _source(self, start_ms: int, end_ms: int, exclude: frozenset[str] = frozenset()) -> str:
        """The partitions a time frame can touch (less ``exclude``), as one table expression."""
        first, last = _day(start_ms), _day(min(end_ms, _MAX_MS) + DAY_MS)  # rows end up to a day after they start
        days = [day for day in sorted(self._days) if first <= day <= last and day not in exclude]
        if not days:
            return self._empty_source()
        union = " UNION ALL ".join(f"SELECT * FROM sessions_{day}" for day in days)
        return f"({union}) AS sessions"

    def _empty_source(self) -> str:
        cols = ", ".join(f"CAST(NULL AS {_DUCK_TYPES[field.type]}) AS {field.name}" for field in SESSION_SCHEMA)
        return f"(SELECT {cols} WHERE false) AS sessions"

    def _query(self, sql: str, params: list[object], addresses: tuple[str, ...] = ()) -> pa.Table:
        """Run a query; ``addresses`` names result columns that hold addresses."""
        if addresses:
            inner_cols = ", ".join(_address_out(column) for column in addresses)
            sql = f"SELECT * EXCLUDE ({', '.join(addresses)}), {inner_cols} FROM ({sql}) AS q"
        cursor = self._con.cursor()  # its own connection: safe beside the writer's thread
        try:
            table = cursor.sql(sql, params=_int_params(params)).to_arrow_table()
        finally:
            cursor.close()
        return _join_addresses(table) if addresses else table

    def sessions(self, time_range: TimeRange, where: Node | None = None, limit: int = 1000) -> pa.Table:
        cond, params = "end_ms >= ? AND start_ms < ?", list[object]([time_range.start_ms, time_range.end_ms])
        if where is not None:
            sql, more = compile_filter(where)
            cond, params = f"{cond} AND {sql}", params + more
        source = self._source(time_range.start_ms, time_range.end_ms)
        table = self._query(
            f"SELECT * FROM {source} WHERE {cond} ORDER BY end_ms DESC LIMIT {int(limit)}",
            params,
            tuple(ADDRESS_COLUMNS),
        )
        return table.select(SESSION_SCHEMA.names).cast(SESSION_SCHEMA)

    def report(self, spec: ReportSpec, use_rollups: bool = True) -> pa.Table:
        if (
            use_rollups
            and spec.where is None
            and spec.entity is Entity.HOST
            and spec.metric in (Metric.BYTES, Metric.PACKETS)
        ):
            rolled = self._rolled_days(spec.start_ms, spec.end_ms)
            if rolled:
                sql, params = self._rollup_report_sql(spec, rolled)
                return self._ordered(self._query(sql, params, ("address",)), spec)
        sql, params = report_sql(spec, self._source(spec.start_ms, spec.end_ms))
        return self._ordered(self._query(sql, params, _ADDRESS_RESULTS.get(spec.entity, ())), spec)

    @staticmethod
    def _ordered(table: pa.Table, spec: ReportSpec) -> pa.Table:
        """Entity columns first, then ``value`` (address conversion moved them around)."""
        return table.select([*ENTITY_COLUMNS[spec.entity], "value"])

    def _rolled_days(self, start_ms: int, end_ms: int) -> list[str]:
        """Days with a current rollup that lie wholly inside [start_ms, end_ms) - rows included
        by the frame's overlap rule: they end inside the day, and start before its end."""
        rolled = []
        for day in sorted(self._days):
            lo = _day_start_ms(day)
            # rows of this day end in [lo, lo + DAY_MS) and start no later than they end
            if self._rollups.get(day) is not None and start_ms <= lo and lo + DAY_MS <= end_ms:
                rolled.append(day)
        return rolled

    def _rollup_report_sql(self, spec: ReportSpec, rolled: list[str]) -> tuple[str, list[object]]:
        """Host traffic from the rollups of whole days, plus raw rows for the other days."""
        unit = "bytes" if spec.metric is Metric.BYTES else "pkts"
        value = {
            "sender": f"sum(sent_{unit})",
            "receiver": f"sum(recv_{unit})",
            "either": f"sum(sent_{unit}) + sum(recv_{unit})",
        }[spec.direction.value]
        parts = [f"SELECT host AS e0, {value} AS v FROM hosts_{day} GROUP BY host" for day in rolled]
        edge_parts, params = endpoint_sum_parts(spec, self._source(spec.start_ms, spec.end_ms, frozenset(rolled)))
        return merge_sums(parts + edge_parts, "address", spec.top), params

    def maintain(self, now_ms: int) -> None:
        self.build_rollups(now_ms)

    def build_rollups(self, now_ms: int) -> int:
        """Sum every finished day (before ``now_ms``'s) per host, where not yet done or stale.
        Returns the days built."""
        today = _day(now_ms)
        built = 0
        with self._write:
            for day in sorted(self._days):
                if day >= today:
                    continue
                rows = _count(self._con, f"sessions_{day}")
                if self._rollups.get(day) == rows:
                    continue
                con = self._con
                con.execute("BEGIN TRANSACTION")
                con.execute(f"DROP TABLE IF EXISTS hosts_{day}")
                con.execute(f"CREATE TABLE hosts_{day} ({_ROLLUP_COLUMNS})")
                con.execute(f"""INSERT INTO hosts_{day}
                    SELECT host, sum(sb), sum(rb), sum(sp), sum(rp) FROM (
                        SELECT cln_addr AS host, sum(cln_bytes) AS sb, sum(srv_bytes) AS rb, sum(cln_pkts) AS sp,
                               sum(srv_pkts) AS rp FROM sessions_{day} GROUP BY cln_addr
                        UNION ALL
                        SELECT srv_addr, sum(srv_bytes), sum(cln_bytes), sum(srv_pkts), sum(cln_pkts)
                        FROM sessions_{day} GROUP BY srv_addr) GROUP BY host""")
                con.execute("INSERT OR REPLACE INTO rollup_days VALUES (?, ?)", [day, rows])
                con.execute("COMMIT")
                self._rollups[day] = rows
                built += 1
        return built

    def timeseries(self, spec: SeriesSpec) -> pa.Table:
        sql, params = series_sql(spec, self._source(spec.start_ms, spec.end_ms))
        return self._query(sql, params)

    # -- housekeeping ----------------------------------------------------------------------

    def retain(self, now_ms: int, max_age_s: float | None = None, max_bytes: int | None = None) -> RetentionResult:
        with self._write:
            return self._retain(now_ms, max_age_s, max_bytes)

    def _retain(self, now_ms: int, max_age_s: float | None, max_bytes: int | None) -> RetentionResult:
        deleted = dropped = 0
        if max_age_s is not None:
            cutoff = now_ms - int(max_age_s * 1000)
            for day in sorted(self._days):
                if _day_start_ms(day) + DAY_MS <= cutoff:  # the whole day is older
                    deleted += self._drop(day)
                    dropped += 1
                elif _day_start_ms(day) < cutoff:
                    result = self._con.execute(f"DELETE FROM sessions_{day} WHERE end_ms < ?", [cutoff]).fetchone()
                    deleted += int(result[0]) if result else 0
                    self._forget_rollup(day)
        if max_bytes is not None:
            while len(self._days) > 1 and self._used_bytes() > max_bytes:
                deleted += self._drop(min(self._days))
                dropped += 1
        if deleted:
            self._con.execute("CHECKPOINT")
        return RetentionResult(deleted, dropped)

    def _drop(self, day: str) -> int:
        self._days.discard(day)  # queries stop naming the day before its table goes
        rows = _count(self._con, f"sessions_{day}")
        self._con.execute(f"DROP TABLE sessions_{day}")
        self._forget_rollup(day)
        return rows

    def _forget_rollup(self, day: str) -> None:
        if day in self._rollups:
            self._con.execute(f"DROP TABLE IF EXISTS hosts_{day}")
            self._con.execute("DELETE FROM rollup_days WHERE day = ?", [day])
            del self._rollups[day]

    def _used_bytes(self) -> int:
        return int(_scalar(self._con, "SELECT used_blocks * block_size FROM pragma_database_size()") or 0)

    def stats(self) -> StoreStats:
        days = sorted(self._days)
        cursor = self._con.cursor()
        try:
            rows = sum(_count(cursor, f"sessions_{day}") for day in days)
            oldest = newest = None
            if days:
                oldest = _scalar(cursor, f"SELECT min(start_ms) FROM sessions_{days[0]}")
                newest = _scalar(cursor, f"SELECT max(end_ms) FROM sessions_{days[-1]}")
        finally:
            cursor.close()
        size = sum(os.path.getsize(file) for file in (self.path, Path(f"{self.path}.wal")) if file.exists())
        return StoreStats(rows, size, oldest, newest, len(days))

    def close(self) -> None:
        with self._write:
            self._flush()
            self._con.execute("CHECKPOINT")
            self._con.close()
