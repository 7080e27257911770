"""Session rows on disk: immutable Parquet files ("segments"), one directory per UTC day.

Why files and not DuckDB's own tables: appending to DuckDB's table format costs about 0.6
CPU-s per million session rows (it tries several codecs on every column of every row group)
where pyarrow writes the same rows as Parquet for less than half of that, in less space;
DuckDB queries the files directly, and a file can be written by any process.

- **A flush** writes one file per day its rows touch, each as ``.tmp`` then renamed; the
  files of one flush share a sequence number, which is recorded in ``committed`` once they
  are all in place. At open, files of a later number (a flush cut short by a crash) are
  removed: a flush is all or nothing.
- **File names** carry what a query needs to skip a file without opening it:
  ``first.last.gen.rows.min_start.min_end.max_end.parquet`` - the range of flush sequence
  numbers the file holds, a generation (bumped when retention rewrites the file), rows, and
  the least start, least end and greatest end time of its rows.
- **Compaction** merges runs of small files of a day (a quiet exporter's once-a-second
  flushes) into one, which covers its inputs' sequence range. At open, a file whose range
  another file of its day covers is the leftover of a merge cut short, and goes.
- **Readers** take a snapshot of the index; files leave the index at once but are unlinked
  only when no query is reading.
- **Staged files**: session workers write their rows' files themselves into ``.staging``
  (Parquet encoding is most of a flush's work) and the server adopts them as one flush; at
  open, staged files never adopted (a crash) are removed, like an unflushed second.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

log = structlog.get_logger(__name__)

#: rows per Parquet row group: the unit DuckDB skips by min/max and scans in parallel
ROW_GROUP = 131_072
#: a file under this many rows is "small": compaction merges runs of them. (Above it, a
#: second's flush is worth its own file: merging would write every row twice at the rates
#: where that costs the most.)
SMALL_ROWS = 100_000
#: a run of small files is merged once it has this many (the newest day's; older days: 2)
MERGE_FILES = 16
#: compaction stops adding files to a merge at this many rows
MERGED_ROWS = 2_000_000
#: the sequence number of files migrated from an older store layout (one per day)
MIGRATED_SEQ = 0
#: where session workers write the files the server then adopts
STAGING = ".staging"


@dataclass(frozen=True)
class Segment:
    """One Parquet file of a day's session rows, described by its name."""

    day: str
    first: int
    last: int
    gen: int
    rows: int
    min_start: int
    min_end: int
    max_end: int
    size: int = 0

    @property
    def name(self) -> str:
        fields = (self.first, self.last, self.gen, self.rows, self.min_start, self.min_end, self.max_end)
        return ".".join(str(f) for f in fields) + ".parquet"

    @classmethod
    def parse(cls, day: str, name: str, size: int) -> Segment | None:
        parts = name.removesuffix(".parquet").split(".")
        if not name.endswith(".parquet") or len(parts) != 7:
            return None
        try:
            first, last, gen, rows, min_start, min_end, max_end = (int(p) for p in parts)
        except ValueError:
            return None
        return cls(day, first, last, gen, rows, min_start, min_end, max_end, size)

    def covers(self, other: Segment) -> bool:
        """This file holds every row ``other`` holds (a merge's output, or a newer rewrite)."""
        if (self.first, self.last) == (other.first, other.last):
            return self.gen > other.gen
        return self.first <= other.first and other.last <= self.last

    def overlaps(self, start_ms: int, end_ms: int) -> bool:
        """Could a row of this file overlap [start_ms, end_ms)? (A row ends at or after it starts.)"""
        return self.max_end >= start_ms and self.min_start < end_ms


def _write_parquet(table: pa.Table, path: Path, options: dict[str, object]) -> int:
    """Write ``table`` to ``path`` durably with pyarrow's writer ``options``; returns its size.
    A write that fails leaves no file behind."""
    try:
        pq.write_table(table, str(path), row_group_size=ROW_GROUP, **options)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path.stat().st_size
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class StagedFile:
    """A finished file of one day's session rows, written outside the store, to adopt."""

    day: str
    path: str
    rows: int
    min_start: int
    min_end: int
    max_end: int
    size: int

    @classmethod
    def write(cls, day: str, table: pa.Table, path: Path, options: dict[str, object]) -> StagedFile:
        size = _write_parquet(table, path, options)
        return cls(day, str(path), table.num_rows, *_time_bounds(table), size)


def _time_bounds(table: pa.Table) -> tuple[int, int, int]:
    # Arrow's own kernels: a column's ``to_numpy`` would import pandas into a session worker
    start, end = pc.min_max(table.column("start_ms")), pc.min_max(table.column("end_ms"))
    return int(start["min"].as_py()), int(end["min"].as_py()), int(end["max"].as_py())


class SegmentFiles:
    """The segment files under ``root`` and their index (day -> segments in sequence order)."""

    def __init__(self, root: Path, write_options: dict[str, object] | None = None):
        self.root = root
        self.write_options = write_options or {}
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the index, the readers and the files waiting to go
        self._index: dict[str, list[Segment]] = {}
        self._readers = 0
        self._doomed: list[Path] = []
        self._committed = self._read_committed()
        self._recover()
        self.staging = root / STAGING
        shutil.rmtree(self.staging, ignore_errors=True)  # staged and never adopted: a crash
        self.staging.mkdir()
        if self._committed == 2**62:
            self._committed = max((s.last for segments in self._index.values() for s in segments), default=0)
        self._next_seq = self._committed + 1

    # -- opening ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Index what is on disk; remove what a crash left half done."""
        found: dict[str, list[Segment]] = {}
        for day_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit()):
            for file in day_dir.iterdir():
                if file.name.endswith(".tmp"):  # a write cut short
                    file.unlink(missing_ok=True)
                    continue
                segment = Segment.parse(day_dir.name, file.name, file.stat().st_size)
                if segment is None:
                    log.warning("not a session segment; left alone", file=str(file))
                    continue
                found.setdefault(day_dir.name, []).append(segment)
        # a merge or a rewrite cut short: its inputs are still there beside its output
        for day, segments in found.items():
            kept = [s for s in segments if not any(o is not s and o.covers(s) for o in segments)]
            for gone in set(segments) - set(kept):
                (self.root / day / gone.name).unlink(missing_ok=True)
            found[day] = sorted(kept, key=lambda s: s.first)
        # a flush cut short: its files bear a number past the last one committed
        for day, segments in found.items():
            for s in [s for s in segments if s.last > self._committed]:
                log.warning("removing a file of a flush cut short", file=s.name, day=day)
                (self.root / day / s.name).unlink(missing_ok=True)
                segments.remove(s)
        self._index = {day: segments for day, segments in found.items() if segments}

    def _read_committed(self) -> int:
        try:
            text = (self.root / "committed").read_text().strip()
        except FileNotFoundError:
            return MIGRATED_SEQ
        try:
            return int(text)
        except ValueError:  # damaged by hand or by the disk: keep every file rather than guess
            log.error("the store's committed file is damaged; keeping every segment file", content=text[:40])
            return 2**62

    def _commit(self, seq: int) -> None:
        tmp = self.root / "committed.tmp"
        with open(tmp, "w") as file:
            file.write(f"{seq}\n")
            file.flush()
            os.fsync(file.fileno())
        tmp.rename(self.root / "committed")
        self._committed = seq

    # -- reading ---------------------------------------------------------------------------

    def days(self) -> list[str]:
        with self._lock:
            return sorted(self._index)

    def segments(self, day: str) -> list[Segment]:
        with self._lock:
            return list(self._index.get(day, ()))

    def path(self, segment: Segment) -> Path:
        return self.root / segment.day / segment.name

    @contextmanager
    def reading(self) -> Iterator[dict[str, list[Segment]]]:
        """A snapshot of the index whose files stay on disk until the block ends."""
        with self._lock:
            self._readers += 1
            snapshot = {day: list(segments) for day, segments in self._index.items()}
        try:
            yield snapshot
        finally:
            with self._lock:
                self._readers -= 1
                self._unlink_doomed()

    def size(self) -> int:
        with self._lock:
            return sum(s.size for segments in self._index.values() for s in segments)

    # -- writing ---------------------------------------------------------------------------

    def write(self, parts: dict[str, pa.Table]) -> None:
        """Write one flush: a table per day. All of it becomes visible at once, or none."""
        seq = self._next_seq
        self._next_seq += 1
        written: list[tuple[Path, Segment]] = []
        try:
            for day, table in parts.items():
                (self.root / day).mkdir(exist_ok=True)
                written.append(self._write_tmp(Segment(day, seq, seq, 0, table.num_rows, *_time_bounds(table)), table))
        except BaseException:
            for tmp, _ in written:
                tmp.unlink(missing_ok=True)
            raise
        self._place(seq, written)

    def adopt_staged(self, files: list[StagedFile]) -> None:
        """Take in files written into ``staging`` (by a session worker) as one flush."""
        seq = self._next_seq
        self._next_seq += 1
        placed = []
        for file in files:
            (self.root / file.day).mkdir(exist_ok=True)
            rows, bounds = file.rows, (file.min_start, file.min_end, file.max_end)
            placed.append((Path(file.path), Segment(file.day, seq, seq, 0, rows, *bounds, file.size)))
        self._place(seq, placed)

    def _place(self, seq: int, written: list[tuple[Path, Segment]]) -> None:
        """Move a flush's finished files into place and commit it: all of it or nothing."""
        try:
            for tmp, segment in written:
                tmp.rename(self.path(segment))
            self._commit(seq)
        except BaseException:
            for tmp, segment in written:
                tmp.unlink(missing_ok=True)
                self.path(segment).unlink(missing_ok=True)
            raise
        with self._lock:
            for _, segment in written:
                self._index.setdefault(segment.day, []).append(segment)

    def adopt(self, day: str, source: Path) -> None:
        """Take in a finished file (a migrated day) as the day's first segment, replacing any
        earlier copy."""
        rows = pq.ParquetFile(source).metadata.num_rows
        bounds = _time_bounds(pq.read_table(source, columns=["start_ms", "end_ms"])) if rows else (0, 0, 0)
        segment = Segment(day, MIGRATED_SEQ, MIGRATED_SEQ, 0, rows, *bounds, source.stat().st_size)
        (self.root / day).mkdir(exist_ok=True)
        source.rename(self.path(segment))
        with self._lock:
            kept = [s for s in self._index.get(day, []) if s.first != MIGRATED_SEQ]
            self._index[day] = sorted([segment, *kept], key=lambda s: s.first)

    # -- rewriting -------------------------------------------------------------------------

    def _swap(self, day: str, old: list[Segment], new: Segment | None) -> None:
        with self._lock:
            segments = [s for s in self._index.get(day, []) if s not in old]
            if new is not None:
                segments = sorted([*segments, new], key=lambda s: s.first)
            if segments:
                self._index[day] = segments
            else:
                self._index.pop(day, None)
            self._doomed += [self.path(s) for s in old]
            self._unlink_doomed()

    def _unlink_doomed(self) -> None:  # with self._lock held
        if self._readers == 0:
            for path in self._doomed:
                with suppress(FileNotFoundError):
                    path.unlink()
            self._doomed = []

    def drop_day(self, day: str) -> int:
        """Remove a whole day; returns its rows."""
        segments = self.segments(day)
        self._swap(day, segments, None)
        return sum(s.rows for s in segments)

    def trim(self, day: str, cutoff_ms: int) -> int:
        """Remove the day's rows that end before ``cutoff_ms``; returns how many went."""
        deleted = 0
        for segment in self.segments(day):
            if segment.min_end >= cutoff_ms:
                continue
            if segment.max_end < cutoff_ms:
                self._swap(day, [segment], None)
                deleted += segment.rows
                continue
            table = pq.read_table(self.path(segment))
            kept = table.filter(pc.greater_equal(table.column("end_ms"), pa.scalar(cutoff_ms, pa.int64())))
            min_start, min_end, max_end = _time_bounds(kept)  # at least one row is kept (max_end >= cutoff)
            newer = replace(
                segment, gen=segment.gen + 1, rows=kept.num_rows, min_start=min_start, min_end=min_end, max_end=max_end
            )
            newer = self._rewrite(newer, kept)
            self._swap(day, [segment], newer)
            deleted += segment.rows - kept.num_rows
        return deleted

    def compact(self, today: str) -> int:
        """Merge runs of small files, at most one run per day per call; returns files merged."""
        merged = 0
        for day in self.days():
            run = self._small_run(self.segments(day), MERGE_FILES if day >= today else 2)
            if run:
                self._merge(day, run)
                merged += len(run)
        return merged

    @staticmethod
    def _small_run(segments: list[Segment], at_least: int) -> list[Segment]:
        """The first run of consecutive small files long enough to merge (capped in rows)."""
        run: list[Segment] = []
        rows = 0
        for segment in segments:
            if segment.rows < SMALL_ROWS and rows + segment.rows <= MERGED_ROWS:
                run.append(segment)
                rows += segment.rows
                continue
            if len(run) >= at_least:
                return run
            run, rows = ([segment], segment.rows) if segment.rows < SMALL_ROWS else ([], 0)
        return run if len(run) >= at_least else []

    def _merge(self, day: str, run: list[Segment]) -> None:
        # files written before their columns were required hold the same columns as optional
        table = pa.concat_tables([pq.read_table(self.path(s)) for s in run], promote_options="default")
        merged = Segment(day, run[0].first, run[-1].last, 0, table.num_rows, *_time_bounds(table))
        self._swap(day, run, self._rewrite(merged, table))

    def _write_tmp(self, segment: Segment, table: pa.Table) -> tuple[Path, Segment]:
        """Write ``table`` under the segment's temporary name; the segment gains its size."""
        tmp = self.root / segment.day / f"{segment.name}.tmp"
        return tmp, replace(segment, size=_write_parquet(table, tmp, self.write_options))

    def _rewrite(self, segment: Segment, table: pa.Table) -> Segment:
        """Write a file that takes the place of others (they go by ``_swap``)."""
        tmp, segment = self._write_tmp(segment, table)
        tmp.rename(self.path(segment))
        return segment
