"""The embedded session store: DuckDB queries over the day-partitioned Parquet segments of
``segments.py`` (next to the DuckDB file, in ``<name>.segments/``), with the host rollups in
the DuckDB file.

- **Addresses** are 128-bit integers (UHUGEINT) to every query: fixed-size keys that compare,
  group and hash fast. Parquet has no such type, so files hold each address as two 64-bit
  halves, joined as the files are read; results turn them back into the 16-byte binary of the
  session schema; filters pass address bounds as UHUGEINT values.
- **Appends** are Arrow batches written without per-row Python; ``append`` queues them and
  ``flush`` writes everything queued at once (the server flushes every second, and whenever a
  million rows are queued), so a crash loses at most the unflushed second and never leaves a
  half-written flush.
- **Time partitioning**: a row goes to the directory of its end time's day; a query reads
  only the files whose time bounds (kept in their names) meet its frame, and within a file
  DuckDB's per-row-group min/max skip the rest (rows arrive in time order).
- **Retention** drops whole days, oldest first, and trims the oldest remaining day to the
  cutoff; by size, it drops the oldest days until the data fits.
- **Rollups**: once a UTC day is over, ``build_rollups`` sums it per host (bytes and packets
  sent and received) into ``hosts_YYYYMMDD`` in the DuckDB file; an unfiltered host traffic
  report then reads those sums for the whole days in its frame and raw rows only for the
  partial days at its edges. A day that receives late rows is rebuilt.
- **Earlier stores** kept sessions in DuckDB tables (``sessions_YYYYMMDD``); opening one
  moves each table into a segment file, once.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import structlog
from duckdb.value.constant import UnsignedHugeIntegerValue

from ..compiled import njit
from ..flows.schema import (
    SESSION_SCHEMA,
    SessionBatch,
    address_words,
    arrow_to_numpy,
    country_strings,
    numpy_to_arrow,
)
from ..query.filter import Node
from ..query.reports import (
    ENTITY_COLUMNS,
    Entity,
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
from .base import FlowStore, RetentionResult, SessionQueue, Stager, StoreStats, TimeRange
from .segments import Segment, SegmentFiles, StagedFile

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
ADDRESS_COLUMNS = [field.name for field in SESSION_SCHEMA if field.type == pa.binary(16)]
_LOW64 = "18446744073709551615::UHUGEINT"
# files hold each address as two 64-bit halves: the columns of the session schema from them
_FILE_SELECT = ", ".join(
    f"(({name}__hi::UHUGEINT) << 64) | {name}__lo AS {name}" if name in ADDRESS_COLUMNS else name
    for name in SESSION_SCHEMA.names
)


#: how segment files are written (pyarrow's options), chosen by measurement on the session
#: rows of bench/store_query.py against DuckDB's own tables (0.60 CPU-s per M rows appended,
#: 36 bytes a row): LZ4 pages, dictionaries only for the few-valued columns, deltas for the
#: time-ordered ones - 0.26 CPU-s per M, 31 bytes a row, scans 1.4-2.3x DuckDB's tables. (zstd
#: saves a third of the space for a fifth more CPU and slower scans; dictionaries on every
#: column cost 60 % more.)
_FEW_VALUED = [
    "protocol",
    "tcp_flags",
    "srv_port",
    "cln_country",
    "srv_country",
    "cln_asn",
    "srv_asn",
    "input_if",
    "output_if",
    "sampling_rate",
    "exporter_addr__hi",
    "exporter_addr__lo",
]
#: the many-valued integer columns: written byte stream split (each byte of the values in a
#: stream of its own, which LZ4 then packs: the high bytes of addresses, ports and counters
#: are mostly alike). Against plain LZ4 pages (bench/store_query.py, 20 M sessions, runs
#: in turn): 0.44-0.45 -> 0.30-0.39 CPU-s per M inserted, 34.1 -> 24.6 bytes a session, the
#: queries alike (at 100 M, those over everything 12-35 % slower in two runs, while DuckDB read
#: both encodings alike in process: docs/performance.md). (Parquet 2.11; DuckDB reads it for
#: integers since 2.0.)
_BYTE_STREAM_SPLIT = [
    "cln_addr__hi",
    "cln_addr__lo",
    "srv_addr__hi",
    "srv_addr__lo",
    "cln_port",
    "cln_bytes",
    "srv_bytes",
    "cln_pkts",
    "srv_pkts",
]
WRITE_OPTIONS: dict[str, object] = {
    "compression": "lz4",
    "use_dictionary": _FEW_VALUED,
    "column_encoding": {
        **{name: "DELTA_BINARY_PACKED" for name in ("session_id", "start_ms", "end_ms")},
        **{name: "BYTE_STREAM_SPLIT" for name in _BYTE_STREAM_SPLIT},
    },
    # no Arrow schema in the files: it would record the country columns' dictionary type
    # (``_CountryCodes``), and files read back (merges) would then not concatenate
    # with plain strings. Parquet's own types give the same columns back without it
    "store_schema": False,
}
COUNTRY_COLUMNS = [field.name for field in SESSION_SCHEMA if field.type == pa.string()]


@njit(cache=True, nogil=True)
def _mark_codes(codes: np.ndarray, marked: np.ndarray) -> None:
    """``marked[code] = True`` for every two-byte code (as a native uint16)."""
    for i in range(codes.shape[0]):
        marked[codes[i]] = True


@njit(cache=True, nogil=True)
def _code_indices(codes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``index[codes]``: numpy's gather took about 5 ns a row, this one pass about 1."""
    out = np.empty(codes.shape[0], np.int32)
    for i in range(codes.shape[0]):
        out[i] = index[codes[i]]
    return out


class _CountryCodes:
    """The country codes present in a flush's rows, for its country columns as dictionary
    indices. Parquet writes dictionary pages for these columns anyway; given indices into one
    dictionary, it does not hash every string for them (``stage_sessions`` of 500,000 rows in
    25 batches: 0.394-0.399 -> 0.337-0.347 CPU-s per M rows). One dictionary for the whole
    flush: a chunk whose dictionary differs from the one before makes the writer fall back to
    the strings (slower than before: 0.36 against 0.33, in a noisier run)."""

    def __init__(self, batches: list[SessionBatch]):
        # marked, not counted: a count per batch and column of 65,536 bins took 0.24 ms (its
        # half-MB result new memory each time), 30 ns a row in a worker's batches of 7,500
        marked = np.zeros(1 << 16, np.bool_)
        for batch in batches:
            for name in COUNTRY_COLUMNS:
                _mark_codes(self.words(batch[name]), marked)
        present = np.flatnonzero(marked)
        self.index = np.zeros(1 << 16, np.int32)
        self.index[present] = np.arange(len(present), dtype=np.int32)
        self.values = country_strings(present.astype(np.uint16).view("S2"))

    @staticmethod
    def words(codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, "S2").view(np.uint16)

    def column(self, codes: np.ndarray) -> pa.DictionaryArray:
        # safe=False: the indices come from ``index``, in range by construction; checking
        # them cost a pass over the rows
        return pa.DictionaryArray.from_arrays(
            numpy_to_arrow(_code_indices(self.words(codes), self.index)), self.values, safe=False
        )


def _file_table(batch: SessionBatch, countries: _CountryCodes | None = None) -> pa.Table:
    """A session batch as the Arrow table the store writes: addresses as (hi, lo) halves,
    countries as indices into ``countries`` (the batch's own codes if not given)."""
    countries = countries or _CountryCodes([batch])
    columns, names = [], []
    # column by column, not through ``to_arrow``: a record batch's columns looked up by name
    # cost microseconds each, for every batch of a flush
    for field in SESSION_SCHEMA:
        name = field.name
        if name in ADDRESS_COLUMNS:
            hi, lo = address_words(batch[name])
            columns += [numpy_to_arrow(hi), numpy_to_arrow(lo)]
            names += [f"{name}__hi", f"{name}__lo"]
        elif name in COUNTRY_COLUMNS:
            columns.append(countries.column(batch[name]))
            names.append(name)
        else:
            columns.append(numpy_to_arrow(batch[name], field.type))
            names.append(name)
    return pa.Table.from_arrays(columns, schema=_file_schema(tuple(names), tuple(column.type for column in columns)))


@functools.lru_cache(maxsize=8)
def _file_schema(names: tuple[str, ...], types: tuple[pa.DataType, ...]) -> pa.Schema:
    """The files' schema: every column required (a session row has no nulls), so the files
    hold no definition levels, whose encoding took a sixth of the writing. Made once, not for
    every batch of a flush."""
    return pa.schema([pa.field(name, type_, nullable=False) for name, type_ in zip(names, types, strict=True)])


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
            hi = arrow_to_numpy(table.column(name))
            words = np.empty((len(hi), 2), ">u8")  # big-endian: the address's bytes in order
            words[:, 0] = hi
            words[:, 1] = arrow_to_numpy(table.column(f"{base}__lo"))
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


def _day(ms: int) -> str:
    """The partition day of a time; times beyond what a calendar can name are clamped."""
    ms = min(max(ms, 0), _MAX_MS)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y%m%d")


def _day_start_ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp() * 1000)


def _day_parts(batches: list[SessionBatch]) -> dict[str, pa.Table]:
    """The rows of a flush as the store writes them, by the day of their end time."""
    batches = [b for b in batches if len(b)]
    if not batches:
        return {}
    # one chunk per batch: the writer takes chunks as they are, where concatenating first
    # copied every row once more (a tenth of the writer's time, in new memory)
    countries = _CountryCodes(batches)
    table = pa.concat_tables([_file_table(b, countries) for b in batches])
    # the day of each batch's first and last end time: dividing every row's took 5 ns a row
    ends = [(int(b["end_ms"].min()) // DAY_MS, int(b["end_ms"].max()) // DAY_MS) for b in batches]
    if len({day for pair in ends for day in pair}) == 1:
        return {_day(ends[0][0] * DAY_MS): table}
    day_of_row = np.concatenate([b["end_ms"] // DAY_MS for b in batches]).astype(np.int64, copy=False)
    days = np.unique(day_of_row)
    table = table.combine_chunks()  # rows across midnight: rare, and filtered by one mask
    return {_day(day * DAY_MS): table.filter(numpy_to_arrow(day_of_row == day)) for day in days.tolist()}


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops that shape a flush's rows now, at
    start, rather than at the first flush, where a compilation holds the interpreter's lock
    for a second while datagrams wait (session workers stage their files the same way)."""
    _day_parts([SessionBatch.build(1)])


def stage_sessions(batches: list[SessionBatch], directory: Path, name: str) -> list[StagedFile]:
    """Write session rows as the files of one flush into ``directory`` (the store's staging
    area), named after ``name``, for ``DuckDBStore.adopt``: a session worker encodes its own
    rows, so that the server's one process does not encode everyone's."""
    return [
        StagedFile.write(day, part, directory / f"{name}.{day}.parquet", WRITE_OPTIONS)
        for day, part in _day_parts(batches).items()
    ]


class DuckDBStore(FlowStore):
    def __init__(self, path: Path | str, flush_rows: int = 1_000_000, threads: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.files = SegmentFiles(self.path.with_name(self.path.name + ".segments"), WRITE_OPTIONS)
        warm_up()
        self._con = duckdb.connect(str(self.path))
        # DuckDB counts the machine's cores; a server confined to fewer (taskset, cgroup
        # cpuset) would have its threads fight over them
        self._con.execute(f"SET threads = {int(threads or len(os.sched_getaffinity(0)))}")
        self._con.execute("SET parquet_metadata_cache = true")  # files never change once written
        self._write = threading.Lock()  # writing: flush, retention, compaction, rollups, close
        self.queue = SessionQueue(flush_rows)
        self.write_errors = 0
        self._migrate_tables()
        self._con.execute("CREATE TABLE IF NOT EXISTS rollup_days (day VARCHAR PRIMARY KEY, source_rows BIGINT)")
        #: day -> raw rows the day's host rollup was built from
        self._rollups: dict[str, int] = dict(self._con.execute("SELECT day, source_rows FROM rollup_days").fetchall())

    @property
    def _days(self) -> set[str]:
        return set(self.files.days())

    def _migrate_tables(self) -> None:
        """Move the day tables of an earlier store into segment files (each day once: a crash
        between writing a day's file and dropping its table redoes that day's file)."""
        rows = self._con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
        columns = ", ".join(_address_out(n) if n in ADDRESS_COLUMNS else n for n in SESSION_SCHEMA.names)
        for day in sorted(m.group(1) for (name,) in rows if (m := _PARTITION.match(name))):
            tmp = self.files.root / f"migrate-{day}.parquet.tmp"
            tmp.unlink(missing_ok=True)  # from a migration cut short
            path = str(tmp).replace("'", "''")
            self._con.execute(
                f"COPY (SELECT {columns} FROM sessions_{day}) TO '{path}' (FORMAT parquet, COMPRESSION zstd)"
            )
            self.files.adopt(day, tmp)
            self._con.execute(f"DROP TABLE sessions_{day}")
            self._con.execute("CHECKPOINT")
            log.info("moved a day of sessions into a segment file", day=day)

    # -- writing ---------------------------------------------------------------------------

    def append(self, sessions: SessionBatch) -> None:
        """Queue rows for the next flush (``SessionQueue``)."""
        self.queue.add(sessions, self.flush, self.on_full)

    def flush(self) -> int:
        with self._write:
            return self._flush()

    def _flush(self) -> int:
        batches = self.queue.take()
        if not batches:
            return 0
        parts = _day_parts(batches)
        return self._keep(parts, sum(part.num_rows for part in parts.values()), lambda: self.files.write(parts))

    def _keep(self, days: Iterable[str], rows: int, write: Callable[[], None]) -> int:
        """Make a flush of ``rows`` in ``days`` durable by ``write`` (all of it, or on an
        error, counted, nothing); returns the rows kept. Called with the writing lock held."""
        for day in days:
            self._forget_rollup(day)  # late rows: the day's sums must be rebuilt (before they show)
        try:
            write()
        except OSError as exc:  # e.g. disk full: nothing of this flush is kept
            self.write_errors += 1
            log.error("could not store sessions; batch dropped", rows=rows, error=str(exc))
            return 0
        return rows

    def staging(self) -> Stager:
        return Stager(stage_sessions, self.files.staging, max(1, self.queue.flush_rows))

    def adopt(self, files: list[StagedFile]) -> int:
        with self._write:
            rows = sum(file.rows for file in files)
            return self._keep({file.day for file in files}, rows, lambda: self.files.adopt_staged(files))

    # -- reading ---------------------------------------------------------------------------

    def _source(
        self, snapshot: dict[str, list[Segment]], start_ms: int, end_ms: int, exclude: frozenset[str] = frozenset()
    ) -> str:
        """The files of ``snapshot`` a time frame can touch (less the days in ``exclude``), as
        one table expression with the session schema's columns."""
        first, last = _day(start_ms), _day(min(end_ms, _MAX_MS) + DAY_MS)  # rows end up to a day after they start
        paths = [
            self.files.path(segment)
            for day in sorted(snapshot)
            if first <= day <= last and day not in exclude
            for segment in snapshot[day]
            if segment.overlaps(start_ms, end_ms)
        ]
        return self._files_source(paths)

    def _files_source(self, paths: list[Path]) -> str:
        if not paths:
            return self._empty_source()
        files = ", ".join("'" + str(path).replace("'", "''") + "'" for path in paths)
        return f"(SELECT {_FILE_SELECT} FROM read_parquet([{files}])) AS sessions"

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
        cond, params = frame_condition(where, time_range.start_ms, time_range.end_ms)
        with self.files.reading() as snapshot:
            source = self._source(snapshot, time_range.start_ms, time_range.end_ms)
            table = self._query(
                f"SELECT * FROM {source} WHERE {cond} ORDER BY end_ms DESC LIMIT {int(limit)}",
                params,
                tuple(ADDRESS_COLUMNS),
            )
        return table.select(SESSION_SCHEMA.names).cast(SESSION_SCHEMA)

    def report(self, spec: ReportSpec, use_rollups: bool = True) -> pa.Table:
        if use_rollups and rollups_answer(spec):
            rolled = self._rolled_days(spec.start_ms, spec.end_ms)
            if rolled:
                with self.files.reading() as snapshot:
                    sql, params = self._rollup_report_sql(snapshot, spec, rolled)
                    return self._ordered(self._query(sql, params, ("address",)), spec)
        with self.files.reading() as snapshot:
            sql, params = report_sql(spec, self._source(snapshot, spec.start_ms, spec.end_ms))
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

    def _rollup_report_sql(
        self, snapshot: dict[str, list[Segment]], spec: ReportSpec, rolled: list[str]
    ) -> tuple[str, list[object]]:
        """Host traffic from the rollups of whole days, plus raw rows for the other days."""
        value = rollup_sum(spec)
        parts = [f"SELECT host AS e0, {value} AS v FROM hosts_{day} GROUP BY host" for day in rolled]
        edge_parts, params = endpoint_sum_parts(
            spec, self._source(snapshot, spec.start_ms, spec.end_ms, frozenset(rolled))
        )
        return merge_sums(parts + edge_parts, "address", spec.top), params

    def maintain(self, now_ms: int) -> None:
        """Merge small files, and sum finished days per host. (Merging runs beside flushes,
        which only add files; retention runs on the same thread as this.)"""
        self.files.compact(_day(now_ms))
        self.build_rollups(now_ms)

    def build_rollups(self, now_ms: int) -> int:
        """Sum every finished day (before ``now_ms``'s) per host, where not yet done or stale.
        Returns the days built."""
        today = _day(now_ms)
        built = 0
        with self._write, self.files.reading() as snapshot:
            for day in sorted(snapshot):
                if day >= today:
                    continue
                rows = sum(segment.rows for segment in snapshot[day])
                if self._rollups.get(day) == rows:
                    continue
                source = self._files_source([self.files.path(segment) for segment in snapshot[day]])
                con = self._con
                con.execute("BEGIN TRANSACTION")
                con.execute(f"DROP TABLE IF EXISTS hosts_{day}")
                con.execute(f"CREATE TABLE hosts_{day} ({_ROLLUP_COLUMNS})")
                con.execute(f"""INSERT INTO hosts_{day}
                    SELECT host, sum(sb), sum(rb), sum(sp), sum(rp) FROM (
                        SELECT cln_addr AS host, sum(cln_bytes) AS sb, sum(srv_bytes) AS rb, sum(cln_pkts) AS sp,
                               sum(srv_pkts) AS rp FROM {source} GROUP BY cln_addr
                        UNION ALL
                        SELECT srv_addr, sum(srv_bytes), sum(cln_bytes), sum(srv_pkts), sum(cln_pkts)
                        FROM {source} GROUP BY srv_addr) GROUP BY host""")
                con.execute("INSERT OR REPLACE INTO rollup_days VALUES (?, ?)", [day, rows])
                con.execute("COMMIT")
                self._rollups[day] = rows
                built += 1
        return built

    def timeseries(self, spec: SeriesSpec) -> pa.Table:
        with self.files.reading() as snapshot:
            sql, params = series_sql(spec, self._source(snapshot, spec.start_ms, spec.end_ms))
            return self._query(sql, params)

    # -- housekeeping ----------------------------------------------------------------------

    def retain(self, now_ms: int, max_age_s: float | None = None, max_bytes: int | None = None) -> RetentionResult:
        with self._write:
            return self._retain(now_ms, max_age_s, max_bytes)

    def _retain(self, now_ms: int, max_age_s: float | None, max_bytes: int | None) -> RetentionResult:
        deleted = dropped = 0
        if max_age_s is not None:
            cutoff = now_ms - int(max_age_s * 1000)
            for day in self.files.days():
                if _day_start_ms(day) + DAY_MS <= cutoff:  # the whole day is older
                    deleted += self._drop(day)
                    dropped += 1
                elif _day_start_ms(day) < cutoff:
                    trimmed = self.files.trim(day, cutoff)
                    if trimmed:
                        deleted += trimmed
                        self._forget_rollup(day)
        if max_bytes is not None:
            while len(days := self.files.days()) > 1 and self._used_bytes() > max_bytes:
                deleted += self._drop(days[0])
                dropped += 1
        return RetentionResult(deleted, dropped)

    def _drop(self, day: str) -> int:
        rows = self.files.drop_day(day)
        self._forget_rollup(day)
        return rows

    def _forget_rollup(self, day: str) -> None:
        if day in self._rollups:
            self._con.execute(f"DROP TABLE IF EXISTS hosts_{day}")
            self._con.execute("DELETE FROM rollup_days WHERE day = ?", [day])
            del self._rollups[day]

    def _used_bytes(self) -> int:
        database = sum(os.path.getsize(file) for file in (self.path, Path(f"{self.path}.wal")) if file.exists())
        return self.files.size() + database

    def gauges(self) -> dict[str, float]:
        return {"overflow_flushes_total": self.queue.overflow_flushes}

    def stats(self) -> StoreStats:
        with self.files.reading() as snapshot:
            days = sorted(snapshot)
            rows = sum(segment.rows for segments in snapshot.values() for segment in segments)
            oldest = min(segment.min_start for segment in snapshot[days[0]]) if days else None
            newest = max(segment.max_end for segment in snapshot[days[-1]]) if days else None
        return StoreStats(rows, self._used_bytes(), oldest, newest, len(days))

    def close(self) -> None:
        with self._write:
            self._flush()
            self._con.execute("CHECKPOINT")
            self._con.close()
