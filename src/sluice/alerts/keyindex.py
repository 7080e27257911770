"""A hash table from 64-bit keys to dense ids, worked on whole arrays at a time.

The alert windows keep their per-entity state in plain arrays indexed by a dense id; this
table gives each entity (a hashed address, a port, a country …) its id. Open addressing
with linear probing at a load of at most one half. The loops over a batch's keys are
compiled with numba (one pass, no temporaries, the GIL released): as numpy passes they were
the largest cost of alerting on new conversations, where most keys are new. Deletion shifts
the following entries back instead of leaving tombstones, so probe runs stay short however
many entities come and go; freed ids are handed out again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import numpy as np

from ..allocator import grown
from ..compiled import njit
from ..flows.session_table import GOLDEN, home_between  # GOLDEN: what ``table_home`` multiplies a key by
from ..prefetch import AHEAD, prefetch

_EMPTY = np.uint64(0)
_ONE = np.uint64(1)
#: the multipliers of a pair's key (``ordered_pair_key``; the pair tables' pairs of hosts)
PAIR_KEY_A, PAIR_KEY_B = GOLDEN, np.uint64(0xC2B2AE3D27D4EB4F)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)

# counters: slots of one int64 array that the kernels update in place
_NEXT, _FREE, _LIVE, _MAX = range(4)


def mix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (MurmurHash3 fmix64): spreads any keys evenly over the table."""
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


#: ``mix64`` of one key, for compiled loops: the same function compiled, so the same keys
mix64_one = cast(Callable[[np.uint64], np.uint64], njit(cache=True, nogil=True, inline="always")(mix64))


def distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values. numpy's ``unique`` hashes integers, which is ten times slower
    than sorting on large arrays with many distinct values."""
    if len(x) < 2:
        return np.array(x)
    s = np.sort(x)
    return s[np.concatenate([[True], s[1:] != s[:-1]])]


def ordered_pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A cheap key for an ordered pair of 64-bit keys (three passes; the table mixes it)."""
    return (a * PAIR_KEY_A) ^ (b * PAIR_KEY_B)


@njit(cache=True, nogil=True)
def group_rows(ids: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct ids in order of first appearance, each row's position among them, each
    distinct id's first row), in one pass. ``scratch`` is any int32 array longer than the
    largest id; what it holds is overwritten, so it need not be cleared between calls."""
    n = ids.shape[0]
    for r in range(n):
        scratch[ids[r]] = -1
    uniq = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    inv = np.empty(n, np.int32)  # read by every definition's pass: half the bytes of int64
    k = 0
    for r in range(n):
        i = ids[r]
        if scratch[i] < 0:
            scratch[i] = k
            uniq[k] = i
            first[k] = r
            k += 1
        inv[r] = scratch[i]
    return uniq[:k], inv, first[:k]


#: ``seen_and_grouped``'s marks: the call's number in the high half, the position in the low
STAMP_SHIFT = 32
#: the largest call number before the marks are cleared and counted from 1 again
MAX_STAMP = (1 << 31) - 1


@njit(cache=True, nogil=True)
def seen_and_grouped(
    ids: np.ndarray, valid: np.ndarray, seen: np.ndarray, now_ms: int, marks: np.ndarray, stamp: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``note_seen`` and ``group_rows`` in one pass over a batch's ids: (distinct ids in order
    of first appearance, each row's position among them, each distinct id's first row, the
    rows without an id).

    ``valid`` (empty: every row) says which rows are noted as seen in ``seen`` (empty: none
    is, the ids are only grouped). A row without an id (-1:
    the index was full) is given id 0 in ``ids`` and listed in the last array (empty when
    there is none). ``marks`` (int64, longer than the largest id) holds for each id the
    ``stamp`` of the call that last met it and its position then: each call's ``stamp`` is
    larger than the last one's, so nothing need be cleared between calls (where
    ``group_rows`` clears its scratch in a pass of its own), and both arrays indexed by id are
    read in one loop, prefetched (a host pairs' batch meets millions of ids at random)."""
    n = ids.shape[0]
    every_valid = valid.shape[0] == 0
    noting = seen.shape[0] > 0
    uniq = np.empty(n, np.int64)
    first = np.empty(n, np.int64)
    inv = np.empty(n, np.int32)  # read by every definition's pass: half the bytes of int64
    full = np.empty(n, np.int64)  # not allocated in the loop: numba would count references there
    missing = 0
    base = np.int64(stamp) << np.int64(STAMP_SHIFT)
    low = (np.int64(1) << np.int64(STAMP_SHIFT)) - 1
    far = marks.shape[0] > _CACHED_SLOTS
    k = 0
    for r in range(n):
        if far and r + AHEAD < n:
            ahead = ids[r + AHEAD]
            if ahead >= 0:
                prefetch(marks, ahead)
                if noting:
                    prefetch(seen, ahead)
        i = ids[r]
        if i < 0:
            full[missing] = r
            missing += 1
            i = 0
            ids[r] = 0
        elif noting and (every_valid or valid[r]):
            seen[i] = now_ms
        mark = marks[i]
        if mark < base:
            marks[i] = base | k
            uniq[k] = i
            first[k] = r
            inv[r] = k
            k += 1
        else:
            inv[r] = mark & low
    return uniq[:k], inv, first[:k], full[:missing]


#: ``seen_and_grouped``'s "every row is valid" and "note no times"
_EVERY_ROW, _NOT_NOTED = np.zeros(0, np.bool_), np.zeros(0, np.int64)


class BatchGrouping:
    """An entity type's batches grouped by id, call after call (``seen_and_grouped``): the
    marks by id, and the number of the last call, which each call raises."""

    def __init__(self) -> None:
        self.marks = np.zeros(0, np.int64)
        self.stamp = 0

    def group(
        self, ids: np.ndarray, id_capacity: int, valid: np.ndarray | None = None, seen: np.ndarray | None = None,
        now_ms: int = 0,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """``seen_and_grouped`` of ``ids`` (below ``id_capacity``): the valid rows (None: every
        one) noted as seen at ``now_ms`` in ``seen`` (None: not noted)."""
        if self.stamp >= MAX_STAMP:
            self.marks, self.stamp = np.zeros(len(self.marks), np.int64), 0  # new zero pages, not written
        if len(self.marks) < id_capacity:
            self.marks = grown(self.marks, id_capacity)
        self.stamp += 1
        return seen_and_grouped(
            ids, _EVERY_ROW if valid is None else valid, _NOT_NOTED if seen is None else seen, now_ms,
            self.marks, self.stamp,
        )  # fmt: skip

    def nbytes(self, used: int) -> int:
        """The marks of the first ``used`` ids: the rest is room never written."""
        return used_nbytes(self.marks, used)


@njit(cache=True, nogil=True)
def note_seen(ids: np.ndarray, valid: np.ndarray, seen: np.ndarray, now_ms: int) -> int:
    """``seen[id] = now_ms`` for the valid rows' ids; returns how many rows have no id (-1:
    the index was full), which are left out."""
    missing = 0
    for r in range(ids.shape[0]):
        if ids[r] < 0:
            missing += 1
        elif valid[r]:
            seen[ids[r]] = now_ms
    return missing


# -- the table's kernels ---------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def table_home(key: np.uint64, shift: np.uint64) -> np.int64:
    # Fibonacci hashing: the top bits of key x 2^64/phi; even sequential keys spread evenly
    return np.int64((key * GOLDEN) >> shift)


@njit(cache=True, nogil=True, inline="always")
def table_slot(t_keys: np.ndarray, key: np.uint64, shift: np.uint64) -> np.int64:
    """The slot holding ``key``, or the empty slot where it would go."""
    mask = t_keys.shape[0] - 1
    s = table_home(key, shift)
    while t_keys[s] != key and t_keys[s] != _EMPTY:
        s = (s + 1) & mask
    return s


@njit(cache=True, nogil=True, inline="always")
def table_key(key: np.uint64) -> np.uint64:
    """A key as the tables of this kind store it: 0 marks an empty slot, so key 0 is kept as 1."""
    return key if key != _EMPTY else _ONE


@njit(cache=True, nogil=True)
def _lookup(t_keys: np.ndarray, t_ids: np.ndarray, shift: np.uint64, keys: np.ndarray) -> np.ndarray:
    out = np.empty(keys.shape[0], np.int64)
    for i in range(keys.shape[0]):
        s = table_slot(t_keys, table_key(keys[i]), shift)
        out[i] = t_ids[s] if t_keys[s] != _EMPTY else -1
    return out


#: a table of at most this many slots (768 kB with its ids) stays in the caches: prefetching
#: its slots only costs (the tables of countries, ports and ASNs: 4.4 ns a key with it, 3.2
#: without)
_CACHED_SLOTS = 1 << 16


@njit(cache=True, nogil=True)
def _get_or_add(
    t_keys: np.ndarray,
    t_ids: np.ndarray,
    shift: np.uint64,
    keys_by_id: np.ndarray,
    live: np.ndarray,
    free: np.ndarray,
    counters: np.ndarray,
    keys: np.ndarray,
    ids: np.ndarray,
    added: np.ndarray,
    start: int,
    max_live: int,
) -> int:
    """Fill ``ids`` (and ``added``) from row ``start`` on, adding absent keys (a freed id
    first, else the next new one). Stops at the first row that needs more room - table
    slots beyond ``max_live`` live keys, or ids beyond the id arrays - and returns it (the
    number of rows when done)."""
    n = keys.shape[0]
    far = t_keys.shape[0] > _CACHED_SLOTS
    for i in range(start, n):
        if far and i + AHEAD < n:
            ahead = table_home(table_key(keys[i + AHEAD]), shift)
            prefetch(t_keys, ahead)
            prefetch(t_ids, ahead)
        key = table_key(keys[i])
        s = table_slot(t_keys, key, shift)
        if t_keys[s] != _EMPTY:
            ids[i] = t_ids[s]
            continue
        if counters[_FREE] == 0 and counters[_NEXT] >= counters[_MAX]:
            ids[i] = -1  # full: the caller counts the drop
            continue
        if counters[_LIVE] >= max_live or (counters[_FREE] == 0 and counters[_NEXT] >= live.shape[0]):
            return i
        if counters[_FREE] > 0:
            counters[_FREE] -= 1
            new = free[counters[_FREE]]
        else:
            new = counters[_NEXT]
            counters[_NEXT] += 1
        t_keys[s] = key
        t_ids[s] = new
        keys_by_id[new] = key
        live[new] = True
        counters[_LIVE] += 1
        ids[i] = new
        added[i] = True
    return n


@njit(cache=True, nogil=True)
def _remove(
    t_keys: np.ndarray,
    t_ids: np.ndarray,
    shift: np.uint64,
    keys_by_id: np.ndarray,
    live: np.ndarray,
    free: np.ndarray,
    counters: np.ndarray,
    ids: np.ndarray,
) -> None:
    mask = t_keys.shape[0] - 1
    for i in range(ids.shape[0]):
        e = ids[i]
        if e < 0 or e >= counters[_NEXT] or not live[e]:
            continue
        hole = table_slot(t_keys, keys_by_id[e], shift)
        # shift back the entries after the hole that probed past it
        j = hole
        while True:
            j = (j + 1) & mask
            k = t_keys[j]
            if k == _EMPTY:
                break
            if home_between(hole, j, table_home(k, shift)):  # it cannot move before its home
                continue
            t_keys[hole] = k
            t_ids[hole] = t_ids[j]
            hole = j
        t_keys[hole] = _EMPTY
        live[e] = False
        free[counters[_FREE]] = e
        counters[_FREE] += 1
        counters[_LIVE] -= 1


@njit(cache=True, nogil=True)
def _fill(t_keys: np.ndarray, t_ids: np.ndarray, shift: np.uint64, keys_by_id: np.ndarray, live: np.ndarray) -> None:
    """Put every live id into an empty table (after it grew)."""
    for e in range(live.shape[0]):
        if live[e]:
            s = table_slot(t_keys, keys_by_id[e], shift)
            t_keys[s] = keys_by_id[e]
            t_ids[s] = e


#: per-id arrays double: each entry is copied about once as they grow (growing by a quarter
#: copied it about four times, and on some VMs each first touch of a page costs microseconds).
#: The room beyond the ids in use is zeroed pages never touched: it costs address space, not
#: memory, and is not counted (``used_nbytes``)
GROWTH = 2.0


def room_for(length: int, needed: int) -> int:
    """The length an array of ``length`` grows to when ``needed`` entries must fit."""
    return max(needed, int(length * GROWTH) + 16)


def used_nbytes(arr: np.ndarray, used: int) -> int:
    """The bytes of an array indexed by id (or slot) that its first ``used`` entries take:
    what it holds in memory, where the rest is room never written."""
    return min(len(arr), used) * (arr.nbytes // max(len(arr), 1))


@njit(cache=True, nogil=True)
def _unseen_since(live: np.ndarray, seen: np.ndarray, n: int, cutoff: int) -> np.ndarray:
    """The live ids below ``n`` last seen before ``cutoff`` (an id beyond ``seen``: never)."""
    n = min(n, live.shape[0])
    known = min(n, seen.shape[0])
    count = 0
    for i in range(n):
        if live[i] and (i >= known or seen[i] < cutoff):
            count += 1
    out = np.empty(count, np.int64)
    k = 0
    for i in range(n):
        if live[i] and (i >= known or seen[i] < cutoff):
            out[k] = i
            k += 1
    return out


@njit(cache=True, nogil=True)
def _refill(old_keys: np.ndarray, old_ids: np.ndarray, t_keys: np.ndarray, t_ids: np.ndarray, shift: np.uint64) -> None:
    """Move every key of a table into an empty one twice its size. Homes are the top bits of
    the hash, so a key's home in the larger table is twice its old one (or one more): taking
    the old slots in order writes the new table front to back, which keeps the caches warm,
    where taking the keys in id order would land each one at random."""
    for s in range(old_keys.shape[0]):
        key = old_keys[s]
        if key != _EMPTY:
            slot = table_slot(t_keys, key, shift)
            t_keys[slot] = key
            t_ids[slot] = old_ids[s]


class KeyIndex:
    """Dense ids for 64-bit keys: ``get_or_add``, ``lookup``, ``remove``; at most ``max_ids``."""

    #: the table is rebuilt twice as large beyond this load; linear probing stays short below it
    MAX_LOAD = 0.5

    def __init__(self, capacity: int = 1024, max_ids: int = 1 << 26):
        self.max_ids = max_ids
        self._ids_cap = max(16, capacity)
        self.keys_by_id = np.zeros(self._ids_cap, np.uint64)
        self.live = np.zeros(self._ids_cap, bool)
        self._free = np.zeros(self._ids_cap, np.int32)  # a stack: ``_free[:counters[_FREE]]``
        self._counters = np.array([0, 0, 0, max_ids], np.int64)
        self._alloc_table(self._table_size_for(self._ids_cap))

    # -- public ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._counters[_LIVE])

    @property
    def id_capacity(self) -> int:
        """Every id is below this; per-id arrays kept elsewhere must be at least this long."""
        return self._ids_cap

    @property
    def ids_used(self) -> int:
        """Every id handed out so far is below this: per-id arrays hold nothing beyond it."""
        return int(self._counters[_NEXT])

    def nbytes(self) -> int:
        """The table (written all over) and the per-id arrays up to the ids in use."""
        per_id = sum(used_nbytes(arr, self.ids_used) for arr in (self.keys_by_id, self.live, self._free))
        return self.t_keys.nbytes + self.t_ids.nbytes + per_id

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The id of each key, -1 where absent."""
        return _lookup(self.t_keys, self.t_ids, self._shift, np.asarray(keys, np.uint64))

    def get_or_add(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, added): the id of each key, adding absent keys; ``added`` marks keys that
        were new (each new key marked once, at its first position). Ids are -1 where the
        table is full (``max_ids``)."""
        keys = np.asarray(keys, np.uint64)
        ids = np.empty(len(keys), np.int64)
        added = np.zeros(len(keys), bool)
        at = 0
        while True:
            at = _get_or_add(
                self.t_keys, self.t_ids, self._shift, self.keys_by_id, self.live, self._free, self._counters,
                keys, ids, added, at, int(self.MAX_LOAD * len(self.t_keys)),
            )  # fmt: skip
            if at == len(keys):
                return ids, added
            self._make_room()

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids (their keys become absent; the ids may be handed out again)."""
        ids = np.asarray(ids, np.int64)
        if len(ids):
            _remove(self.t_keys, self.t_ids, self._shift, self.keys_by_id, self.live, self._free, self._counters, ids)

    def clear(self) -> None:
        """Forget every key, keeping the room: ids are handed out from 0 again, in order."""
        self.t_keys.fill(_EMPTY)
        self.live[: int(self._counters[_NEXT])] = False
        self._counters[:_MAX] = 0

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(self.live[: self._counters[_NEXT]])

    def unseen_since(self, seen: np.ndarray, cutoff: int) -> np.ndarray:
        """The live ids whose ``seen`` time (indexed by id) is before ``cutoff``. One compiled
        pass: with 16 M host pairs, numpy's passes made about 270 MB of temporaries."""
        return _unseen_since(self.live, seen, int(self._counters[_NEXT]), cutoff)

    def state(self) -> dict[str, np.ndarray]:
        """What a snapshot needs: the live ids and their keys."""
        ids = self.live_ids()
        return {"ids": ids, "keys": self.keys_by_id[ids]}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], max_ids: int = 1 << 26) -> KeyIndex:
        ids, keys = state["ids"].astype(np.int64), state["keys"].astype(np.uint64)
        top = int(ids.max()) + 1 if len(ids) else 0
        index = cls(max(1024, top), max_ids)
        index.keys_by_id[ids] = keys
        index.live[ids] = True
        gaps = np.setdiff1d(np.arange(top), ids)
        index._free[: len(gaps)] = gaps[::-1]  # the stack hands out the lowest gap first
        index._counters[:] = (top, len(gaps), len(ids), max_ids)
        index._rebuild(index._table_size_for(max(len(ids), index._ids_cap)))
        return index

    # -- internals ------------------------------------------------------------------------

    @classmethod
    def _table_size_for(cls, n: int) -> int:
        return 1 << max(4, int(n / cls.MAX_LOAD).bit_length())

    def _alloc_table(self, size: int) -> None:
        self.t_keys = np.zeros(size, np.uint64)
        # read only where a key is: left unset, its pages cost nothing until used
        self.t_ids = np.empty(size, np.int32)  # ids stay below max_ids (< 2**31)
        self._shift = np.uint64(64 - (size.bit_length() - 1))

    def _rebuild(self, size: int) -> None:
        self._alloc_table(size)
        _fill(self.t_keys, self.t_ids, self._shift, self.keys_by_id, self.live)

    def _make_room(self) -> None:
        """More ids or a larger table, whichever ran out."""
        nxt, n_free, n_live, _ = self._counters.tolist()
        if n_free == 0 and nxt >= self._ids_cap:
            cap = min(self.max_ids, room_for(self._ids_cap, self._ids_cap + 1))
            self.keys_by_id = grown(self.keys_by_id, cap)
            self.live = grown(self.live, cap)
            self._free = grown(self._free, cap)
            self._ids_cap = cap
        if n_live >= int(self.MAX_LOAD * len(self.t_keys)):
            old_keys, old_ids = self.t_keys, self.t_ids
            self._alloc_table(2 * len(old_keys))
            _refill(old_keys, old_ids, self.t_keys, self.t_ids, self._shift)
