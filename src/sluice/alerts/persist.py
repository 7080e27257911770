"""The alert engine's state on disk: saved every ``snapshot_interval_s`` and at stop, restored
at start for the definitions whose window signature is unchanged (``DATA_DIR/alert-state.bin``).

The file is a sequence of ``.npy`` records (NumPy's array format), a name and its array, after
a line that says what it is. It is written straight from the live arrays, window by window,
while evaluation waits for that window: without a second copy of a state of a gigabyte or
more in memory, without the seconds of CPU an archive's checksums cost, and past the page
cache (``direct_file``: through it, writing cost 2-3 s of system CPU per GB here). Files of
the earlier ``.npz`` form are still read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import structlog

from ..allocator import grown
from ..direct_file import DirectFile
from .definition import EntityType
from .engine import AlertEngine, DefinitionState
from .keyindex import KeyIndex
from .partial import Positions

log = structlog.get_logger(__name__)

STATE_FILE = "alert-state.bin"
#: the name and form (a NumPy archive) of the state file before 2026-12
LEGACY_STATE_FILE = "alert-state.npz"
MAGIC = b"\x93SLUICE ALERT STATE 1\n"
_ZIP_MAGIC = b"PK\x03\x04"
_BETWEEN_WINDOWS_S = 0.002


def save(engine: AlertEngine, path: Path) -> int:
    """Write the whole state to ``path`` atomically (a crash leaves the previous file);
    returns the bytes written.

    Each window is written under the engine's lock, the entity indexes last, and evaluation
    goes on between them: each window is the state of one moment (those written later may
    hold a little more traffic), and no window holds the lock for longer than its own write.
    No entity id is given back meanwhile, so every id a window holds is in the indexes."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with DirectFile(tmp) as f, engine.ids_kept():
            f.write(MAGIC)
            # an alerting node merging collectors' partials: where it was in the stream when the
            # save began (it reads on from there after a restart), and with each window the
            # stream sequence it holds the partials of (those read again are not merged twice)
            with engine.lock:
                cluster = {"positions": engine.positions.state(), "stream_seq": engine.stream_seq}
                _put(f, "cluster", np.frombuffer(json.dumps(cluster).encode(), np.uint8))
            for definition_id in list(engine.states):
                with engine.lock:
                    state = engine.states.get(definition_id)
                    if state is not None:  # else removed since the save began
                        index = engine.indexes.get(state.definition.entity)
                        for name, array in _definition_arrays(definition_id, state, index.ids_used if index else 0):
                            _put(f, name, array)
                        _put(f, f"def.{definition_id}.merged_seq", np.array([engine.stream_seq], np.int64))
                time.sleep(_BETWEEN_WINDOWS_S)  # a thread waiting for the lock takes it now
            with engine.lock:
                for name, array in _index_arrays(engine):
                    _put(f, name, array)
            written = f.size
        tmp.replace(path)
        return written
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _index_arrays(engine: AlertEngine) -> Iterator[tuple[str, np.ndarray]]:
    """The entity indexes as named arrays (views of the live ones where it can: to be written
    before the engine's lock is released)."""
    for kind, index in engine.indexes.items():
        for name, array in index.state().items():
            yield f"index.{kind.value}.{name}", array
        yield f"index.{kind.value}.last_seen", engine.last_seen[kind][: index.ids_used]


def _definition_arrays(
    definition_id: int, state: DefinitionState, ids_used: int | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """One definition's window as named arrays (as ``_index_arrays``). The arrays indexed by
    entity id end at ``ids_used`` (None: as long as they are): beyond it they hold nothing
    but the room they grew by (up to half of them), and restored they grow again as ids come."""

    def per_id(array: np.ndarray) -> np.ndarray:
        return array if ids_used is None else array[:ids_used]

    yield f"def.{definition_id}.signature", np.frombuffer(state.signature.encode(), np.uint8)
    yield f"def.{definition_id}.meta", np.array([state.bucket], np.int64)
    yield f"def.{definition_id}.counted_to", per_id(state.counted_to)
    yield f"def.{definition_id}.counted_amount", per_id(state.counted_amount)
    for name, array in state.window.state().items():
        yield f"def.{definition_id}.w.{name}", per_id(array) if name == "values" else array
    for name, array in state.contrib.state().items():
        yield f"def.{definition_id}.c.{name}", per_id(array) if name == "values" else array
    if state.baseline:
        yield f"def.{definition_id}.usual_sum", per_id(state.usual_sum)
        yield f"def.{definition_id}.samples", np.array([state.samples, state.sampled], np.int64)


def _put(f: DirectFile, name: str, array: np.ndarray) -> None:
    """A name and its array, each as a ``.npy`` record (what ``read`` reads back)."""
    for item in (np.frombuffer(name.encode(), np.uint8), np.ascontiguousarray(array)):
        # the header, then the array's memory as it is (numpy's own writer would copy it in
        # pieces into new memory when the file is not a plain one)
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(item))
        f.write(item)


def read(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a state file, of either form (FileNotFoundError if there is none)."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        if head.startswith(_ZIP_MAGIC):
            return dict(np.load(path, allow_pickle=False))
        if head != MAGIC:
            raise ValueError(f"{path} is not an alert state file")
        size = os.fstat(f.fileno()).st_size
        arrays: dict[str, np.ndarray] = {}
        while f.tell() < size:
            name = bytes(np.lib.format.read_array(f, allow_pickle=False)).decode()
            arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
        return arrays


def _part(data: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix) :]: array for name, array in data.items() if name.startswith(prefix)}


def load(engine: AlertEngine, path: Path) -> bool:
    """Restore state saved by ``save`` for the definitions installed (same signatures)."""
    try:
        data = read(path)
    except FileNotFoundError:
        return False
    except Exception as exc:  # a damaged file: start afresh rather than not at all
        log.warning("alert state unreadable, starting empty", path=str(path), error=str(exc))
        return False
    with engine.lock:
        if "cluster" in data:
            cluster = json.loads(bytes(data["cluster"]).decode())
            engine.positions = Positions.from_state(cluster["positions"])
            engine.stream_seq = int(cluster["stream_seq"])
        for kind in EntityType:
            prefix = f"index.{kind.value}."
            if prefix + "ids" in data:
                engine.indexes[kind] = KeyIndex.from_state(
                    {"ids": data[prefix + "ids"], "keys": data[prefix + "keys"]}, engine.max_entities
                )
                seen = data[prefix + "last_seen"]
                cap = engine.indexes[kind].id_capacity
                engine.last_seen[kind] = grown(seen.astype(np.int64), max(cap, len(seen)))
        for definition_id, state in engine.states.items():
            prefix = f"def.{definition_id}."
            if prefix + "signature" not in data or bytes(data[prefix + "signature"]).decode() != state.signature:
                continue
            state.bucket = int(data[prefix + "meta"][0])
            if prefix + "merged_seq" in data:
                engine.merged_seq[definition_id] = int(data[prefix + "merged_seq"][0])
            state.window.load(_part(data, prefix + "w."))
            # COUNT's state: files from before 2026-12-03 have none (what they held was
            # counted already; contributions count from now on)
            if prefix + "counted_to" in data:
                state.counted_to = data[prefix + "counted_to"].astype(np.int64)
                state.counted_amount = data[prefix + "counted_amount"].astype(np.int64)
                state.contrib.load(_part(data, prefix + "c."))
            if state.baseline and prefix + "usual_sum" in data:
                state.usual_sum = data[prefix + "usual_sum"].astype(np.float64)
                state.samples, state.sampled = (int(v) for v in data[prefix + "samples"])
    return True
