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

``BothWaysPairTable`` is the same set for the unique hosts of hosts, where every session
gives two pairs, (client, server) and (server, client): both are kept in one slot of 24
bytes (the pair of hosts' key, both sides' entity ids, both sides' last steps), so that a
session costs one probe instead of two and a pair of hosts one slot instead of two.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..compiled import njit
from ..flows.session_table import home_between
from ..prefetch import AHEAD, prefetch
from .keyindex import PAIR_KEY_A, PAIR_KEY_B, table_home, table_key, table_slot

_EMPTY = np.uint64(0)

# counters: slots of one int64 array that the kernels update in place
_LIVE, _DROPPED, _ENTRIES = range(3)  # _ENTRIES: slots in use (both-ways tables)

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
def _delete(slots: np.ndarray, shift: np.uint64, hole: int | np.int64) -> None:
    """Empty slot ``hole`` (a row of ``slots``, its key first), shifting back the entries after
    it that probed past it."""
    t_keys = slots[:, 0]
    mask = t_keys.shape[0] - 1
    j = hole
    while True:
        j = (j + 1) & mask
        k = t_keys[j]
        if k == _EMPTY:
            break
        if home_between(hole, j, table_home(k, shift)):  # it cannot move before its home
            continue
        for w in range(slots.shape[1]):
            slots[hole, w] = slots[j, w]
        hole = j
    t_keys[hole] = _EMPTY


@njit(cache=True, nogil=True)
def _add(
    slots: np.ndarray,
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
    t_keys, t_meta = slots[:, 0], slots[:, 1]
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
    slots: np.ndarray,
    shift: np.uint64,
    counters: np.ndarray,
    oldest: int,
    values: np.ndarray,
) -> None:
    """Remove the pairs last seen before step ``oldest``, uncounting each from its entity. One
    pass over the table: a slot that a deletion refilled is looked at again; entries shifted
    from the table's start to its end were already looked at, and kept."""
    t_keys, t_meta = slots[:, 0], slots[:, 1]
    s = 0
    while s < t_keys.shape[0]:
        if t_keys[s] != _EMPTY and _step_of(t_meta[s]) < oldest:
            values[_entity_of(t_meta[s])] -= 1
            _delete(slots, shift, s)
            counters[_LIVE] -= 1
        else:
            s += 1


@njit(cache=True, nogil=True)
def _take_entity(slots: np.ndarray, shift: np.uint64, counters: np.ndarray, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove every pair of entity ``e``; returns their keys and steps."""
    t_keys, t_meta = slots[:, 0], slots[:, 1]
    keys = np.empty(counters[_LIVE], np.uint64)
    steps = np.empty(counters[_LIVE], np.int64)
    k = 0
    s = 0
    while s < t_keys.shape[0]:
        if t_keys[s] != _EMPTY and _entity_of(t_meta[s]) == e:
            keys[k] = t_keys[s]
            steps[k] = _step_of(t_meta[s])
            k += 1
            _delete(slots, shift, s)
            counters[_LIVE] -= 1
        else:
            s += 1
    return keys[:k], steps[:k]


@njit(cache=True, nogil=True)
def _refill(old: np.ndarray, slots: np.ndarray, shift: np.uint64) -> None:
    """Move every entry (a row of ``old``, its key first) into an empty (larger) table; old
    slots in order, so that the new table is written front to back (homes are the top bits
    of the hash)."""
    t_keys = slots[:, 0]
    for s in range(old.shape[0]):
        key = old[s, 0]
        if key != _EMPTY:
            slot = table_slot(t_keys, key, shift)
            for w in range(old.shape[1]):
                slots[slot, w] = old[s, w]


class PairTable:
    """(entity, peer) pair keys with each one's entity id and last step; at most ``max_pairs``.

    Steps are kept as 32-bit numbers relative to ``base`` (the first step seen): 68 years of
    one-second steps."""

    #: the table is rebuilt twice as large beyond this load; linear probing stays short below it
    MAX_LOAD = 0.5
    #: words a slot
    WIDTH = 2
    #: the kernels that scan the table (a subclass's slots differ)
    _expire_kernel = staticmethod(_expire)
    _take_kernel = staticmethod(_take_entity)

    def __init__(self, max_pairs: int = 16_000_000, size: int = 1024) -> None:
        self.max_pairs = max_pairs
        self.base: int | None = None
        self._counters = np.zeros(3, np.int64)
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
        return self._insert(_add, (keys, entity), step, exact_limit, values, len(keys))

    def expire(self, oldest: int, values: np.ndarray) -> None:
        """Forget the pairs last seen before step ``oldest``; each uncounts from ``values``."""
        if self.base is None or not len(self):
            return
        self._expire_kernel(self._slots, self._shift, self._counters, self._clamped(oldest), values)

    def take_entity(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Remove the pairs of entity ``e``: (their keys, the step each was last seen in)."""
        keys, steps = self._take_kernel(self._slots, self._shift, self._counters, e)
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
        if slots.ndim != 2 or slots.shape[1] != cls.WIDTH or size < 2 or size & (size - 1):
            raise ValueError(f"pair table slots of shape {slots.shape}: not a table this version writes")
        table = cls(max_pairs, 2)  # its own slots replaced below
        table._use(np.ascontiguousarray(slots, np.uint64))
        table.base = None if base == NO_BASE else base
        # beyond a bound lowered since, the pairs held stay until they leave the window
        table._counters[_LIVE] = table._held()
        table._counters[_ENTRIES] = np.count_nonzero(table.t_keys)
        return table

    # -- internals ------------------------------------------------------------------------

    def _insert(
        self,
        kernel: Callable[..., tuple[int, int]],
        rows: tuple[np.ndarray, np.ndarray],
        step: int,
        exact_limit: int,
        values: np.ndarray,
        most_over: int,
    ) -> np.ndarray:
        """Run an adding kernel (``_add``, ``_add_both``) over ``rows`` (the keys first),
        doubling the table each time it stops for room; returns the distinct entities whose
        count went beyond ``exact_limit`` (``most_over``: how many it may list at most)."""
        keys = rows[0]
        rel = self._relative(step)
        over = np.empty(most_over, np.int64)
        at, n_over = 0, 0
        while True:
            at, n_over = kernel(
                self._slots, self._shift, self._counters,
                int(self.MAX_LOAD * len(self.t_keys)), self.max_pairs,
                *rows, rel, at, exact_limit, values, over, n_over,
            )  # fmt: skip
            if at == len(keys):
                return np.unique(over[:n_over])
            self._double()

    def _relative(self, step: int) -> int:
        if self.base is None:
            self.base = step
        return self._clamped(step)

    def _clamped(self, step: int) -> int:
        return max(-(2**31), min(2**31 - 1, step - (self.base or 0)))

    def _alloc(self, size: int) -> None:
        self._use(np.zeros((size, self.WIDTH), np.uint64))

    def _held(self) -> int:
        """Pairs in the table, counted from its slots."""
        return int(np.count_nonzero(self.t_keys))

    def _use(self, slots: np.ndarray) -> None:
        # per slot: the key (0: empty), then the entity and step (``_meta``), read only where
        # a key is; views of one array, so that a slot's two words share a cache line
        self._slots = slots
        self.t_keys = slots[:, 0]
        self.t_meta = slots[:, 1]
        self._shift = np.uint64(64 - (len(slots).bit_length() - 1))

    def _double(self) -> None:
        old = self._slots
        self._alloc(2 * len(old))
        _refill(old, self._slots, self._shift)


# -- both directions of a pair of hosts in one slot ------------------------------------------
#
# A slot is three words: the pair's key (``_direction``'s, of its two hosts' keys, the lower
# first), the two sides' entity ids + 1 (0: that direction is not held), the two sides' last
# steps (relative, offset as ``_meta``'s). Side 0, the lower host's, is the high half of each
# word, side 1 the low half.

_SIDE_SHIFT = np.uint64(32)


@njit(cache=True, nogil=True, inline="always")
def _half(word: np.uint64, side: int) -> np.uint64:
    return word >> _SIDE_SHIFT if side == 0 else word & _LOW


@njit(cache=True, nogil=True, inline="always")
def _with_half(word: np.uint64, side: int, value: np.uint64) -> np.uint64:
    return (word & _LOW) | (value << _SIDE_SHIFT) if side == 0 else (word & _HIGH) | value


@njit(cache=True, nogil=True, inline="always")
def _direction(own: np.uint64, peer: np.uint64) -> tuple[np.uint64, np.int64]:
    """(the key of the pair of hosts, as ``ordered_pair_key`` makes it of the lower host's key
    and the higher's: the table mixes it; the direction's side: 0 if ``own`` is the lower, or
    both are one host)."""
    if own <= peer:
        return (own * PAIR_KEY_A) ^ (peer * PAIR_KEY_B), np.int64(0)
    return (peer * PAIR_KEY_A) ^ (own * PAIR_KEY_B), np.int64(1)


@njit(cache=True, nogil=True)
def session_pairs(
    inv: np.ndarray, ids: np.ndarray, mask: np.ndarray, own: np.ndarray, n_uniq: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of hosts of an endpoint batch (rows: the n sessions' client sides, then their
    server sides; ``own``: each row's host key, ``ids`` its entity id): per session with a
    masked side, (the pair's key, each side's entity id or -1 where the side is not masked,
    side 0 the lower host's), and which of the batch's entities (positions in its distinct
    ids, ``inv``) have a masked row. A host on both sides of a session is one pair, side 0."""
    n = ids.shape[0] // 2
    keys = np.empty(n, np.uint64)
    sides = np.empty((n, 2), np.int64)
    concerned = np.zeros(n_uniq, np.bool_)
    m = 0
    for i in range(n):
        a = mask[i]
        b = mask[i + n]
        if not (a or b):
            continue
        ka = own[i]
        kb = own[i + n]
        ia = ids[i] if a else -1
        ib = ids[i + n] if b else -1
        if a:
            concerned[inv[i]] = True
        if b:
            concerned[inv[i + n]] = True
        key, side = _direction(ka, kb)
        keys[m] = key
        if ka == kb:
            sides[m, 0] = ia if a else ib
            sides[m, 1] = -1
        else:
            sides[m, side] = ia
            sides[m, 1 - side] = ib
        m += 1
    return keys[:m], sides[:m], concerned


@njit(cache=True, nogil=True)
def directions_of(own: np.ndarray, peer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the pair of hosts' key, the side) of each (host, peer) direction (``_direction``)."""
    keys = np.empty(own.shape[0], np.uint64)
    side = np.empty(own.shape[0], np.int64)
    for i in range(own.shape[0]):
        keys[i], side[i] = _direction(own[i], peer[i])
    return keys, side


@njit(cache=True, nogil=True)
def _add_both(
    slots: np.ndarray,
    shift: np.uint64,
    counters: np.ndarray,
    max_entries: int,
    max_pairs: int,
    keys: np.ndarray,
    sides: np.ndarray,
    step: int,
    start: int,
    exact_limit: int,
    values: np.ndarray,
    over: np.ndarray,
    n_over: int,
) -> tuple[int, int]:
    """``_add`` for pairs of hosts: ``sides[i]`` the entity ids of the directions of pair
    ``keys[i]`` seen (-1: not seen). Stops at the first row that needs a larger table."""
    t_keys, t_ids, t_steps = slots[:, 0], slots[:, 1], slots[:, 2]
    mask = t_keys.shape[0] - 1
    n = keys.shape[0]
    for i in range(start, n):
        if i + AHEAD < n:
            ahead = table_home(table_key(keys[i + AHEAD]), shift)
            prefetch(t_keys, ahead)
            # and the cache line after: a slot of 24 bytes often ends in it, and a quarter of
            # the keys probe on to the next slot (the whole add: 0.30-0.37 against 0.40-0.53 s
            # for 12 M sessions on a table of 3 M pairs of hosts, in turn)
            prefetch(t_keys, (ahead + 2) & mask)
        key = table_key(keys[i])
        s = table_slot(t_keys, key, shift)
        if t_keys[s] == _EMPTY:
            if counters[_LIVE] >= max_pairs:
                counters[_DROPPED] += (sides[i, 0] >= 0) + (sides[i, 1] >= 0)
                continue
            if counters[_ENTRIES] >= max_entries:
                return i, n_over
            t_keys[s] = key
            t_ids[s] = _EMPTY
            t_steps[s] = _EMPTY
            counters[_ENTRIES] += 1
        # each direction seen: held from now if new (within the bound), its step noted. Written
        # out here: as a helper inlined by numba (five arrays for arguments) this pass took 4 to
        # 5 times as long, 170 against 40 ns a session on a table of 16 M pairs
        for side in range(2):
            e = sides[i, side]
            if e < 0:
                continue
            if _half(t_ids[s], side) == 0:
                if counters[_LIVE] >= max_pairs:
                    counters[_DROPPED] += 1
                    continue
                t_ids[s] = _with_half(t_ids[s], side, np.uint64(e + 1))
                counters[_LIVE] += 1
                values[e] += 1
                if values[e] > exact_limit:
                    over[n_over] = e
                    n_over += 1
            t_steps[s] = _with_half(t_steps[s], side, np.uint64(step + _STEP_OFFSET))
        if t_ids[s] == _EMPTY:  # its only direction was beyond the bound just now
            _delete(slots, shift, s)
            counters[_ENTRIES] -= 1
    return n, n_over


@njit(cache=True, nogil=True)
def _expire_both(
    slots: np.ndarray,
    shift: np.uint64,
    counters: np.ndarray,
    oldest: int,
    values: np.ndarray,
) -> None:
    """``_expire`` for pairs of hosts: each direction last seen before ``oldest`` is uncounted
    from its entity; a slot with neither left is deleted."""
    t_keys, t_ids, t_steps = slots[:, 0], slots[:, 1], slots[:, 2]
    s = 0
    while s < t_keys.shape[0]:
        if t_keys[s] != _EMPTY:
            ids = t_ids[s]
            for side in range(2):
                e = np.int64(_half(ids, side)) - 1
                if e >= 0 and np.int64(_half(t_steps[s], side)) - _STEP_OFFSET < oldest:
                    values[e] -= 1
                    ids = _with_half(ids, side, _EMPTY)
                    counters[_LIVE] -= 1
            t_ids[s] = ids
            if ids == _EMPTY:
                _delete(slots, shift, s)
                counters[_ENTRIES] -= 1
                continue  # the slot may hold an entry shifted back into it
        s += 1


@njit(cache=True, nogil=True)
def _take_entity_both(
    slots: np.ndarray, shift: np.uint64, counters: np.ndarray, e: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove entity ``e``'s direction of every pair; returns their keys and steps."""
    t_keys, t_ids, t_steps = slots[:, 0], slots[:, 1], slots[:, 2]
    keys = np.empty(counters[_LIVE], np.uint64)
    steps = np.empty(counters[_LIVE], np.int64)
    mine = np.uint64(e + 1)
    k = 0
    s = 0
    while s < t_keys.shape[0]:
        if t_keys[s] != _EMPTY:
            ids = t_ids[s]
            for side in range(2):
                if _half(ids, side) == mine:
                    keys[k] = t_keys[s]
                    steps[k] = np.int64(_half(t_steps[s], side)) - _STEP_OFFSET
                    k += 1
                    ids = _with_half(ids, side, _EMPTY)
                    counters[_LIVE] -= 1
            t_ids[s] = ids
            if ids == _EMPTY:
                _delete(slots, shift, s)
                counters[_ENTRIES] -= 1
                continue
        s += 1
    return keys[:k], steps[:k]


class BothWaysPairTable(PairTable):
    """The (host, peer) pairs of the unique hosts of hosts: both directions of a pair of hosts
    in one slot (see the module's docstring). ``len`` and ``max_pairs`` count directions, as
    ``PairTable`` counts its pairs; entries are pairs of hosts."""

    WIDTH = 3
    _expire_kernel = staticmethod(_expire_both)
    _take_kernel = staticmethod(_take_entity_both)

    @classmethod
    def following(cls, table: PairTable) -> BothWaysPairTable:
        """An empty table in place of ``table``: its bound, and its count of pairs dropped (a
        running total, which a metric reports)."""
        out = cls(table.max_pairs)
        out._counters[_DROPPED] = table.dropped
        return out

    @classmethod
    def from_directions(
        cls, keys: np.ndarray, entity: np.ndarray, side: np.ndarray, steps: np.ndarray, replaced: PairTable
    ) -> BothWaysPairTable:
        """The table holding these directions (``directions_of``' keys and sides; absolute
        steps), in place of ``replaced``."""
        out = cls.following(replaced)
        scratch = np.zeros(int(entity.max()) + 1 if len(entity) else 1, np.int64)  # the window counts them already
        for step in np.unique(steps).tolist():  # ``add_both`` marks all its pairs with one step
            sel = np.flatnonzero(steps == step)
            sides = np.full((len(sel), 2), -1, np.int64)
            sides[np.arange(len(sel)), side[sel]] = entity[sel]
            out.add_both(keys[sel], sides, int(step), 2**62, scratch)
        return out

    def add_both(
        self, keys: np.ndarray, sides: np.ndarray, step: int, exact_limit: int, values: np.ndarray
    ) -> np.ndarray:
        """``session_pairs``' pairs seen in ``step``; each direction new to the table counts
        for its entity in ``values``. Returns the distinct entities whose count went beyond
        ``exact_limit``."""
        return self._insert(_add_both, (keys, sides), step, exact_limit, values, 2 * len(keys))

    def add(self, keys: np.ndarray, entity: np.ndarray, step: int, exact_limit: int, values: np.ndarray) -> np.ndarray:
        raise TypeError("a both-ways pair table is given pairs of hosts (add_both), not (entity, peer) pairs")

    def pairs(self) -> dict[str, np.ndarray]:
        """Every direction held: the pair's key, the entity id, the absolute step (a copy)."""
        used = np.flatnonzero(self.t_keys)
        keys, entity, step = [], [], []
        for side in (0, 1):
            ids = self.t_ids[used] >> _SIDE_SHIFT if side == 0 else self.t_ids[used] & _LOW
            steps = self.t_steps[used] >> _SIDE_SHIFT if side == 0 else self.t_steps[used] & _LOW
            held = ids != 0
            keys.append(self.t_keys[used][held])
            entity.append((ids[held] - np.uint64(1)).astype(np.int32))
            step.append(steps[held].astype(np.int64) - _STEP_OFFSET + (self.base or 0))
        return {"keys": np.concatenate(keys), "entity": np.concatenate(entity), "step": np.concatenate(step)}

    def _held(self) -> int:
        ids = self.t_ids[self.t_keys != _EMPTY]  # an emptied slot keeps its old words
        return int(np.count_nonzero(ids >> _SIDE_SHIFT) + np.count_nonzero(ids & _LOW))

    def _use(self, slots: np.ndarray) -> None:
        super()._use(slots)
        self.t_ids = slots[:, 1]
        self.t_steps = slots[:, 2]


def pair_table_from_state(state: dict[str, np.ndarray], max_pairs: int = 16_000_000) -> PairTable:
    """The table a snapshot's ``state()`` holds, of either kind (told by its slots' width)."""
    if "slots" in state and state["slots"].ndim == 2 and state["slots"].shape[1] == BothWaysPairTable.WIDTH:
        return BothWaysPairTable.from_state(state, max_pairs)
    return PairTable.from_state(state, max_pairs)
