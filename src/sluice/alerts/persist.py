"""The alert engine's state on disk: saved every ``snapshot_interval_s`` and at stop, restored
at start for the definitions whose window signature is unchanged (``DATA_DIR/alert-state.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import structlog

from .definition import EntityType
from .engine import AlertEngine
from .keyindex import KeyIndex, grown

log = structlog.get_logger(__name__)


def save(engine: AlertEngine, path: Path) -> None:
    """Write the whole state to ``path`` (atomically: a crash leaves the previous file)."""
    write(snapshot(engine), path)


def snapshot(engine: AlertEngine) -> dict[str, np.ndarray]:
    """The whole state as arrays, taken under the engine's lock as copies, never views of
    what evaluation changes in place: they are written after the lock is released, while
    evaluation goes on."""
    with engine.lock:
        arrays: dict[str, np.ndarray] = {}
        for kind, index in engine.indexes.items():
            for name, array in index.state().items():
                arrays[f"index.{kind.value}.{name}"] = array
            arrays[f"index.{kind.value}.last_seen"] = engine.last_seen[kind].copy()
        for definition_id, state in engine.states.items():
            arrays[f"def.{definition_id}.signature"] = np.frombuffer(state.signature.encode(), np.uint8)
            arrays[f"def.{definition_id}.meta"] = np.array([state.bucket, state.counted_bucket], np.int64)
            arrays[f"def.{definition_id}.counted"] = state.counted
            for name, array in state.window.state().items():
                arrays[f"def.{definition_id}.w.{name}"] = array
    return arrays


def write(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write a ``snapshot`` to ``path`` atomically."""
    tmp = path.with_suffix(".tmp.npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(tmp, allow_pickle=False, **arrays)
    tmp.replace(path)


def load(engine: AlertEngine, path: Path) -> bool:
    """Restore state saved by ``save`` for the definitions installed (same signatures)."""
    try:
        data = dict(np.load(path))
    except FileNotFoundError:
        return False
    except Exception as exc:  # a damaged file: start afresh rather than not at all
        log.warning("alert state unreadable, starting empty", path=str(path), error=str(exc))
        return False
    with engine.lock:
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
            state.bucket, state.counted_bucket = (int(value) for value in data[prefix + "meta"])
            state.counted = data[prefix + "counted"]
            state.window.load(
                {name[len(prefix) + 2 :]: array for name, array in data.items() if name.startswith(prefix + "w.")}
            )
    return True
