"""The (entity, peer) pairs of a distinct-count window: a hash set of pair keys, each entry
holding its entity and the last step it was seen in.

Unique hosts / ports keep every pair in their window while counting exactly; with a million
hosts that is millions of pairs, so an entry is kept in the table's own slot: 16 bytes (the
key, then the entity id and the step packed in one word, side by side so that a probe reads
one cache line: with three arrays each probe missed the caches up to three times) at a load
of at most one half. A dense id per pair (as
``KeyIndex`` gives) would cost another 30 bytes a pair in arrays indexed by it, and a memory
access more per row. Open addressing with linear probing; entries are deleted by shifting the
following ones back (no tombstones), also while a whole-table scan expires them.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..flows.session_table import home_between
from ..prefetch import AHEAD, prefetch
from .keyindex import table_home, table_key, table_slot

_EMPTY = np.uint64(0)

# counters: slots of one int64 array that the kernels update in place
_LIVE, _DROPPED = range(2)

# a slot's second word: the entity id in the high 32 bits, the step (relative, offset by 2**31
# so that unsigned order is step order) in the low 32
_LOW = np.uint64(0xFFFFFFFF)
_HIGH = np.uint64(0xFFFFFFFF00000000)
_STEP_OFFSET = 1 << 31
#: ``base`` in a snapshot of a table that never had a pair
NO_BASE = -(2**63)


@njit(cache=True, nogil=True, inline="always")
def _meta(entity: int | np.int64, step: int | np.int64) -> np.uint64:
    return (np.uint64(entity) << np.uint64(32)) | np.uint64(step + _STEP_OFFSET)


@njit(cache=True, nogil=True, inline="always")
def _entity_of(meta: np.uint64) -> np.int64:
    return np.int64(meta >> np.uint64(32))


@njit(cache=True, nogil=True, inline="always")
def _step_of(meta: np.uint64) -> np.int64:
    return np.int64(meta & _LOW) - _STEP_OFFSET


@njit(cache=True, nogil=True, inline="always")
def _delete(t_keys: np.ndarray, t_meta: np.ndarray, shift: np.uint64, hole: int | np.int64) -> None:
    """Empty slot ``hole``, shifting back the entries after it that probed past it."""
    mask = t_keys.shape[0] - 1
    j = hole
    while True:
        j = (j + 1) & mask
        k = t_keys[j]
        if k == _EMPTY:
            break
        if home_between(hole, j, table_home(k, shift)):  # it cannot move before its home
            continue
        t_keys[hole] = k
        t_meta[hole] = t_meta[j]
        hole = j
    t_keys[hole] = _EMPTY


@njit(cache=True, nogil=True)
def _add(
    t_keys: np.ndarray,
    t_meta: np.ndarray,
    shift: np.uint64,
    counters: np.ndarray,
    max_live: int,
    max_pairs: int,
    keys: np.ndarray,
    entity: np.ndarray,
    step: int,
    start: int,
    exact_limit: int,
    values: np.ndarray,
    over: np.ndarray,
    n_over: int,
) -> tuple[int, int]:
    """Note each pair (``keys[i]`` of ``entity[i]``) as seen in ``step``, from row ``start`` on;
    a new pair counts one more for its entity in ``values``. Entities whose count goes beyond
    ``exact_limit`` are listed in ``over`` (with repeats). Pairs beyond ``max_pairs`` are not
    kept (counted as dropped). Stops at the first row that needs a larger table; returns
    (that row, or the number of rows when done; the new length of ``over``)."""
    n = keys.shape[0]
    for i in range(start, n):
        if i + AHEAD < n:
            ahead = table_home(table_key(keys[i + AHEAD]), shift)
            prefetch(t_keys, ahead)  # the slot's two words share a cache line
        key = table_key(keys[i])
        s = table_slot(t_keys, key, shift)
        if t_keys[s] == _EMPTY:
            if counters[_LIVE] >= max_pairs:
                counters[_DROPPED] += 1
                continue
            if counters[_LIVE] >= max_live:
                return i, n_over
            e = entity[i]
            t_keys[s] = key
            t_meta[s] = _meta(e, step)
            counters[_LIVE] += 1
            values[e] += 1
            if values[e] > exact_limit:
                over[n_over] = e
                n_over += 1
        else:
            t_meta[s] = (t_meta[s] & _HIGH) | np.uint64(step + _STEP_OFFSET)
    return n, n_over


@njit(cache=True, nogil=True)
def _expire(
    t_keys: np.ndarray,
    t_meta: np.ndarray,
    shift: np.uint64,
    counters: np.ndarray,
    oldest: int,
    values: np.ndarray,
) -> None:
    """Remove the pairs last seen before step ``oldest``, uncounting each from its entity. One
    pass over the table: a slot that a deletion refilled is looked at again; entries shifted
    from the table's start to its end were already looked at, and kept."""
    s = 0
    while s < t_keys.shape[0]:
        if t_keys[s] != _EMPTY and _step_of(t_meta[s]) < oldest:
            values[_entity_of(t_meta[s])] -= 1
            _delete(t_keys, t_meta, shift, s)
            counters[_LIVE] -= 1
        else:
            s += 1


@njit(cache=True, nogil=True)
def _take_entity(
    t_keys: np.ndarray, t_meta: np.ndarray, shift: np.uint64, counters: np.ndarray, e: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove every pair of entity ``e``; returns their keys and steps."""
    keys = np.empty(counters[_LIVE], np.uint64)
    steps = np.empty(counters[_LIVE], np.int64)
    k = 0
    s = 0
    while s < t_keys.shape[0]:
        if t_keys[s] != _EMPTY and _entity_of(t_meta[s]) == e:
            keys[k] = t_keys[s]
            steps[k] = _step_of(t_meta[s])
            k += 1
            _delete(t_keys, t_meta, shift, s)
            counters[_LIVE] -= 1
        else:
            s += 1
    return keys[:k], steps[:k]


@njit(cache=True, nogil=True)
def _refill(
    old_keys: np.ndarray, old_meta: np.ndarray, t_keys: np.ndarray, t_meta: np.ndarray, shift: np.uint64
) -> None:
    """Move every entry into an empty (larger) table; old slots in order, so that the new
    table is written front to back (homes are the top bits of the hash)."""
    for s in range(old_keys.shape[0]):
        key = old_keys[s]
        if key != _EMPTY:
            slot = table_slot(t_keys, key, shift)
            t_keys[slot] = key
            t_meta[slot] = old_meta[s]


class PairTable:
    """(entity, peer) pair keys with each one's entity id and last step; at most ``max_pairs``.

    Steps are kept as 32-bit numbers relative to ``base`` (the first step seen): 68 years of
    one-second steps."""

    #: the table is rebuilt twice as large beyond this load; linear probing stays short below it
    MAX_LOAD = 0.5

    def __init__(self, max_pairs: int = 16_000_000, size: int = 1024) -> None:
        self.max_pairs = max_pairs
        self.base: int | None = None
        self._counters = np.zeros(2, np.int64)
        self._alloc(size)

    def __len__(self) -> int:
        return int(self._counters[_LIVE])

    @property
    def dropped(self) -> int:
        """Pairs not kept because the table held ``max_pairs``."""
        return int(self._counters[_DROPPED])

    def nbytes(self) -> int:
        return self._slots.nbytes

    def add(self, keys: np.ndarray, entity: np.ndarray, step: int, exact_limit: int, values: np.ndarray) -> np.ndarray:
        """Note the pairs as seen in ``step``; new ones count for their entity in ``values``.
        Returns the distinct entities whose count went beyond ``exact_limit``."""
        rel = self._relative(step)
        over = np.empty(len(keys), np.int64)
        at, n_over = 0, 0
        while True:
            at, n_over = _add(
                self.t_keys, self.t_meta, self._shift, self._counters,
                int(self.MAX_LOAD * len(self.t_keys)), self.max_pairs,
                keys, entity, rel, at, exact_limit, values, over, n_over,
            )  # fmt: skip
            if at == len(keys):
                return np.unique(over[:n_over])
            self._double()

    def expire(self, oldest: int, values: np.ndarray) -> None:
        """Forget the pairs last seen before step ``oldest``; each uncounts from ``values``."""
        if self.base is None or not len(self):
            return
        _expire(self.t_keys, self.t_meta, self._shift, self._counters, self._clamped(oldest), values)

    def take_entity(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Remove the pairs of entity ``e``: (their keys, the step each was last seen in)."""
        keys, steps = _take_entity(self.t_keys, self.t_meta, self._shift, self._counters, e)
        return keys, steps + (self.base or 0)

    def pairs(self) -> dict[str, np.ndarray]:
        """Every pair: keys, entity ids and absolute steps (a copy)."""
        used = np.flatnonzero(self.t_keys)
        meta = self.t_meta[used]
        return {
            "keys": self.t_keys[used],
            "entity": (meta >> np.uint64(32)).astype(np.int32),  # entity ids fit in 32 bits (``_meta``)
            "step": (meta & _LOW).astype(np.int64) - _STEP_OFFSET + (self.base or 0),
        }

    def state(self) -> dict[str, np.ndarray]:
        """What a snapshot needs: the table's slots as they are (a view: written under the
        engine's lock) and the step they count from. Compacted into ``pairs()``, a full table's
        16 M pairs cost 0.5 CPU-s and up to 2.7 s of system time in 600 MB of new memory a
        save, for 37 % fewer bytes; restored, the slots need no hashing again."""
        return {"slots": self._slots, "base": np.array([NO_BASE if self.base is None else self.base], np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], max_pairs: int = 16_000_000) -> PairTable:
        """The table ``state()`` (or, from files of before 2026-12-04, ``pairs()``) gave."""
        if "slots" in state:
            return cls._from_slots(state["slots"], int(state["base"][0]), max_pairs)
        keys = state["keys"].astype(np.uint64)
        size = 1024
        while len(keys) >= cls.MAX_LOAD * size:
            size *= 2
        table = cls(max_pairs, size)
        if len(keys):
            steps = state["step"].astype(np.int64)
            table.base = int(steps.min())
            # one step at a time: ``add`` marks all its keys with one step
            values = np.zeros(int(state["entity"].max()) + 1, np.int64)
            entity = state["entity"].astype(np.int64)
            for step in np.unique(steps).tolist():
                sel = steps == step
                table.add(keys[sel], entity[sel], int(step), 2**62, values)
        return table

    @classmethod
    def _from_slots(cls, slots: np.ndarray, base: int, max_pairs: int) -> PairTable:
        size = slots.shape[0]
        if slots.ndim != 2 or slots.shape[1] != 2 or size < 2 or size & (size - 1):
            raise ValueError(f"pair table slots of shape {slots.shape}: not a table this version writes")
        table = cls(max_pairs, 2)  # its own slots replaced below
        table._use(np.ascontiguousarray(slots, np.uint64))
        table.base = None if base == NO_BASE else base
        # beyond a bound lowered since, the pairs held stay until they leave the window
        table._counters[_LIVE] = np.count_nonzero(table.t_keys)
        return table

    # -- internals ------------------------------------------------------------------------

    def _relative(self, step: int) -> int:
        if self.base is None:
            self.base = step
        return self._clamped(step)

    def _clamped(self, step: int) -> int:
        return max(-(2**31), min(2**31 - 1, step - (self.base or 0)))

    def _alloc(self, size: int) -> None:
        self._use(np.zeros((size, 2), np.uint64))

    def _use(self, slots: np.ndarray) -> None:
        # per slot: the key (0: empty), then the entity and step (``_meta``), read only where
        # a key is; views of one array, so that a slot's two words share a cache line
        self._slots = slots
        self.t_keys = slots[:, 0]
        self.t_meta = slots[:, 1]
        self._shift = np.uint64(64 - (len(slots).bit_length() - 1))

    def _double(self) -> None:
        old = self.t_keys, self.t_meta
        self._alloc(2 * len(old[0]))
        _refill(*old, self.t_keys, self.t_meta, self._shift)
