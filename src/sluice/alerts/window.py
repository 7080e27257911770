"""Sliding windows per alert definition: one value per entity over the last T, in steps.

Entities are dense ids (``KeyIndex``); a window keeps, per id, the value over the steps
(buckets) still inside the window, and what each bucket added so that it can be taken back
when the bucket leaves the window.

- ``SumWindow``: bits, bytes, packets, sessions - exact integer sums while the window's past
  steps fit in its byte budget; beyond it, the oldest steps are held as one amount per entity
  spread evenly over the steps it came from (see ``SumWindow.advance``).
- ``DistinctWindow``: unique hosts / ports - exact while an entity has at most
  ``exact_limit`` distinct peers in its window: every (entity, peer) pair is kept with the
  last bucket it was seen in (``PairTable``: 16 bytes a slot; for the unique hosts of hosts,
  ``BothWaysPairTable``: both directions of a pair of hosts in 24). An entity beyond that moves
  to a HyperLogLog sketch per bucket (256 registers: about 6.5 % standard error), which can
  be merged across buckets and across collector nodes by taking register maxima. A pair
  costs the same whatever the number of steps: expiry scans the pairs' last steps instead
  of keeping a list per step.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import structlog

from ..allocator import grown
from ..compiled import njit
from ..flows.schema import SessionBatch
from ..prefetch import AHEAD, prefetch
from .keyindex import GOLDEN, PAIR_KEY_B, distinct, group_rows, mix64, room_for, used_nbytes
from .pairtable import BothWaysPairTable, PairTable, directions_of, pair_table_from_state, session_pairs

log = structlog.get_logger(__name__)

#: the key of an (entity id, peer key) pair is peer x this + id + 1: one multiply and two
#: adds; distinct pairs collide only by chance. The + 1 keeps peer 0 of entity 0 off key 0,
#: which the table stores as key 1 (peer 0 of entity 1). A table places a key by the top bits
#: of key x ``GOLDEN`` (``table_home``), so a peer lands by peer x (this x ``GOLDEN``): this is
#: chosen so that the product is ``PAIR_KEY_B``, whose multiples spread runs of peers (a
#: subnet's addresses, a scan's ports) evenly. It was ``GOLDEN`` itself until 2026-12-07, whose
#: square bunched such runs: a host's scan of 65,536 ports probed 21 slots past their homes
#: on average, random keys 0.2
_PAIR_MULTIPLIER = np.uint64(int(PAIR_KEY_B) * pow(int(GOLDEN), -1, 2**64) % 2**64)
_PAIR_INVERSE = np.uint64(pow(int(_PAIR_MULTIPLIER), -1, 2**64))  # peer = (key - id - 1) x this
#: the inverse of the multiplier of version 2's keys (``GOLDEN``), to key its snapshots anew
_PAIR_INVERSE_2 = np.uint64(pow(int(GOLDEN), -1, 2**64))
#: saved with the pairs: a snapshot of version 2 has its pairs keyed anew as it loads; older
#: ones are not restored
PAIR_KEY_VERSION = 3
HLL_P = 8
HLL_M = 1 << HLL_P
_ALPHA = 0.7213 / (1 + 1.079 / HLL_M)


def _grow(arr: np.ndarray, size: int) -> np.ndarray:
    """``arr`` at least ``size`` long, the new part zero (``room_for``)."""
    return arr if len(arr) >= size else grown(arr, room_for(len(arr), size))


def _compact(amounts: np.ndarray, top: int | None = None) -> np.ndarray:
    """Non-negative amounts in the smallest unsigned type that holds them (the ring keeps
    one per entity and step: most are small counts); ``top``: their largest, if known."""
    if top is None:
        top = int(amounts.max()) if len(amounts) else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return amounts.astype(dtype)
    return amounts.astype(np.int64)


def hll_estimate(registers: np.ndarray) -> np.ndarray:
    """Cardinality estimates for rows of HLL registers (with the small-range correction)."""
    regs = registers.astype(np.float64)
    raw = _ALPHA * HLL_M * HLL_M / np.sum(np.exp2(-regs), axis=-1)
    zeros = np.sum(registers == 0, axis=-1)
    small = (raw <= 2.5 * HLL_M) & (zeros > 0)
    linear = HLL_M * np.log(HLL_M / np.maximum(zeros, 1))
    return np.where(small, linear, raw)


def hll_cells(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(register, rank) of each 64-bit hash: the low bits pick the register, the rank is one
    more than the number of trailing zeros of the rest."""
    reg = (hashes & np.uint64(HLL_M - 1)).astype(np.int64)
    rest = hashes >> np.uint64(HLL_P)
    low_bit = rest & (~rest + np.uint64(1))  # the lowest set bit alone: a power of two, exact as float
    _, exp = np.frexp(low_bit.astype(np.float64))
    rank = np.where(rest == 0, 64 - HLL_P + 1, exp).astype(np.uint8)
    return reg, rank


@njit(cache=True, nogil=True)
def _sum_by_id(ids: np.ndarray, amounts: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct ids, the sum of each one's amounts); ``scratch`` as for ``group_rows``."""
    uniq, inv, _ = group_rows(ids, scratch)
    sums = np.zeros(uniq.shape[0], np.int64)
    for i in range(inv.shape[0]):
        sums[inv[i]] += amounts[i]
    return uniq, sums


#: an entity's batch sums (``_accumulate``) are two words: its rows' amount, then its rows
#: (times ``ROW``) plus their counts; one cache line per row updated, where three arrays
#: (amount, whether concerned, counts) took three
ROW = np.int64(1 << 32)
_COUNTS = np.int64(ROW - 1)


@njit(cache=True, nogil=True)
def _accumulate(inv: np.ndarray, n_uniq: int, mask: np.ndarray, amounts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per entity of the batch (``inv``: each row's position among its ``n_uniq`` distinct
    ids): the masked rows' amounts and counts (see ``ROW``)."""
    sums = np.zeros((n_uniq, 2), np.int64)
    for r in range(inv.shape[0]):
        if mask[r]:
            sums[inv[r], 0] += amounts[r]
            sums[inv[r], 1] += ROW + np.int64(counts[r])
    return sums


@njit(cache=True, nogil=True)
def _fold_entities(
    uniq: np.ndarray,
    sums: np.ndarray,
    every_concerned: bool,
    values: np.ndarray,
    step_amounts: np.ndarray,
    count_values: np.ndarray,
    count_step: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Add each entity's amount (``sums``, by position in ``uniq``, the batch's distinct ids:
    see ``ROW``) to ``values`` and to ``step_amounts`` (what each added in the open step).
    Returns the entities concerned (as positions in ``uniq``: every one with a row if
    ``every_concerned``, else those whose sum is not zero), each one's new value, and the ids
    that added something for the first time in the step. In the same pass, the counts (COUNT's
    contributions) go to a second window's ``count_values`` and ``count_step`` (one visit of
    each entity for both windows); the last item returned lists the ids that counted there for
    the first time in the step."""
    n_uniq = uniq.shape[0]
    local = np.empty(n_uniq, np.int64)
    now = np.empty(n_uniq, np.int64)
    first = np.empty(n_uniq, np.int32)
    first_counted = np.empty(n_uniq, np.int32)
    k = 0
    n_first = 0
    n_counted = 0
    for j in range(n_uniq):
        if j + AHEAD < n_uniq:  # entities' arrays are larger than the caches (host pairs)
            ahead = uniq[j + AHEAD]
            prefetch(values, ahead)
            prefetch(step_amounts, ahead)
            if sums[j + AHEAD, 1] & _COUNTS:
                prefetch(count_values, ahead)
                prefetch(count_step, ahead)
        if sums[j, 1] == 0:  # no row
            continue
        e = uniq[j]
        acc = sums[j, 0]
        counted = sums[j, 1] & _COUNTS
        if counted:
            if count_step[e] == 0:
                first_counted[n_counted] = e
                n_counted += 1
            count_step[e] += counted
            count_values[e] += counted
        if every_concerned or acc != 0:
            if acc != 0:
                if step_amounts[e] == 0:  # amounts are never negative: 0 means not yet in the step
                    first[n_first] = e
                    n_first += 1
                step_amounts[e] += acc
                values[e] += acc
            local[k] = j
            now[k] = values[e]
            k += 1
    return local[:k], now[:k], first[:n_first], first_counted[:n_counted]


def unpack_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(amount, whether it has a row, counts) per entity of ``_accumulate``'s sums."""
    return sums[:, 0], sums[:, 1] != 0, sums[:, 1] & _COUNTS


@njit(cache=True, nogil=True)
def _count_rows(inv: np.ndarray, n_uniq: int, mask: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per entity of the batch (``inv``: each row's position among its ``n_uniq`` distinct
    ids): how many of its masked rows are ``counted``."""
    acc = np.zeros(n_uniq, np.int64)
    for r in range(inv.shape[0]):
        if mask[r] & counted[r]:
            acc[inv[r]] += 1
    return acc


@njit(cache=True, nogil=True)
def _add_counts(acc: np.ndarray, uniq: np.ndarray, values: np.ndarray, step_amounts: np.ndarray) -> np.ndarray:
    """Add per-entity counts (``acc``, by position in ``uniq``) to the open step; returns the
    ids that counted for the first time in the step."""
    n_uniq = uniq.shape[0]
    first = np.empty(n_uniq, np.int32)
    n_first = 0
    for j in range(n_uniq):
        if j + AHEAD < n_uniq:
            prefetch(values, uniq[j + AHEAD])
            prefetch(step_amounts, uniq[j + AHEAD])
        if acc[j]:
            e = uniq[j]
            if step_amounts[e] == 0:
                first[n_first] = e
                n_first += 1
            step_amounts[e] += acc[j]
            values[e] += acc[j]
    return first[:n_first]


@njit(cache=True, nogil=True)
def _masked_pairs(
    inv: np.ndarray, ids: np.ndarray, mask: np.ndarray, peers: np.ndarray, n_uniq: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The masked rows as (entity id, pair key), and which of the batch's entities (positions
    in its distinct ids) have one."""
    n = inv.shape[0]
    entity = np.empty(n, np.int64)
    keys = np.empty(n, np.uint64)
    concerned = np.zeros(n_uniq, np.bool_)
    k = 0
    for r in range(n):
        if mask[r]:
            e = ids[r]
            entity[k] = e
            keys[k] = peers[r] * _PAIR_MULTIPLIER + np.uint64(e + 1)
            concerned[inv[r]] = True
            k += 1
    return entity[:k], keys[:k], concerned


@njit(cache=True, nogil=True)
def _take_step(step_amounts: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.int64]:
    """What each id added in the step (``step_amounts[ids]``), zeroed there as it is read,
    and the largest: one pass over the ids at random places instead of numpy's two (the
    read, then the zeroing) and a third for the largest; a step of new host pairs has tens
    of millions of ids."""
    out = np.empty(ids.shape[0], np.int64)
    top = np.int64(0)
    for i in range(ids.shape[0]):
        if i + AHEAD < ids.shape[0]:
            prefetch(step_amounts, ids[i + AHEAD])
        e = ids[i]
        a = np.int64(step_amounts[e])
        step_amounts[e] = 0
        out[i] = a
        top = max(top, a)
    return out, top


@njit(cache=True, nogil=True)
def _spread_fold(ids: np.ndarray, amounts: np.ndarray, spread: np.ndarray, spread_ids: np.ndarray, n: int) -> int:
    """Add a closed step's chunk to the spread amounts; ``spread_ids[:n]`` lists the ids
    with an amount (each once). Returns the new n."""
    for i in range(ids.shape[0]):
        if i + AHEAD < ids.shape[0]:
            prefetch(spread, ids[i + AHEAD])
        e = ids[i]
        if amounts[i] == 0:
            continue
        if spread[e] == 0:  # amounts are never negative: 0 means not listed
            spread_ids[n] = e
            n += 1
        spread[e] += amounts[i]
    return n


@njit(cache=True, nogil=True)
def _take_back(values: np.ndarray, ids: np.ndarray, amounts: np.ndarray) -> None:
    """``values[ids] -= amounts`` (``ids`` distinct) in one pass: numpy's reads, subtracts,
    then writes, three passes at random places over the ids of a step of host pairs."""
    for i in range(ids.shape[0]):
        if i + AHEAD < ids.shape[0]:
            prefetch(values, ids[i + AHEAD])
        values[ids[i]] -= amounts[i]


#: closed steps' amounts are widened to int64 this many at a time, through one buffer: a step
#: of host pairs holds millions, and widening it whole made a new array of that size (its
#: pages faulted in) at every fold into the spread part
_WIDEN_CHUNK = 1 << 16


def _widened(ids: np.ndarray, amounts: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, their amounts as int64) at most ``_WIDEN_CHUNK`` at a time. One type of
    amounts for the compiled loops: numba compiles a loop once per argument types, and a
    compilation costs seconds of CPU; the ring keeps amounts in the smallest type that holds
    them."""
    if amounts.dtype == np.int64:
        yield ids, amounts
        return
    buffer = np.empty(min(len(amounts), _WIDEN_CHUNK), np.int64)
    for at in range(0, len(amounts), _WIDEN_CHUNK):
        part = amounts[at : at + _WIDEN_CHUNK]
        wide = buffer[: len(part)]
        wide[:] = part
        yield ids[at : at + _WIDEN_CHUNK], wide


@njit(cache=True, nogil=True)
def _spread_expire(
    spread_ids: np.ndarray, n: int, spread: np.ndarray, values: np.ndarray, leaving: int, span: int
) -> int:
    """Take back ``leaving`` of ``span`` steps' share of each spread amount (``a * leaving //
    span``, computed so as not to overflow: amounts can be bits over days); returns how many
    ids still have an amount, listed first in ``spread_ids``."""
    k = 0
    for i in range(n):
        e = spread_ids[i]
        a = spread[e]
        share = a // span * leaving + a % span * leaving // span
        values[e] -= share
        spread[e] = a - share
        if a - share != 0:
            spread_ids[k] = e
            k += 1
    return k


#: what ``SlotHistory`` keeps per slot: times in whole seconds (uint32, until 2106), enough to
#: tell the periods apart (they are whole seconds long): 20 bytes a slot
LAST_ROW, CLN_BYTES, CLN_PKTS, SRV_BYTES, SRV_PKTS = range(5)
_HISTORY_WIDTH = 5


@njit(cache=True, nogil=True)
def _recall(
    slot: np.ndarray,
    new: np.ndarray,
    at_ms: np.ndarray,
    cln_bytes: np.ndarray,
    cln_pkts: np.ndarray,
    srv_bytes: np.ndarray,
    srv_pkts: np.ndarray,
    table: np.ndarray,
) -> np.ndarray:
    """Per session row (in arrival order): when its session's previous row arrived, and when
    each side last sent bytes and packets before it (milliseconds, rounded down to the second;
    0: never); then this row is noted. A slot taken by a new session forgets the old one's."""
    n = slot.shape[0]
    out = np.empty((5, n), np.int64)
    # plain element reads and writes: a record taken as a row view (``table[slot[i]]``, an
    # array view per row) and cleared with ``rec[:] = 0`` made this pass three to four times
    # slower (40 against 9 ns a row in slot order, 72 against 23 with half the slots at random)
    zero = np.uint32(0)
    for i in range(n):
        s = slot[i]
        t = np.uint32(at_ms[i] // 1000)
        if new[i]:
            last = cb = cp = sb = sp = zero
        else:
            last, cb, cp = table[s, LAST_ROW], table[s, CLN_BYTES], table[s, CLN_PKTS]
            sb, sp = table[s, SRV_BYTES], table[s, SRV_PKTS]
        out[LAST_ROW, i] = np.int64(last) * 1000
        out[CLN_BYTES, i] = np.int64(cb) * 1000
        out[CLN_PKTS, i] = np.int64(cp) * 1000
        out[SRV_BYTES, i] = np.int64(sb) * 1000
        out[SRV_PKTS, i] = np.int64(sp) * 1000
        table[s, LAST_ROW] = t
        table[s, CLN_BYTES] = t if cln_bytes[i] > 0 else cb
        table[s, CLN_PKTS] = t if cln_pkts[i] > 0 else cp
        table[s, SRV_BYTES] = t if srv_bytes[i] > 0 else sb
        table[s, SRV_PKTS] = t if srv_pkts[i] > 0 else sp
    return out


class SlotHistory:
    """Per tracker slot, when its session's last row arrived and when each side last sent:
    what tells whether a row is its session's first in an alerting period that concerns an
    entity (COUNT), for every definition at once. One record a slot, read and written once per
    row; marks per definition instead cost a memory access per row and definition."""

    def __init__(self) -> None:
        self.table = np.zeros((1024, _HISTORY_WIDTH), np.uint32)
        self.slots_used = 0  # every slot seen is below this

    def recall(self, slot: np.ndarray, new: np.ndarray, at_ms: np.ndarray, sessions: SessionBatch) -> np.ndarray:
        """The (5, n) times before each row (``LAST_ROW`` ...); the rows are noted."""
        top = int(slot.max()) if len(slot) else -1
        self.slots_used = max(self.slots_used, top + 1)
        if top >= len(self.table):
            table = np.zeros((room_for(len(self.table), top + 1), _HISTORY_WIDTH), np.uint32)
            table[: len(self.table)] = self.table
            self.table = table
        return _recall(
            slot,
            new,
            at_ms,
            sessions["cln_bytes"],
            sessions["cln_pkts"],
            sessions["srv_bytes"],
            sessions["srv_pkts"],
            self.table,
        )

    def nbytes(self) -> int:
        return used_nbytes(self.table, self.slots_used)


class _Window:
    """What both kinds of window share: one value per entity id, grown as ids appear."""

    values: np.ndarray

    def value(self, ids: np.ndarray) -> np.ndarray:
        self.values = _grow(self.values, int(ids.max()) + 1 if len(ids) else 0)
        return self.values[ids]

    def active_ids(self) -> np.ndarray:
        """Ids that have something in the window."""
        return np.flatnonzero(self.values)


class SumWindow(_Window):
    """Sliding sums per entity id: exact while the past steps fit in ``max_step_bytes``.

    The ring keeps, per step, what each entity added in it, to take back when the step leaves
    the window. When the closed steps outgrow the budget, the oldest are folded into the
    *spread* part: one amount per entity, taken to have arrived evenly over the steps it
    covers, and taken back in that proportion as those steps leave. Totals are kept (all of
    it leaves by the time its newest step does); a value may leave up to the spread's span
    early or late when an entity's traffic was uneven. ``spread_steps`` says how many of the
    window's steps are held that way now (0: exact)."""

    def __init__(self, step_ms: int, n_buckets: int, max_step_bytes: int = 64 << 20, dtype: type = np.int64) -> None:
        self.step_ms = step_ms
        self.n_buckets = n_buckets
        self.max_step_bytes = max_step_bytes
        #: of the per-entity arrays: counts (COUNT's contributions) fit in 32 bits, and a
        #: definition of host pairs has an entry for every pair in its window
        self.dtype = dtype
        self.values = np.zeros(1024, dtype)
        # closed steps: per bucket, (ids, what each added) chunks
        self._ring: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        # the open step: what each id added in it, and the ids that did (each once)
        self._open_bucket = -1
        self._step_amounts: np.ndarray = np.zeros(1024, dtype)
        self._step_ids: list[np.ndarray] = []
        # the spread part: what each id has left (``_spread_ids[:_n_spread]`` lists those
        # with an amount), and the buckets it covers
        self._spread_left: np.ndarray = np.zeros(1024, dtype)
        self._spread_ids = np.zeros(1024, np.int32)
        self._n_spread = 0
        self.spread_from = 0
        self.spread_to = -1  # empty while spread_to < spread_from
        self.steps_spread = 0  # steps folded into the spread part so far

    def fold(
        self,
        inv: np.ndarray,
        uniq: np.ndarray,
        mask: np.ndarray,
        amounts: np.ndarray,
        every_concerned: bool,
        bucket: int,
        counts: np.ndarray | None = None,
        count_window: SumWindow | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add a batch's masked rows to the bucket ``bucket``, and their ``counts`` to the same
        bucket of ``count_window`` (see ``_fold_entities``); returns (the entities concerned, as
        positions in ``uniq``; their values now)."""
        if counts is None or count_window is None:
            counts, count_window = np.zeros(len(inv), bool), None
        sums = _accumulate(inv, len(uniq), mask, amounts, counts)
        return self.fold_accumulated(uniq, sums, every_concerned, bucket, count_window)

    def fold_accumulated(
        self,
        uniq: np.ndarray,
        sums: np.ndarray,
        every_concerned: bool,
        bucket: int,
        count_window: SumWindow | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``fold`` for rows already summed per entity (``_accumulate``'s ``sums``)."""
        self._open(bucket, uniq)
        if count_window is None:
            count_values, count_step = np.zeros(0, np.int32), np.zeros(0, np.int32)
        else:
            count_window._open(bucket, uniq)
            count_values, count_step = count_window.values, count_window._step_amounts
        local, now, first, first_counted = _fold_entities(
            uniq, sums, every_concerned, self.values, self._step_amounts, count_values, count_step
        )
        if len(first):
            self._step_ids.append(first)
        if len(first_counted) and count_window is not None:
            count_window._step_ids.append(first_counted)
        return local, now

    def count(self, inv: np.ndarray, uniq: np.ndarray, mask: np.ndarray, counts: np.ndarray, bucket: int) -> None:
        """Add the masked rows' ``counts`` (0/1 bools, or a collector's integer counts) to the
        bucket ``bucket``."""
        if counts.dtype == np.bool_:  # the engine's: one pass instead of numpy's four (two copies, floats)
            acc = _count_rows(inv, len(uniq), mask, counts)
        else:
            acc = np.bincount(inv[mask], weights=counts[mask], minlength=len(uniq)).astype(np.int64)
        self.add_counts(acc, uniq, bucket)

    def add_counts(self, acc: np.ndarray, uniq: np.ndarray, bucket: int) -> None:
        """Add counts per entity (``acc``, by position in ``uniq``) to the bucket ``bucket``."""
        self._open(bucket, uniq)
        first = _add_counts(acc, uniq, self.values, self._step_amounts)
        if len(first):
            self._step_ids.append(first)

    def _open(self, bucket: int, uniq: np.ndarray) -> None:
        """``bucket`` is the open step; room for the ids ``uniq``."""
        if bucket != self._open_bucket:
            self._close_step()
            self._open_bucket = bucket
        if len(uniq):
            size = int(uniq.max()) + 1
            self.values = _grow(self.values, size)
            self._step_amounts = _grow(self._step_amounts, size)

    def _open_chunk(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The open step as a ring chunk (copies), or None if nothing was added in it."""
        if not self._step_ids:
            return None
        ids = np.concatenate(self._step_ids)
        return ids, _compact(self._step_amounts[ids])

    def _close_step(self) -> None:
        """The open step goes to the ring as one chunk."""
        if not self._step_ids:
            return
        ids = np.concatenate(self._step_ids)
        amounts, top = _take_step(self._step_amounts, ids)
        self._ring.setdefault(self._open_bucket, []).append((ids, _compact(amounts, int(top))))
        self._step_ids = []

    def advance(self, bucket: int) -> None:
        """``bucket`` is now the newest: take back what left the window, compact closed
        buckets, and keep the closed ones within the byte budget."""
        if self._open_bucket < bucket:
            self._close_step()
        oldest = bucket - self.n_buckets + 1
        self._expire_spread(oldest)
        for b in [b for b in self._ring if b < oldest]:
            for ids, amounts in self._ring.pop(b):  # ids are distinct within a chunk
                for part, wide in _widened(ids, amounts):
                    _take_back(self.values, part, wide)
        closed = sorted(b for b in self._ring if b < bucket)
        for b in closed:
            if len(self._ring[b]) > 1:
                self._ring[b] = [self._merged(self._ring[b])]
        ring_bytes = sum(ids.nbytes + amounts.nbytes for b in closed for ids, amounts in self._ring[b])
        for b in closed:  # oldest first
            if ring_bytes <= self.max_step_bytes:
                break
            ids, amounts = self._ring.pop(b)[0]
            ring_bytes -= ids.nbytes + amounts.nbytes
            self._fold_into_spread(b, ids, amounts, oldest)

    def _fold_into_spread(self, b: int, ids: np.ndarray, amounts: np.ndarray, oldest: int) -> None:
        """Fold the closed bucket ``b`` (older ones are already folded) into the spread part."""
        if self.spread_to < self.spread_from:
            self.spread_from = max(b, oldest)
        self.spread_to = b
        self._spread_left = _grow(self._spread_left, len(self.values))
        self._spread_ids = _grow(self._spread_ids, len(self.values))
        for part, wide in _widened(ids, amounts):
            self._n_spread = _spread_fold(part, wide, self._spread_left, self._spread_ids, self._n_spread)
        self.steps_spread += 1

    def _expire_spread(self, oldest: int) -> None:
        """Take back the spread part's share of the buckets that left the window."""
        if self.spread_to < self.spread_from or oldest <= self.spread_from:
            return
        span = self.spread_to - self.spread_from + 1
        leaving = min(oldest, self.spread_to + 1) - self.spread_from
        self._n_spread = _spread_expire(self._spread_ids, self._n_spread, self._spread_left, self.values, leaving, span)
        self.spread_from += leaving

    def amounts_of(self, ids: np.ndarray, bucket: int) -> np.ndarray:
        """What each id added in the step ``bucket``, the open one (restored from a snapshot,
        part of it is held as a closed chunk)."""
        self._step_amounts = _grow(self._step_amounts, int(ids.max()) + 1 if len(ids) else 0)
        out = self._step_amounts[ids].astype(np.int64) if self._open_bucket == bucket else np.zeros(len(ids), np.int64)
        if bucket in self._ring:
            out += self.amounts_in(ids, np.full(len(ids), bucket), np.full(len(ids), bucket))
        return out

    def amounts_in(self, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """What each id added in the closed steps ``lo[i]..hi[i]`` (its own range each); a
        range over the spread part gets its share of the spread amount."""
        out = np.zeros(len(ids), np.int64)
        todo = lo <= hi
        if not todo.any():
            return out
        order = np.argsort(ids)
        sorted_ids = ids[order]
        for b, chunks in self._ring.items():
            within = todo & (lo <= b) & (b <= hi)
            if not within.any():
                continue
            for chunk_ids, amounts in chunks:
                at = np.minimum(np.searchsorted(sorted_ids, chunk_ids), len(ids) - 1)
                found = sorted_ids[at] == chunk_ids
                who = order[at[found]]
                keep = within[who]
                np.add.at(out, who[keep], amounts[found][keep].astype(np.int64))
        if self.spread_to >= self.spread_from:
            first, last = np.maximum(lo, self.spread_from), np.minimum(hi, self.spread_to)
            overlap = np.where(todo, np.maximum(last - first + 1, 0), 0)
            if overlap.any():
                span = self.spread_to - self.spread_from + 1
                self._spread_left = _grow(self._spread_left, int(ids.max()) + 1)
                out += self._spread_left[ids] * overlap // span
        return out

    def spread_steps(self) -> int:
        """How many of the window's steps are held as an even spread now (0: all exact)."""
        return max(0, self.spread_to - self.spread_from + 1)

    def _merged(self, chunks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        if len(chunks) == 1:
            return chunks[0]
        ids = np.concatenate([c[0] for c in chunks])
        amounts = np.concatenate([c[1].astype(np.int64) for c in chunks])
        uniq, sums = _sum_by_id(ids, amounts, np.empty(len(self.values), np.int32))
        return uniq.astype(np.int32), _compact(sums)  # the ring keeps ids as int32

    def nbytes(self, ids_used: int) -> int:
        """Bytes held, the per-id arrays up to ``ids_used`` (beyond: room never written)."""
        ring = sum(a.nbytes + b.nbytes for chunks in self._ring.values() for a, b in chunks)
        per_id = (self.values, self._step_amounts, self._spread_left, self._spread_ids)
        return ring + sum(ids.nbytes for ids in self._step_ids) + sum(used_nbytes(a, ids_used) for a in per_id)

    def state(self) -> dict[str, np.ndarray]:
        """What a snapshot needs; views of live arrays among them: written under the engine's lock."""
        ring = {b: list(chunks) for b, chunks in self._ring.items()}
        chunk = self._open_chunk()
        if chunk is not None:
            ring.setdefault(self._open_bucket, []).append(chunk)
        buckets = sorted(ring)
        merged = [self._merged(ring[b]) for b in buckets]
        return {
            "values": self.values,
            "ring_buckets": np.array(buckets, np.int64),
            "ring_sizes": np.array([len(m[0]) for m in merged], np.int64),
            "ring_ids": np.concatenate([m[0] for m in merged]) if merged else np.empty(0, np.int64),
            "ring_amounts": np.concatenate([m[1] for m in merged]) if merged else np.empty(0, np.int64),
            "spread_ids": self._spread_ids[: self._n_spread],
            "spread_amounts": self._spread_left[self._spread_ids[: self._n_spread]],
            "spread_span": np.array([self.spread_from, self.spread_to, self.steps_spread], np.int64),
        }

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.values = state["values"].astype(self.dtype)
        offsets = np.concatenate([[0], np.cumsum(state["ring_sizes"])]).astype(np.int64)
        for i, b in enumerate(state["ring_buckets"].tolist()):
            sl = slice(offsets[i], offsets[i + 1])
            self._ring[int(b)] = [(state["ring_ids"][sl].astype(np.int32), _compact(state["ring_amounts"][sl]))]
        if "spread_span" in state:  # snapshots from before the byte budget have none
            ids = state["spread_ids"].astype(np.int64)
            self._spread_left = np.zeros(len(self.values), self.dtype)
            self._spread_left[ids] = state["spread_amounts"]
            self._spread_ids = np.zeros(len(self.values), np.int32)
            self._spread_ids[: len(ids)] = ids
            self._n_spread = len(ids)
            self.spread_from, self.spread_to, self.steps_spread = (int(v) for v in state["spread_span"])


class DistinctWindow(_Window):
    """Sliding distinct counts of peers per entity id: exact up to a bound, then HyperLogLog."""

    def __init__(
        self,
        step_ms: int,
        n_buckets: int,
        exact_limit: int = 10_000,
        max_pairs: int = 16_000_000,
        max_sketches: int = 256,
    ):
        self.step_ms = step_ms
        self.n_buckets = n_buckets
        self.exact_limit = exact_limit
        self.max_sketches = max_sketches
        self.values = np.zeros(1024, np.int64)  # exact counts; estimates for sketched ids
        self.pairs = PairTable(max_pairs)
        # sketches: entity id -> slot; registers per (ring position, slot)
        self.sketch_slot: dict[int, int] = {}
        self._regs = np.zeros((n_buckets, 0, HLL_M), np.uint8)
        self._reg_bucket = np.full(n_buckets, -1, np.int64)  # the bucket each ring position holds

    # -- updates --------------------------------------------------------------------------

    def fold(
        self, inv: np.ndarray, uniq: np.ndarray, ids: np.ndarray, mask: np.ndarray, peers: np.ndarray, bucket: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add a batch's masked rows (``ids``: each row's entity id, ``peers``: its peer's key)
        to the bucket ``bucket``; returns (the entities concerned, as positions in ``uniq``,
        the batch's distinct ids (``inv`` places each row among them); their values now)."""
        entity, keys, concerned = _masked_pairs(inv, ids, mask, peers, len(uniq))
        self._add_pairs(entity, keys, bucket)
        local = np.flatnonzero(concerned)
        return local, self.value(uniq[local])

    def fold_hosts(
        self,
        inv: np.ndarray,
        uniq: np.ndarray,
        ids: np.ndarray,
        mask: np.ndarray,
        own: np.ndarray,
        keys_by_id: np.ndarray,
        bucket: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``fold`` for the unique hosts of hosts: the rows are the sessions' client sides, then
        their server sides (``own``: each row's host key; ``keys_by_id``: each host id's), and
        the two directions of a pair of hosts go to one slot (``BothWaysPairTable``)."""
        pairs = self.pairs if isinstance(self.pairs, BothWaysPairTable) else self._take_pairs_of_hosts(keys_by_id)
        keys, sides, concerned = session_pairs(inv, ids, mask, own, len(uniq))
        if len(keys):
            self.values = _grow(self.values, int(sides.max()) + 1)
            if self.sketch_slot:
                sketched = np.fromiter(self.sketch_slot, np.int64, len(self.sketch_slot))
                for side in (0, 1):
                    held = np.isin(sides[:, side], sketched)
                    if held.any():
                        self._sketch_add(sides[held, side], keys[held], bucket)
                        sides[held, side] = -1
            over = pairs.add_both(keys, sides, bucket, self.exact_limit, self.values)
            for e in over.tolist():  # once per entity that outgrows exact counting
                self._to_sketch(int(e))
        local = np.flatnonzero(concerned)
        return local, self.value(uniq[local])

    def _take_pairs_of_hosts(self, keys_by_id: np.ndarray) -> BothWaysPairTable:
        """The table for pairs of hosts, in place of the (entity, peer) pairs' table: empty, or
        from a file of before 2026-12-05, which held the unique hosts of hosts as (host, peer)
        pairs, one per direction; those become the same directions of pairs of hosts. A
        sketched host's registers keep the hashes of its earlier keys: a peer seen before and
        after may count twice in its estimate until it leaves the window."""
        if not len(self.pairs):
            table = BothWaysPairTable.following(self.pairs)
        else:
            old = self.pairs.pairs()
            entity = old["entity"].astype(np.int64)
            peer = (old["keys"] - (entity + 1).astype(np.uint64)) * _PAIR_INVERSE
            keys, side = directions_of(keys_by_id[entity], peer)
            table = BothWaysPairTable.from_directions(keys, entity, side, old["step"], self.pairs)
        self.pairs = table
        return table

    def _add_pairs(self, entity: np.ndarray, keys: np.ndarray, bucket: int) -> None:
        if not len(entity):
            return
        self.values = _grow(self.values, int(entity.max()) + 1)
        if self.sketch_slot:
            sketched = np.isin(entity, np.fromiter(self.sketch_slot, np.int64, len(self.sketch_slot)))
            if sketched.any():
                self._sketch_add(entity[sketched], keys[sketched], bucket)
                entity, keys = entity[~sketched], keys[~sketched]
        over = self.pairs.add(keys, entity, bucket, self.exact_limit, self.values)
        for e in over.tolist():  # once per entity that outgrows exact counting
            self._to_sketch(int(e))

    def advance(self, bucket: int) -> None:
        self.pairs.expire(bucket - self.n_buckets + 1, self.values)
        if self.sketch_slot:
            self._refresh_sketches(bucket)

    # -- sketches -------------------------------------------------------------------------

    def _position(self, bucket: int) -> int:
        pos = bucket % self.n_buckets
        if self._reg_bucket[pos] != bucket:
            self._regs[pos] = 0
            self._reg_bucket[pos] = bucket
        return pos

    def _sketch_add(self, entity: np.ndarray, keys: np.ndarray, bucket: int) -> None:
        pos = self._position(bucket)
        touched = distinct(entity)
        slots = np.array([self.sketch_slot[int(e)] for e in touched.tolist()], np.int64)  # per entity
        row_slot = slots[np.searchsorted(touched, entity)]
        reg, rank = hll_cells(mix64(keys))
        np.maximum.at(self._regs[pos], (row_slot, reg), rank)
        self.values[touched] = self._estimate(touched, bucket)

    def _estimate(self, entities: np.ndarray, bucket: int) -> np.ndarray:
        oldest = bucket - self.n_buckets + 1
        valid = (self._reg_bucket >= oldest) & (self._reg_bucket <= bucket)
        slots = [self.sketch_slot[int(e)] for e in entities]
        regs = self._regs[valid][:, slots, :].max(axis=0) if valid.any() else np.zeros((len(slots), HLL_M), np.uint8)
        return np.round(hll_estimate(regs)).astype(np.int64)

    def _to_sketch(self, e: int) -> None:
        if len(self.sketch_slot) >= self.max_sketches:
            return  # stays exact; the pair table bound still holds
        used = set(self.sketch_slot.values())
        slot = next(i for i in range(self.max_sketches) if i not in used)
        if slot >= self._regs.shape[1]:
            grown = np.zeros((self.n_buckets, min(self.max_sketches, max(4, 2 * self._regs.shape[1])), HLL_M), np.uint8)
            grown[:, : self._regs.shape[1]] = self._regs
            self._regs = grown
        self._regs[:, slot] = 0
        self.sketch_slot[e] = slot
        keys, buckets = self.pairs.take_entity(e)
        reg, rank = hll_cells(mix64(keys))
        for b in np.unique(buckets).tolist():
            pos = self._position(int(b))
            sel = buckets == b
            np.maximum.at(self._regs[pos, slot], reg[sel], rank[sel])
        newest = int(buckets.max()) if len(buckets) else 0
        self.values[e] = int(self._estimate(np.array([e]), newest)[0])

    def _refresh_sketches(self, bucket: int) -> None:
        entities = np.fromiter(self.sketch_slot, np.int64, len(self.sketch_slot))
        estimates = self._estimate(entities, bucket)
        self.values[entities] = estimates
        for e, est in zip(entities.tolist(), estimates.tolist(), strict=True):
            if est == 0:  # nothing left in its window: back to exact counting
                self._regs[:, self.sketch_slot.pop(e)] = 0

    # -- bookkeeping ----------------------------------------------------------------------

    def nbytes(self, ids_used: int) -> int:
        """Bytes held, the values up to ``ids_used`` (beyond: room never written)."""
        return used_nbytes(self.values, ids_used) + self.pairs.nbytes() + self._regs.nbytes

    def state(self) -> dict[str, np.ndarray]:
        """What a snapshot needs; views of live arrays among them: written under the engine's lock."""
        pairs = self.pairs.state()
        return {
            "values": self.values,
            "pair_key_version": np.array([PAIR_KEY_VERSION], np.int64),
            "pair_slots": pairs["slots"],
            "pair_base": pairs["base"],
            "sketch_entities": np.fromiter(self.sketch_slot, np.int64, len(self.sketch_slot)),
            "sketch_slots": np.fromiter(self.sketch_slot.values(), np.int64, len(self.sketch_slot)),
            "regs": self._regs,
            "reg_bucket": self._reg_bucket,
        }

    def load(self, state: dict[str, np.ndarray]) -> None:
        version = int(state.get("pair_key_version", [1])[0])
        if version not in (2, PAIR_KEY_VERSION):
            log.warning("alert window of distinct counts saved by an older version; it starts empty")
            return
        self.values = state["values"].astype(np.int64).copy()
        if "pair_slots" in state:
            pairs = {"slots": state["pair_slots"], "base": state["pair_base"]}
        else:  # a file of before 2026-12-04: the pairs one by one
            pairs = {"keys": state["pair_keys"], "entity": state["pair_entity"], "step": state["pair_bucket"]}
        self.pairs = pair_table_from_state(pairs, self.pairs.max_pairs)
        if version == 2 and type(self.pairs) is PairTable:  # pairs of hosts are keyed otherwise
            self.pairs = _keyed_anew(self.pairs)
        self.sketch_slot = dict(zip(state["sketch_entities"].tolist(), state["sketch_slots"].tolist(), strict=True))
        if state["regs"].shape[0] == self.n_buckets:
            self._regs = state["regs"].copy()
            self._reg_bucket = state["reg_bucket"].copy()


def _keyed_anew(table: PairTable) -> PairTable:
    """The (entity, peer) pairs of a snapshot of ``PAIR_KEY_VERSION`` 2 under this version's
    keys: the same pairs, entities and steps. A sketched entity's registers keep the hashes of
    its earlier keys: a peer seen before and after may count twice in its estimate until it
    leaves the window."""
    if not len(table):
        return table
    pairs = table.pairs()
    entity = pairs["entity"].astype(np.uint64)
    peer = (pairs["keys"] - (entity + np.uint64(1))) * _PAIR_INVERSE_2
    keys = peer * _PAIR_MULTIPLIER + entity + np.uint64(1)
    return PairTable.from_state({"keys": keys, "entity": pairs["entity"], "step": pairs["step"]}, table.max_pairs)
