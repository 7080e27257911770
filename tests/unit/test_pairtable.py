"""The pair table of distinct-count windows against a plain dict, under random adds,
expiries and entities taken out: deletions shift entries back, also across the table's end."""

import numpy as np
import pytest

from sluice.alerts.pairtable import BothWaysPairTable, PairTable, pair_table_from_state


def check(table: PairTable, truth: dict[int, tuple[int, int]], values: np.ndarray) -> None:
    state = table.pairs()
    got = dict(
        zip(state["keys"].tolist(), zip(state["entity"].tolist(), state["step"].tolist(), strict=True), strict=True)
    )
    assert got == truth
    assert len(table) == len(truth)
    counts = np.bincount([e for e, _ in truth.values()], minlength=len(values))
    assert (values == counts[: len(values)]).all()


@pytest.mark.parametrize("seed", range(6))
def test_random_adds_expiries_and_takes_match_a_dict(seed):
    rng = np.random.default_rng(seed)
    table = PairTable(size=16)  # small: it doubles, and runs wrap around its end
    truth: dict[int, tuple[int, int]] = {}
    values = np.zeros(40, np.int64)
    step = 1_900_000_000  # absolute step numbers far beyond 32 bits of relative ones' range
    key_space = rng.integers(1, 2**63, 300, dtype=np.int64).astype(np.uint64)
    for _ in range(200):
        op = rng.random()
        if op < 0.6:
            n = int(rng.integers(1, 30))
            keys = rng.choice(key_space, n)
            # a key is one (entity, peer) pair: its entity never changes
            entity = np.array(
                [truth[k][0] if k in truth else int(key_space.tolist().index(k) % 40) for k in keys.tolist()], np.int64
            )
            before = values.copy()
            over = table.add(keys, entity, step, 5, values)
            for k, e in zip(keys.tolist(), entity.tolist(), strict=True):
                truth[k] = (e, step)
            grew = np.flatnonzero((values > 5) & (values > before))
            assert set(over.tolist()) == set(grew.tolist())
        elif op < 0.85:
            step += int(rng.integers(0, 3))
            oldest = step - int(rng.integers(0, 4))
            table.expire(oldest, values)
            truth = {k: v for k, v in truth.items() if v[1] >= oldest}
        else:
            e = int(rng.integers(0, 40))
            keys, steps = table.take_entity(e)
            mine = {k: v for k, v in truth.items() if v[0] == e}
            assert dict(zip(keys.tolist(), steps.tolist(), strict=True)) == {k: v[1] for k, v in mine.items()}
            for k in mine:
                del truth[k]
            values[e] -= len(mine)
        check(table, truth, values)
    restored = PairTable.from_state(table.state())
    check(restored, truth, values)
    check(PairTable.from_state(table.pairs()), truth, values)  # the earlier form (files of before 2026-12-04)
    # the restored table goes on: every pair expires
    restored.expire(step + 1, values)
    assert len(restored) == 0 and not values.any()


def test_key_zero_is_kept_apart_from_empty_slots():
    table = PairTable()
    values = np.zeros(2, np.int64)
    table.add(np.array([0, 5], np.uint64), np.array([0, 1]), 10, 100, values)
    assert len(table) == 2 and values.tolist() == [1, 1]
    table.add(np.array([0], np.uint64), np.array([0]), 11, 100, values)
    assert len(table) == 2 and values.tolist() == [1, 1]


def test_pairs_beyond_the_bound_are_counted_as_dropped():
    table = PairTable(max_pairs=100)
    values = np.zeros(1, np.int64)
    table.add(np.arange(1, 151, dtype=np.uint64), np.zeros(150, np.int64), 1, 10**6, values)
    assert len(table) == 100 and table.dropped == 50 and values[0] == 100
    table.add(np.arange(1, 101, dtype=np.uint64), np.zeros(100, np.int64), 2, 10**6, values)  # seen again: kept
    assert len(table) == 100 and table.dropped == 50


def test_steps_before_the_first_one_and_large_entity_ids_are_kept_exactly():
    """A slot packs the entity id and the step (relative to the first step seen) in one word:
    steps before the first, and ids up to the entity bound, come back unchanged and expire
    in order."""
    table = PairTable()
    big = (1 << 24) - 1  # alerts.max_entities
    values = np.zeros(big + 1, np.int64)
    table.add(np.array([1, 2], np.uint64), np.array([3, big]), 1000, 100, values)
    table.add(np.array([3], np.uint64), np.array([big]), 990, 100, values)  # before the first step
    table.add(np.array([1], np.uint64), np.array([3]), 1001, 100, values)  # seen again: its step moves on
    check(table, {1: (3, 1001), 2: (big, 1000), 3: (big, 990)}, values)
    table.expire(995, values)
    check(table, {1: (3, 1001), 2: (big, 1000)}, values)
    keys, steps = table.take_entity(big)
    assert keys.tolist() == [2] and steps.tolist() == [1000]
    assert table.pairs()["keys"].tolist() == [1] and len(table) == 1


# -- both directions of a pair of hosts in one slot -----------------------------------------


def check_both(table: BothWaysPairTable, truth: dict[tuple[int, int], int], values: np.ndarray) -> None:
    """``truth``: (pair key, entity) -> last step, one item per direction held."""
    state = table.pairs()
    got = {(k, e): s for k, e, s in zip(state["keys"].tolist(), state["entity"].tolist(), state["step"].tolist(),
                                        strict=True)}
    assert got == truth
    assert len(table) == len(truth)
    counts = np.bincount([e for _, e in truth], minlength=len(values))
    assert (values == counts[: len(values)]).all()


@pytest.mark.parametrize("seed", range(6))
def test_both_ways_random_adds_expiries_and_takes_match_a_dict(seed):
    """Each pair of hosts has a fixed entity per side; a session sees either side or both."""
    rng = np.random.default_rng(seed)
    table = BothWaysPairTable(size=16)
    truth: dict[tuple[int, int], int] = {}
    values = np.zeros(40, np.int64)
    step = 1_900_000_000
    key_space = rng.integers(1, 2**63, 300, dtype=np.int64).astype(np.uint64)
    owners = {int(k): (int(i % 40), int((i * 7 + 3) % 40)) for i, k in enumerate(key_space)}
    for _ in range(200):
        op = rng.random()
        if op < 0.6:
            n = int(rng.integers(1, 30))
            keys = rng.choice(key_space, n)
            sides = np.array([owners[k] for k in keys.tolist()], np.int64)
            seen = rng.integers(0, 3, n)  # 0: side 0 only, 1: side 1 only, 2: both
            sides[seen == 1, 0] = -1
            sides[seen == 0, 1] = -1
            before = values.copy()
            over = table.add_both(keys, sides, step, 5, values)
            for k, (a, b) in zip(keys.tolist(), sides.tolist(), strict=True):
                for e in (a, b):
                    if e >= 0:
                        truth[(k, e)] = step
            grew = np.flatnonzero((values > 5) & (values > before))
            assert set(over.tolist()) == set(grew.tolist())
        elif op < 0.85:
            step += int(rng.integers(0, 3))
            oldest = step - int(rng.integers(0, 4))
            table.expire(oldest, values)
            truth = {ke: s for ke, s in truth.items() if s >= oldest}
        else:
            e = int(rng.integers(0, 40))
            keys, steps = table.take_entity(e)
            mine = {k: s for (k, owner), s in truth.items() if owner == e}
            assert sorted(zip(keys.tolist(), steps.tolist(), strict=True)) == sorted(mine.items())
            truth = {ke: s for ke, s in truth.items() if ke[1] != e}
            values[e] -= len(mine)
        check_both(table, truth, values)
    restored = pair_table_from_state(table.state())
    assert isinstance(restored, BothWaysPairTable)
    check_both(restored, truth, values)
    restored.expire(step + 1, values)
    assert len(restored) == 0 and not values.any() and not restored.t_keys.any()


def test_both_ways_directions_beyond_the_bound_are_counted_as_dropped():
    table = BothWaysPairTable(max_pairs=101)
    values = np.zeros(2, np.int64)
    both = np.tile([0, 1], (60, 1))
    table.add_both(np.arange(1, 61, dtype=np.uint64), both, 1, 10**6, values)
    # 101 directions: the 51st pair keeps its first direction only, the rest are dropped
    assert len(table) == 101 and table.dropped == 19 and values.tolist() == [51, 50]
    assert table._counters[2] == 51  # slots in use
    table.add_both(np.arange(1, 51, dtype=np.uint64), both[:50], 2, 10**6, values)  # seen again: kept
    assert len(table) == 101 and table.dropped == 19
    following = BothWaysPairTable.following(table)
    assert following.dropped == 19 and following.max_pairs == 101 and len(following) == 0


def test_a_directional_table_is_not_given_pairs_of_hosts():
    with pytest.raises(TypeError, match="pairs of hosts"):
        BothWaysPairTable().add(np.array([1], np.uint64), np.array([0]), 1, 10, np.zeros(1, np.int64))
