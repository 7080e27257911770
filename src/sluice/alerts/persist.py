"""The alert engine's state on disk: saved every ``snapshot_interval_s`` and at stop, restored
at start for the definitions whose window signature is unchanged (``DATA_DIR/alert-state.npz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import structlog

from .definition import EntityType
from .engine import AlertEngine
from .keyindex import KeyIndex

log = structlog.get_logger(__name__)


def save(engine: AlertEngine, path: Path) -> None:
    """Write the whole state to ``path`` (atomically: a crash leaves the previous file)."""
    with engine.lock:
        arrays: dict[str, np.ndarray] = {}
        for kind, index in engine.indexes.items():
            for k, v in index.state().items():
                arrays[f"index.{kind.value}.{k}"] = v
            arrays[f"index.{kind.value}.last_seen"] = engine.last_seen[kind]
        for i, st in engine.states.items():
            arrays[f"def.{i}.signature"] = np.frombuffer(st.signature.encode(), np.uint8)
            arrays[f"def.{i}.meta"] = np.array([st.bucket, st.counted_bucket], np.int64)
            arrays[f"def.{i}.counted"] = st.counted
            for k, v in st.window.state().items():
                arrays[f"def.{i}.w.{k}"] = v
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
            p = f"index.{kind.value}."
            if p + "ids" in data:
                engine.indexes[kind] = KeyIndex.from_state(
                    {"ids": data[p + "ids"], "keys": data[p + "keys"]}, engine.max_entities
                )
                seen = data[p + "last_seen"]
                cap = engine.indexes[kind].id_capacity
                engine.last_seen[kind] = np.concatenate([seen, np.zeros(max(0, cap - len(seen)), np.int64)])
        for i, st in engine.states.items():
            p = f"def.{i}."
            if p + "signature" not in data or bytes(data[p + "signature"]).decode() != st.signature:
                continue
            st.bucket, st.counted_bucket = (int(x) for x in data[p + "meta"])
            st.counted = data[p + "counted"]
            st.window.load({k[len(p) + 2 :]: v for k, v in data.items() if k.startswith(p + "w.")})
    return True
