"""The alert windows' memory for past steps: bounded per definition, and what the bound costs."""

from __future__ import annotations

import numpy as np

from sluice.alerts import persist
from sluice.alerts.definition import Definition
from sluice.alerts.engine import AlertEngine
from sluice.alerts.keyindex import group_rows
from sluice.alerts.window import DistinctWindow, SumWindow

STEP_MS = 1000
N_BUCKETS = 60  # a 1 min window in 1 s steps


def fold(window: SumWindow, ids: np.ndarray, amounts: np.ndarray, bucket: int) -> None:
    window.advance(bucket)
    uniq, inv, _ = group_rows(ids.astype(np.int64), np.empty(int(ids.max()) + 1, np.int32))
    window.fold(inv, uniq, np.ones(len(ids), bool), amounts.astype(np.int64), False, bucket)


def closed_step_bytes(window: SumWindow, bucket: int) -> int:
    return sum(i.nbytes + a.nbytes for b, chunks in window._ring.items() if b < bucket for i, a in chunks)


def test_a_window_over_its_step_budget_stays_within_it_keeps_its_totals_and_empties():
    """20,000 entities each add the same amount in every step: the exact past steps need
    about 60 x 100 kB; the budget is 256 kB. The values stay those of the exact window
    (even traffic spreads exactly, up to rounding), and all of it leaves."""
    rng = np.random.default_rng(5)
    ids = np.arange(20_000)
    per_step = rng.integers(1, 200, len(ids))
    budgeted = SumWindow(STEP_MS, N_BUCKETS, max_step_bytes=256 << 10)
    exact = SumWindow(STEP_MS, N_BUCKETS, max_step_bytes=1 << 40)
    for bucket in range(1000, 1150):
        for window in (budgeted, exact):
            fold(window, ids, per_step, bucket)
        assert closed_step_bytes(budgeted, bucket) <= 256 << 10
        assert (budgeted.values >= 0).all()
        # an entity's value is off by at most the rounding of one share per spread fold
        assert np.abs(budgeted.values[ids] - exact.values[ids]).max() <= 2
    assert budgeted.spread_steps() > 30 and exact.spread_steps() == 0
    assert budgeted.nbytes(len(ids)) < exact.nbytes(len(ids)) / 5
    for bucket in range(1150, 1150 + N_BUCKETS + 1):  # nothing more arrives: everything leaves
        budgeted.advance(bucket)
        exact.advance(bucket)
    assert not budgeted.values.any() and not exact.values.any()
    assert budgeted.spread_steps() == 0


def test_steps_of_more_ids_than_one_widening_chunk_and_of_every_amount_width_spread_and_leave_whole():
    """A step of host pairs holds millions of ids; the closed steps' amounts (kept in the
    smallest type that holds them) are widened piece by piece as they are spread and taken
    back. With more ids than one piece and amounts of each width, the values stay those of
    the exact window, and everything leaves."""
    n = 150_000  # more than two pieces (``_WIDEN_CHUNK``)
    rng = np.random.default_rng(9)
    ids = rng.permutation(n)  # in no order, as a step's ids come
    for top in (200, 60_000, 4_000_000_000, 2**40):  # uint8, uint16, uint32, int64 in the ring
        per_step = rng.integers(1, top, n)
        budgeted = SumWindow(STEP_MS, N_BUCKETS, max_step_bytes=1 << 20)
        exact = SumWindow(STEP_MS, N_BUCKETS, max_step_bytes=1 << 40)
        for bucket in range(100, 100 + 2 * N_BUCKETS):
            for window in (budgeted, exact):
                fold(window, ids, per_step, bucket)
            assert np.abs(budgeted.values[ids] - exact.values[ids]).max() <= 2
        assert budgeted.spread_steps() > 0 and exact.spread_steps() == 0
        assert (exact.values[ids] == per_step * N_BUCKETS).all()
        for bucket in range(100 + 2 * N_BUCKETS, 100 + 3 * N_BUCKETS + 1):
            budgeted.advance(bucket)
            exact.advance(bucket)
        assert not budgeted.values.any() and not exact.values.any(), top


def test_uneven_traffic_in_the_spread_steps_is_kept_whole_and_leaves_within_one_window():
    """A burst in one step, folded into the spread part with quieter steps, is taken back
    evenly over the steps it is spread over: never more than was added, never negative, and
    gone one window after the last step it is spread with."""
    window = SumWindow(STEP_MS, N_BUCKETS, max_step_bytes=1 << 16)
    noise = np.arange(1, 20_000)  # other entities, to fill the budget
    total = 0
    for bucket in range(0, 40):
        burst = 1_000_000 if bucket == 5 else 1
        total += burst
        fold(window, np.concatenate([[0], noise]), np.concatenate([[burst], np.ones(len(noise), np.int64)]), bucket)
        assert 0 <= window.values[0] <= total
    assert window.spread_steps() > 0
    last = 39
    seen = []
    for bucket in range(40, last + N_BUCKETS + 1):
        window.advance(bucket)
        seen.append(int(window.values[0]))
        assert 0 <= window.values[0] <= total
    assert seen == sorted(seen, reverse=True) and seen[-1] == 0


def test_the_spread_part_survives_a_restart(tmp_path):
    definition = Definition(id=1, user_id=1, title="t", metric="bytes_sent", entity="host", threshold=10**12,
                            interval="1m")
    engine = AlertEngine(max_step_bytes=1 << 16)
    engine.set_definitions([definition])
    from .test_alerts import batch, one

    now = 1_700_000_000_000
    for step in range(30):
        sessions = [one(cln=f"10.2.{i // 256}.{i % 256}", sid=step * 10_000 + i, cbytes=10) for i in range(5000)]
        engine.evaluate(*batch(sessions), now + step * 1000)
    assert engine.spread_steps(1) > 0
    persist.save(engine, tmp_path / "a.bin")
    restored = AlertEngine(max_step_bytes=1 << 16)
    restored.set_definitions([definition])
    assert persist.load(restored, tmp_path / "a.bin")
    before, after = engine.states[1].window, restored.states[1].window
    assert restored.spread_steps(1) == engine.spread_steps(1)
    assert np.array_equal(before.values, after.values)
    for later in (40, 75, 95):  # they slide alike, and empty
        for e in (engine, restored):
            e.evaluate(*batch([]), now + later * 1000)
        assert np.array_equal(before.values, after.values)
    assert not after.values.any()


def test_the_step_being_filled_keeps_each_entity_once():
    """A 1 h window steps by a minute: at 10 evaluations a second, a step gathers 600 batches.
    The same 10,000 entities in each: the step holds them once (a chunk per batch held
    600 x 10,000 entries until the step closed)."""
    window = SumWindow(60_000, 60)
    ids = np.arange(10_000)
    sizes = []
    for _ in range(100):
        fold(window, ids, np.full(len(ids), 3), 7)
        sizes.append(window.nbytes(len(ids)))
    assert sizes[-1] == sizes[0]
    assert (window.values[ids] == 300).all()
    window.advance(8)  # the step closes: one chunk with each entity's 300
    window.advance(7 + 60)
    assert not window.values.any()


def test_a_distinct_window_costs_the_same_however_many_steps_a_pair_is_seen_in():
    """Unique hosts/ports keep each (entity, peer) pair with the last step it was seen in:
    seeing the same pairs in every step of the window adds nothing (a list of pairs per step
    grew by 4 bytes per pair and step)."""
    window = DistinctWindow(STEP_MS, N_BUCKETS)
    entity = np.repeat(np.arange(1000), 20)
    peers = np.tile(np.arange(20, dtype=np.uint64), 1000)
    uniq, inv, _ = group_rows(entity.astype(np.int64), np.empty(1000, np.int32))
    sizes = []
    for bucket in range(N_BUCKETS):
        window.advance(bucket)
        window.fold(inv, uniq, entity, np.ones(len(entity), bool), peers, bucket)
        sizes.append(window.nbytes(1000))
    assert sizes[-1] == sizes[1]
    assert (window.values[:1000] == 20).all()
    window.advance(N_BUCKETS + N_BUCKETS - 1)  # the last sighting leaves the window
    assert not window.values.any() and len(window.pairs) == 0


def test_peer_zero_counts_for_entity_zero_and_entity_one_alike():
    """Port 0 (ICMP) seen by the first two entities: the pair (entity 0, peer 0) was keyed 0,
    which the table stores as 1, the key of (entity 1, peer 0): entity 1's pair was lost."""
    window = DistinctWindow(STEP_MS, N_BUCKETS)
    entity = np.array([0, 1])
    uniq, inv, _ = group_rows(entity, np.empty(2, np.int32))
    window.fold(inv, uniq, entity, np.ones(2, bool), np.zeros(2, np.uint64), 0)
    assert window.values[:2].tolist() == [1, 1]


def test_a_window_counts_the_entities_in_use_not_the_room_grown_for_more():
    window = SumWindow(STEP_MS, N_BUCKETS)
    ids = np.arange(3000)
    fold(window, ids[:2000], np.full(2000, 3), 7)
    fold(window, ids, np.full(len(ids), 3), 7)
    assert len(window.values) >= 4000  # it grew by doubling: room for more
    open_step = sum(chunk.nbytes for chunk in window._step_ids)
    unspread = window._spread_left.nbytes + window._spread_ids.nbytes  # never spread: still their first 1024
    assert len(window._spread_left) == 1024
    assert window.nbytes(len(ids)) == 3000 * (8 + 8) + open_step + unspread  # values, the open step's amounts
