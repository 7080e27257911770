"""A hash table from 64-bit keys to dense ids, worked on whole arrays at a time.

The alert windows keep their per-entity state in plain arrays indexed by a dense id; this
table gives each entity (a hashed address, a port, a country …) its id. Open addressing
with linear probing at a load of at most 0.7, every probe round vectorised over the
keys still looking: a batch of a million keys costs a few numpy passes, not a Python loop
per key. Ids are reused after ``remove``; the table is rebuilt when deletions pile up.
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.uint64(0)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def mix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (MurmurHash3 fmix64): spreads any keys evenly over the table."""
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


def distinct(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values. numpy's ``unique`` hashes integers, which is ten times slower
    than sorting on large arrays with many distinct values."""
    if len(x) < 2:
        return np.array(x)
    s = np.sort(x)
    return s[np.concatenate([[True], s[1:] != s[:-1]])]


def distinct_first(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, the index of the first occurrence of each)."""
    order = np.argsort(x, kind="stable")
    s = x[order]
    starts = np.concatenate([[True], s[1:] != s[:-1]]) if len(s) else np.zeros(0, bool)
    return s[starts], order[starts]


def combine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One 64-bit key for a pair of keys (order matters)."""
    return mix64(mix64(a) ^ (b + np.uint64(0x9E3779B97F4A7C15)))


def ordered_pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A cheap key for an ordered pair of 64-bit keys (three passes; the table mixes it)."""
    return (a * _GOLDEN) ^ (b * np.uint64(0xC2B2AE3D27D4EB4F))


def pair_key(small: np.ndarray, key: np.ndarray) -> np.ndarray:
    """A cheap key for (a small id below 2**32, a 64-bit key): one multiply and an add.
    Distinct pairs collide only by chance (the table mixes the result before using it)."""
    return key * np.uint64(0x9E3779B97F4A7C15) + small.astype(np.uint64)


class KeyIndex:
    def __init__(self, capacity: int = 1024, max_ids: int = 1 << 26):
        self.max_ids = max_ids
        self._ids_cap = max(16, capacity)
        self.keys_by_id = np.zeros(self._ids_cap, np.uint64)
        self.live = np.zeros(self._ids_cap, bool)
        self._free: list[np.ndarray] = []
        self._next = 0  # ids below this have been handed out at least once
        self._n = 0
        self._deleted = 0
        self._alloc_table(self._table_size_for(self._ids_cap))

    # -- public ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    @property
    def id_capacity(self) -> int:
        """Every id is below this; per-id arrays kept elsewhere must be at least this long."""
        return self._ids_cap

    def nbytes(self) -> int:
        return (
            self.t_keys.nbytes
            + self.t_ids.nbytes
            + self.keys_by_id.nbytes
            + self.live.nbytes
            + sum(f.nbytes for f in self._free)
        )

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The id of each key, -1 where absent."""
        return self._lookup(self._sanitise(keys))

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        slots, found = self._probe(keys)
        out = self.t_ids[slots].astype(np.int64)
        out[~found | (out < 0)] = -1  # absent, or a tombstone: the key was removed
        return out

    def get_or_add(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, added): the id of each key, adding absent keys; ``added`` marks keys that
        were new (each new key marked once, at its first position). Ids are -1 where the
        table is full (``max_ids``)."""
        keys = self._sanitise(keys)
        ids = self._lookup(keys)
        missing = np.flatnonzero(ids < 0)
        added = np.zeros(len(keys), bool)
        if len(missing):
            uniq, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
            new_ids = self._insert(uniq)
            ids[missing] = new_ids[inverse.reshape(-1)]
            ok = new_ids >= 0
            added[missing[first[ok]]] = True
        return ids, added

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids (their keys become absent; the ids may be handed out again)."""
        ids = distinct(np.asarray(ids, np.int64))
        ids = ids[(ids >= 0) & (ids < self._next)]
        ids = ids[self.live[ids]]
        if not len(ids):
            return
        slots, found = self._probe(self.keys_by_id[ids])
        # a tombstone: the key stays (so probes run on past it), the id is gone
        self.t_ids[slots[found]] = -2
        self.live[ids] = False
        self._n -= len(ids)
        self._deleted += len(ids)
        self._free.append(ids)
        if self._deleted > len(self.t_keys) // 5:
            self._rehash(len(self.t_keys))

    def live_ids(self) -> np.ndarray:
        return np.flatnonzero(self.live[: self._next])

    def state(self) -> dict[str, np.ndarray]:
        """What a snapshot needs: the live ids and their keys."""
        ids = self.live_ids()
        return {"ids": ids, "keys": self.keys_by_id[ids]}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], max_ids: int = 1 << 26) -> KeyIndex:
        ids, keys = state["ids"].astype(np.int64), state["keys"].astype(np.uint64)
        top = int(ids.max()) + 1 if len(ids) else 0
        index = cls(max(1024, top), max_ids)
        index._next = top
        index.keys_by_id[ids] = keys
        index.live[ids] = True
        index._n = len(ids)
        gaps = np.setdiff1d(np.arange(top), ids)
        if len(gaps):
            index._free.append(gaps)
        index._rehash(index._table_size_for(max(index._ids_cap, 2 * len(ids))))
        return index

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _sanitise(keys: np.ndarray) -> np.ndarray:
        # 0 marks an empty slot: key 0 becomes 1 (one pass, where np.where takes three)
        return np.maximum(np.asarray(keys, np.uint64), np.uint64(1))

    #: the table is rebuilt larger beyond this load; linear probing stays short below it
    MAX_LOAD = 0.7

    @staticmethod
    def _table_size_for(n: int) -> int:
        return 1 << max(4, int(n / 0.55).bit_length())

    def _alloc_table(self, size: int) -> None:
        self.t_keys = np.zeros(size, np.uint64)
        self.t_ids = np.full(size, -1, np.int32)  # ids stay below max_ids (< 2**31)
        self._mask = np.uint64(size - 1)
        self._shift = np.uint64(64 - (size.bit_length() - 1))

    def _home(self, keys: np.ndarray) -> np.ndarray:
        """Each key's first slot: Fibonacci hashing (the top bits of key x 2^64/phi), two
        passes where a full mixer takes ten; even sequential keys spread evenly."""
        return ((keys * _GOLDEN) >> self._shift).astype(np.int64)

    def _probe(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, found) per key: the key's slot, or the first empty slot of its probe run."""
        slots = self._home(keys)
        # the first probe settles most keys (load <= 1/2): do it on the whole array
        tk = self.t_keys[slots]
        found = tk == keys
        pending = np.flatnonzero(~found & (tk != _EMPTY))
        mask = int(self._mask)
        while len(pending):
            s = (slots[pending] + 1) & mask
            slots[pending] = s
            tk = self.t_keys[s]
            hit = tk == keys[pending]
            found[pending[hit]] = True
            pending = pending[~(hit | (tk == _EMPTY))]
        return slots, found

    def _take_ids(self, k: int) -> np.ndarray:
        out = []
        while k and self._free:
            f = self._free.pop()
            take, rest = f[:k], f[k:]
            if len(rest):
                self._free.append(rest)
            out.append(take)
            k -= len(take)
        if k:
            k = min(k, self.max_ids - self._next)
            out.append(np.arange(self._next, self._next + k))
            self._next += k
        ids = np.concatenate(out) if out else np.empty(0, np.int64)
        if self._next > self._ids_cap:
            cap = max(self._next, self._ids_cap + self._ids_cap // 4)
            self.keys_by_id = np.concatenate([self.keys_by_id, np.zeros(cap - self._ids_cap, np.uint64)])
            self.live = np.concatenate([self.live, np.zeros(cap - self._ids_cap, bool)])
            self._ids_cap = cap
        return ids.astype(np.int64)

    def _insert(self, keys: np.ndarray) -> np.ndarray:
        """Add distinct absent keys; their new ids (-1 for those beyond ``max_ids``)."""
        ids = np.full(len(keys), -1, np.int64)
        got = self._take_ids(len(keys))
        ids[: len(got)] = got
        keep = ids >= 0
        keys, got = keys[keep], ids[keep]
        # a key removed earlier still has its slot (a tombstone): revive it there
        slots, found = self._probe(keys)
        if found.any():
            self.t_ids[slots[found]] = got[found]
            self.keys_by_id[got[found]] = keys[found]
            self.live[got[found]] = True
            self._n += int(found.sum())
            self._deleted -= int(found.sum())
            keys, got = keys[~found], got[~found]
        if self._n + self._deleted + len(keys) > self.MAX_LOAD * len(self.t_keys):
            self._n += len(keys)
            self.keys_by_id[got] = keys
            self.live[got] = True
            self._rehash(self._table_size_for(self._n))
            return ids
        self._place(keys, got)
        self._n += len(keys)
        self.keys_by_id[got] = keys
        self.live[got] = True
        return ids

    def _place(self, keys: np.ndarray, ids: np.ndarray) -> None:
        """Write distinct keys known to be absent into empty slots, settling collisions."""
        mask = int(self._mask)
        slots, _ = self._probe(keys)
        pending = np.arange(len(keys))
        while len(pending):
            s = slots[pending]
            # several keys may have found the same empty slot: scatter them all, the last
            # write wins the slot, the others probe on
            self.t_keys[s] = keys[pending]
            won = self.t_keys[s] == keys[pending]
            self.t_ids[s[won]] = ids[pending[won]]
            lose = pending[~won]
            if not len(lose):
                break
            start = (slots[lose] + 1) & mask
            sub_slots, _ = self._probe_from(keys[lose], start)
            slots[lose] = sub_slots
            pending = lose

    def _probe_from(self, keys: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots = start.copy()
        pending = np.arange(len(keys))
        mask = int(self._mask)
        while len(pending):
            tk = self.t_keys[slots[pending]]
            stop = tk == _EMPTY
            pending = pending[~stop]
            slots[pending] = (slots[pending] + 1) & mask
        return slots, np.zeros(len(keys), bool)

    def _rehash(self, size: int) -> None:
        ids = self.live_ids()
        self._alloc_table(size)
        self._deleted = 0
        if len(ids):
            self._place(self.keys_by_id[ids], ids)
