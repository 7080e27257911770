"""Session rows a ClickHouse shard could not take, kept on local disk until it answers again.

One entry is one insert's rows for one shard, with the insert's batch id (the rows carry it
in ClickHouse too, which is how a replay finds out whether a failed insert was in fact
stored). An entry is an Arrow IPC file (LZ4) named ``<shard>-<seq>-<batch id>-<rows>.arrow``,
written as ``.tmp``, synced and renamed, so a crash leaves whole entries or none. The spool
is bounded in bytes: an entry that would pass the bound is not kept, and its rows are
counted as dropped. Entries outlive the process: a restarted server replays them.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import structlog

from ..flows.schema import SessionBatch

log = structlog.get_logger(__name__)

_ENTRY = re.compile(r"^(\d+)-(\d+)-([0-9a-f]+)-(\d+)\.arrow$")
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


@dataclass(frozen=True)
class SpoolEntry:
    shard: int
    seq: int
    batch_id: int
    rows: int
    size: int
    path: Path


class Spool:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: dict[int, list[SpoolEntry]] = {}
        self._bytes = 0
        self._seq = 0
        # since this process started
        self.spooled_rows = 0
        self.dropped_rows = 0
        self.bad_entries = 0
        for path in self.directory.iterdir():
            if path.suffix == ".tmp":  # an entry cut short by a crash: never acknowledged as kept
                path.unlink(missing_ok=True)
                continue
            entry = _parse(path)
            if entry is not None:
                self._add(entry)
                self._seq = max(self._seq, entry.seq)
        if self._bytes:
            log.warning("session rows wait in the ClickHouse spool from an earlier run", rows=self.rows,
                        bytes=self._bytes, directory=str(self.directory))  # fmt: skip

    def _add(self, entry: SpoolEntry) -> None:
        self._entries.setdefault(entry.shard, []).append(entry)
        self._entries[entry.shard].sort(key=lambda e: e.seq)
        self._bytes += entry.size

    @property
    def rows(self) -> int:
        """Rows waiting, over every shard."""
        with self._lock:
            return sum(e.rows for entries in self._entries.values() for e in entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, shard: int, batch_id: int, rows: SessionBatch) -> bool:
        """Keep ``rows`` for ``shard``; False if that would pass the bound (they are counted
        as dropped) or the disk refused them."""
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = f"{shard}-{seq}-{batch_id:x}-{len(rows)}.arrow"
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        try:
            table = pa.Table.from_batches([rows.to_arrow()])
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=_OPTIONS) as writer:
                writer.write_table(table)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            size = tmp.stat().st_size
            with self._lock:
                if self._bytes + size > self.max_bytes:
                    tmp.unlink()
                    self.dropped_rows += len(rows)
                    return False
                tmp.rename(path)
                self._add(SpoolEntry(shard, seq, batch_id, len(rows), size, path))
                self.spooled_rows += len(rows)
            return True
        except OSError as exc:  # a full or read-only disk: these rows are lost, and counted
            tmp.unlink(missing_ok=True)
            self.dropped_rows += len(rows)
            log.error("could not spool session rows", rows=len(rows), error=str(exc))
            return False

    def shards(self) -> list[int]:
        """Shards with rows waiting."""
        with self._lock:
            return [shard for shard, entries in self._entries.items() if entries]

    def oldest(self, shard: int) -> SpoolEntry | None:
        with self._lock:
            entries = self._entries.get(shard)
            return entries[0] if entries else None

    def read(self, entry: SpoolEntry) -> SessionBatch:
        with pa.memory_map(str(entry.path)) as source:
            table = pa.ipc.open_file(source).read_all()
        if table.num_rows != entry.rows:
            raise ValueError(f"{entry.path.name}: {table.num_rows} rows, its name says {entry.rows}")
        return SessionBatch.from_arrow(table)

    def remove(self, entry: SpoolEntry) -> None:
        """The entry's rows are stored: forget it."""
        with self._lock:
            self._entries[entry.shard].remove(entry)
            self._bytes -= entry.size
        entry.path.unlink(missing_ok=True)

    def set_aside(self, entry: SpoolEntry, error: str) -> None:
        """An entry that cannot be read is renamed ``.bad`` (kept for a look, never replayed);
        its rows are counted as dropped."""
        with self._lock:
            self._entries[entry.shard].remove(entry)
            self._bytes -= entry.size
            self.bad_entries += 1
            self.dropped_rows += entry.rows
        entry.path.rename(entry.path.with_suffix(".bad"))
        log.error("a spooled entry could not be read; set aside", file=entry.path.name, error=error)


def _parse(path: Path) -> SpoolEntry | None:
    match = _ENTRY.match(path.name)
    if match is None:
        return None
    shard, seq, batch_id, rows = match.groups()
    return SpoolEntry(int(shard), int(seq), int(batch_id, 16), int(rows), path.stat().st_size, path)
