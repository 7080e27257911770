"""The session store's Parquet segment files: what a crash can leave behind is found and
put right at open, small files are merged without changing an answer, files a query is
reading stay until it ends, and a store of the earlier layout (DuckDB day tables) moves in."""

import shutil
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.query.reports import Direction, Entity, Metric, ReportSpec
from sluice.store.base import TimeRange
from sluice.store.duckdb_store import ADDRESS_COLUMNS, DAY_MS, DuckDBStore, _file_table
from sluice.store.segments import MERGE_FILES, SegmentFiles
from tests.unit.test_store import T0, random_sessions

EVERYTHING = TimeRange(0, T0 + 400 * DAY_MS)


def answers(store: DuckDBStore) -> tuple:
    """Everything a user could see, in a comparable form."""
    rows = store.sessions(EVERYTHING, limit=10**6).sort_by(
        [("session_id", "ascending"), ("end_ms", "ascending"), ("cln_bytes", "ascending")]
    )
    report = store.report(
        ReportSpec(Entity.HOST, Metric.BYTES, Direction.EITHER, 0, T0 + 400 * DAY_MS, top=100), use_rollups=False
    )
    return rows.to_pylist(), report.to_pylist(), store.stats().rows


def one_day(n: int, seed: int) -> object:
    return random_sessions(n, seed, start_ms=T0 + 3_600_000, span_ms=3_600_000)


def test_small_files_are_merged_and_every_answer_stays_the_same(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    for i in range(MERGE_FILES + 3):  # a quiet exporter: a small flush a second
        store.append(one_day(50, i))
        store.flush()
    (day,) = store.files.days()
    assert len(store.files.segments(day)) == MERGE_FILES + 3
    before = answers(store)
    store.maintain(now_ms=T0 + 3_600_000)  # the day is today: runs of MERGE_FILES are merged
    segments = store.files.segments(day)
    assert len(segments) == 1 and segments[0].rows == (MERGE_FILES + 3) * 50
    assert answers(store) == before
    files_on_disk = sorted(p.name for p in (store.files.root / day).iterdir())
    assert files_on_disk == [segments[0].name], "the merged inputs are gone from disk"
    store.close()
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    assert answers(reopened) == before
    reopened.close()



def test_files_of_optional_columns_merge_with_files_of_required_ones(tmp_path):
    """Files are written with every column required; files written before hold the same
    columns as optional. A day with both is read, merged and answered as one."""
    store = DuckDBStore(tmp_path / "s.duckdb")
    old = _file_table(one_day(60, 1))
    old = old.cast(pa.schema([field.with_nullable(True) for field in old.schema]))  # as files were written
    (day,) = {datetime.fromtimestamp(int(e) / 1000, UTC).strftime("%Y%m%d") for e in old.column("end_ms").to_pylist()}
    store.files.write({day: old})
    for i in range(MERGE_FILES + 1):
        store.append(one_day(50, 2 + i))
        store.flush()
    segments = store.files.segments(day)
    schemas = {pq.read_schema(store.files.path(s)).field("end_ms").nullable for s in segments}
    assert schemas == {True, False}
    before = answers(store)
    assert before[2] == 60 + (MERGE_FILES + 1) * 50
    store.maintain(now_ms=T0 + 3_600_000)
    assert len(store.files.segments(day)) < len(segments)  # merged
    assert answers(store) == before
    store.close()

def test_country_columns_are_written_as_indices_into_one_dictionary_a_flush_and_read_back_as_codes(tmp_path):
    """A flush's batches each hold other countries (the empty code among them; one only in
    the last batch): the file's country columns are dictionary-encoded throughout (a batch
    with a dictionary of its own made the writer fall back to plain strings, several bytes a
    row), and come back as the codes that went in; so do those of a flush across midnight."""
    from sluice.flows.schema import SessionBatch
    from sluice.store.duckdb_store import COUNTRY_COLUMNS

    store = DuckDBStore(tmp_path / "s.duckdb")
    rng = np.random.default_rng(5)
    codes = np.array([b"US", b"DE", b"", b"A1", b"FR"], "S2")
    midnight = (T0 // DAY_MS + 1) * DAY_MS

    def batch(i: int, start_ms: int, span_ms: int) -> SessionBatch:
        out = random_sessions(3000, 10 + i, start_ms=start_ms, span_ms=span_ms)
        out.columns["session_id"][:] = np.arange(i * 3000, (i + 1) * 3000)
        for name in COUNTRY_COLUMNS:  # 2, 3, 4, then all 5 codes
            out.columns[name][:] = codes[rng.integers(0, 2 + i % 4, len(out))]
        return out

    one_hour = [batch(i, T0, 3_600_000) for i in range(4)]
    for b in one_hour:
        store.append(b)
    store.flush()
    (day,) = store.files.days()
    (segment,) = store.files.segments(day)
    meta = pq.ParquetFile(store.files.path(segment)).metadata
    names = pq.read_schema(store.files.path(segment)).names
    for name in COUNTRY_COLUMNS:
        for g in range(meta.num_row_groups):
            chunk = meta.row_group(g).column(names.index(name))
            assert chunk.has_dictionary_page and chunk.total_uncompressed_size < 2 * meta.row_group(g).num_rows, name
    across = [batch(i, midnight - 2_000_000, 4_000_000) for i in range(4, 6)]
    for b in across:
        store.append(b)
    store.flush()
    assert len(store.files.days()) == 2 and len(store.files.segments(day)) == 2  # split at midnight
    written = SessionBatch.concat(one_hour + across)
    got = store.sessions(EVERYTHING, limit=10**6).to_pylist()
    assert {pq.read_schema(store.files.path(s)).field("cln_country").type for d in store.files.days()
            for s in store.files.segments(d)} == {pa.string()}
    by_id = {int(r["session_id"]): (r["cln_country"], r["srv_country"]) for r in got}
    as_text = written.to_arrow()  # the strings the codes always were
    want = {int(i): (c, s) for i, c, s in zip(written["session_id"], as_text.column("cln_country").to_pylist(),
                                              as_text.column("srv_country").to_pylist(), strict=True)}
    assert by_id == want and len(want) == 18_000
    store.close()


def test_a_merge_cut_short_leaves_no_duplicate(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    for i in range(3):
        store.append(one_day(40, i))
        store.flush()
    before = answers(store)
    (day,) = store.files.days()
    saved = tmp_path / "saved"
    shutil.copytree(store.files.root / day, saved)
    store.maintain(now_ms=T0 + 5 * DAY_MS)  # an old day: any run of two small files is merged
    assert len(store.files.segments(day)) == 1
    store.close()
    # the crash: the merged file was renamed in, its inputs not yet removed
    for file in saved.iterdir():
        shutil.copy(file, store.files.root / day / file.name)
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    assert len(reopened.files.segments(day)) == 1
    assert answers(reopened) == before
    reopened.close()


def test_a_flush_cut_short_is_removed_whole(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    store.append(random_sessions(300, 1))  # three days: three files
    store.flush()
    before = answers(store)
    day = store.files.days()[0]
    last = store.files.segments(day)[-1]
    store.close()
    # the crash: a later flush's file renamed in but the flush never committed, and a half-written one
    uncommitted = last.__class__(
        day, last.first + 1, last.last + 1, 0, *[getattr(last, f) for f in ("rows", "min_start", "min_end", "max_end")]
    )
    shutil.copy(store.files.root / day / last.name, store.files.root / day / uncommitted.name)
    (store.files.root / day / "junk.parquet.tmp").write_bytes(b"half")
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    assert answers(reopened) == before
    assert sorted(p.name for p in (reopened.files.root / day).iterdir()) == [last.name]
    # and the next flush does not reuse the number of the one cut short
    reopened.append(one_day(10, 7))
    assert reopened.flush() == 10
    assert reopened.stats().rows == before[2] + 10
    reopened.close()


def test_a_rewrite_cut_short_keeps_the_newer_generation(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    store.append(one_day(500, 3))
    store.flush()
    (day,) = store.files.days()
    (original,) = store.files.segments(day)
    kept = tmp_path / "original.parquet"
    shutil.copy(store.files.root / day / original.name, kept)
    cutoff = (original.min_end + original.max_end) // 2
    deleted = store.files.trim(day, cutoff)
    assert 0 < deleted < 500
    after = answers(store)
    store.close()
    shutil.copy(kept, store.files.root / day / original.name)  # the crash: the old file not yet removed
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    (segment,) = reopened.files.segments(day)
    assert segment.gen == 1 and segment.rows == 500 - deleted and answers(reopened) == after
    reopened.close()


def test_files_a_query_is_reading_stay_until_it_ends(tmp_path):
    files = SegmentFiles(tmp_path / "segments")
    store_rows = _file_table(one_day(20, 1))
    files.write({"20231115": store_rows})
    with files.reading() as snapshot:
        (segment,) = snapshot["20231115"]
        assert files.drop_day("20231115") == 20
        assert files.days() == [] and files.path(segment).exists(), "still being read"
    assert not files.path(segment).exists()


def test_a_store_of_the_earlier_layout_moves_into_files_once(tmp_path):
    batch = random_sessions(900, 5)
    path = tmp_path / "old.duckdb"
    incoming = _file_table(batch)
    day_of_row = batch["end_ms"] // DAY_MS
    days = {datetime.fromtimestamp(n * 86400, UTC).strftime("%Y%m%d"): n for n in sorted(set(day_of_row.tolist()))}

    def old_day_table(con, day: str) -> None:  # how the earlier store kept a day: UHUGEINT addresses
        columns = ", ".join(
            f"{f.name} {_DUCK[f.type] if f.name not in ADDRESS_COLUMNS else 'UHUGEINT'} NOT NULL"
            for f in batch.to_arrow().schema
        )
        select = ", ".join(
            f"(({n}__hi::UHUGEINT) << 64) | {n}__lo" if n in ADDRESS_COLUMNS else n for n in batch.COLUMNS
        )
        part = incoming.filter(np.asarray(day_of_row == days[day]))  # noqa: F841  (read by DuckDB)
        con.execute(f"CREATE TABLE sessions_{day} ({columns})")
        con.execute(f"INSERT INTO sessions_{day} SELECT {select} FROM part")

    con = duckdb.connect(str(path))
    for day in days:
        old_day_table(con, day)
    con.close()
    fresh = DuckDBStore(tmp_path / "fresh.duckdb")
    fresh.append(batch)
    fresh.flush()
    want = answers(fresh)
    fresh.close()

    store = DuckDBStore(path)
    assert answers(store) == want and store.files.days() == sorted(days)
    store.close()
    con = duckdb.connect(str(path))
    assert not con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'sessions_%'").fetchall()
    # a crash after a day's file was written but before its table was dropped: done again, once
    old_day_table(con, min(days))
    con.close()
    again = DuckDBStore(path)
    assert answers(again) == want
    again.close()


_DUCK = {
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.int64(): "BIGINT",
    pa.string(): "VARCHAR",
}


def test_a_damaged_commit_record_keeps_every_file(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    store.append(random_sessions(200, 2))
    store.flush()
    before = answers(store)
    store.close()
    (store.files.root / "committed").write_text("garbage\n")
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    assert answers(reopened) == before
    reopened.append(one_day(5, 1))
    assert reopened.flush() == 5 and reopened.stats().rows == before[2] + 5
    reopened.close()


def test_files_a_worker_wrote_are_adopted_as_one_flush_with_the_same_answers(tmp_path):
    """Session workers write their own rows' files into the staging area; the server adopts
    them. The answers are those of the same rows appended and flushed by the store itself."""
    rows = [one_day(300, 1), random_sessions(200, 2, start_ms=T0 + DAY_MS - 60_000, span_ms=120_000)]  # two days
    appended = DuckDBStore(tmp_path / "a.duckdb")
    for batch in rows:
        appended.append(batch)
    appended.flush()
    staged = DuckDBStore(tmp_path / "s.duckdb")
    stager = staged.staging()
    files = stager.write(rows, stager.directory, "w0-1-1")
    assert len(files) == 2 and sorted(f.day for f in files) == sorted(staged._days | appended._days)
    assert staged.stats().rows == 0  # written, not yet stored
    assert staged.adopt(files) == 500
    assert answers(staged) == answers(appended)
    assert not list(stager.directory.iterdir())  # moved into place
    staged.close()
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    assert answers(reopened) == answers(appended)


def test_staged_files_never_adopted_are_removed_at_open(tmp_path):
    """A crash between a worker's write and the server's adoption: those rows are lost like
    an unflushed second, and their files do not linger or show."""
    store = DuckDBStore(tmp_path / "s.duckdb")
    stager = store.staging()
    stager.write([one_day(100, 3)], stager.directory, "w1-1-1")
    store.close()
    reopened = DuckDBStore(tmp_path / "s.duckdb")
    assert reopened.stats().rows == 0
    assert not list(reopened.staging().directory.iterdir())


def test_a_worker_whose_files_cannot_be_written_counts_it_and_goes_on(tmp_path):
    from dataclasses import replace

    from sluice.flows.shards import _OwnFiles

    store = DuckDBStore(tmp_path / "s.duckdb")
    files = _OwnFiles(replace(store.staging(), directory=tmp_path / "no-such-directory"), 0, 2)
    files.add(one_day(100, 4))
    assert files.flush() == [] and files.write_errors == 1  # the rows are lost, and counted
    files.stager = store.staging()
    files.add(one_day(100, 5))
    assert store.adopt(files.flush()) == 100 and files.write_errors == 1
