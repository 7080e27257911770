"""``njit`` for the hot path's compiled loops, with numba's on-disk cache made safe for several
processes at once.

numba keeps one index per function of the forms compiled for it (one per set of argument
types) and names a new form's data file after what the index holds when it saves, without a
lock (numba/numba#10128). Two processes saving different forms of one function at once (the
session workers of ``serve --workers N`` starting on a cold cache, two servers of one install,
pytest's workers) can take the same file name: the index may then give one form the other's
machine code, and a later process runs code compiled for other argument types. Saves to one
index here take turns under a file lock, so each one sees what the one before it wrote.

Every module of Sluice takes ``njit`` from here, so the lock is in place before anything is
compiled.
"""

from __future__ import annotations

import fcntl
import functools
from collections.abc import Callable
from typing import Any

import numba
import structlog
from numba import njit
from numba.core import caching

__all__ = ["cache_saves_locked", "njit"]

log = structlog.get_logger(__name__)


def _locked(save: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(save)
    def save_in_turn(self: Any, key: Any, data: Any) -> Any:
        try:
            lock = open(self._index_path + ".lock", "ab")  # noqa: SIM115 (held for the save)
        except OSError:  # numba checked that it can write there; if not, save as numba would
            return save(self, key, data)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # flock: per open file, so threads take turns too
            return save(self, key, data)  # reads the index again, under the lock

    save_in_turn.sluice_locked = True  # type: ignore[attr-defined]
    return save_in_turn


def _install() -> bool:
    index_file = getattr(caching, "IndexDataCacheFile", None)
    save = getattr(index_file, "save", None)
    if save is None:
        log.warning(
            "numba's cache has no IndexDataCacheFile.save: its saves are not locked, and "
            "processes saving at once may mix up compiled forms",
            numba=numba.__version__,
            fix="if a compiled function fails at start, delete the cache (see docs/deployment.md)",
        )
        return False
    if not getattr(save, "sluice_locked", False):
        index_file.save = _locked(save)  # type: ignore[union-attr]
    return True


#: whether numba's cache saves take turns (False only on a numba whose cache this does not know)
cache_saves_locked: bool = _install()
