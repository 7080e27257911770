"""The alert engine's key index and batch grouping against plain-Python models."""

from __future__ import annotations

import numpy as np

from sluice.alerts.entities import address_keys
from sluice.alerts.keyindex import MAX_STAMP, BatchGrouping, KeyIndex, group_rows, mix64, note_seen, seen_and_grouped
from sluice.flows.schema import address_words


def test_the_index_agrees_with_a_dict_under_churn():
    rng = np.random.default_rng(3)
    index = KeyIndex(16, max_ids=5_000)
    model: dict[int, int] = {}
    for round_ in range(300):
        # keys from a small range (many repeats, key 0 included) and a large one
        keys = np.concatenate([rng.integers(0, 3_000, 200), rng.integers(0, 2**64, 50, dtype=np.uint64)]).astype(
            np.uint64
        )
        ids, added = index.get_or_add(keys)
        seen_new: set[int] = set()
        for key, got, new in zip(keys.tolist(), ids.tolist(), added.tolist(), strict=True):
            key = key or 1  # 0 is stored as 1
            if key in model:
                assert got == model[key] and not new
            elif got < 0:  # full: never marked added, never remembered
                assert not new and len(model) >= index.max_ids
            else:
                assert new and key not in seen_new
                seen_new.add(key)
                model[key] = got
        live = set(model.values())
        assert len(live) == len(model) == len(index)  # ids are distinct among live keys
        assert max(live) < index.id_capacity
        if round_ % 3 == 2:  # forget a random third
            gone = [k for k in model if rng.random() < 0.33]
            index.remove(np.array([model[k] for k in gone], np.int64))
            for k in gone:
                del model[k]
        probe = np.array(list(model) + rng.integers(0, 2**64, 20, dtype=np.uint64).tolist(), np.uint64)
        expected = [model.get(int(k), -1) for k in probe.tolist()]
        assert index.lookup(probe).tolist() == expected
    assert set(index.live_ids().tolist()) == set(model.values())
    restored = KeyIndex.from_state(index.state(), max_ids=index.max_ids)
    keys = np.array(list(model), np.uint64)
    assert restored.lookup(keys).tolist() == [model[k] for k in model]
    ids, added = restored.get_or_add(np.array([2**63 + 5], np.uint64))
    assert added.all() and int(ids[0]) not in model.values()  # a freed or new id, not a live one


def test_removed_ids_are_handed_out_again_and_the_bound_holds():
    index = KeyIndex(16, max_ids=100)
    ids, _ = index.get_or_add(np.arange(1, 151, dtype=np.uint64))
    assert (ids[:100] >= 0).all() and (ids[100:] == -1).all()
    index.remove(ids[:40])
    again, added = index.get_or_add(np.arange(1000, 1050, dtype=np.uint64))
    assert added[:40].all() and set(again[:40].tolist()) == set(ids[:40].tolist())
    assert (again[40:] == -1).all() and len(index) == 100


def test_group_rows_matches_numpy():
    rng = np.random.default_rng(4)
    scratch = np.full(1000, 12345, np.int32)  # stale contents must not matter
    for n in (0, 1, 7, 5_000):
        ids = rng.integers(0, 1000, n)
        uniq, inv, first = group_rows(ids, scratch)
        assert sorted(uniq.tolist()) == np.unique(ids).tolist()
        assert (uniq[inv] == ids).all()
        assert (ids[first] == uniq).all()
        assert all(int(f) == int(np.flatnonzero(ids == u)[0]) for u, f in zip(uniq, first, strict=True))


def test_seen_and_grouped_matches_note_seen_then_group_rows_call_after_call():
    """The one pass against the two it replaces: the same grouping, the same times noted, the
    rows without an id (-1) given id 0 and listed. Marks left by earlier calls (larger ids
    among them, the table tens of thousands of ids: prefetched) must not count."""
    rng = np.random.default_rng(5)
    for size in (1_000, 100_000):
        marks = np.zeros(size, np.int64)
        seen, seen_before = np.zeros(size, np.int64), np.zeros(size, np.int64)
        for stamp, n in enumerate((0, 1, 7, 5_000, 5_000, 20_000), start=1):
            ids = rng.integers(-1, size, n)
            valid = rng.random(n) < 0.7 if stamp % 2 else np.zeros(0, bool)  # empty: every row
            expected_ids = np.where(ids < 0, 0, ids)
            note_seen(ids, valid if len(valid) else np.ones(n, bool), seen_before, 100 + stamp)
            want_uniq, want_inv, want_first = group_rows(expected_ids, np.empty(size, np.int32))
            got_ids = ids.copy()
            uniq, inv, first, full = seen_and_grouped(got_ids, valid, seen, 100 + stamp, marks, stamp)
            assert uniq.tolist() == want_uniq.tolist() and inv.tolist() == want_inv.tolist()
            assert first.tolist() == want_first.tolist()
            assert got_ids.tolist() == expected_ids.tolist()
            assert full.tolist() == np.flatnonzero(ids < 0).tolist()
            assert (seen == seen_before).all()


def test_a_batch_grouping_groups_without_noting_and_starts_its_marks_again_at_the_last_number():
    """``BatchGrouping`` as the merge path uses it (no times noted) and past ``MAX_STAMP``,
    where its marks are cleared: the grouping stays ``group_rows``'."""
    rng = np.random.default_rng(6)
    grouping = BatchGrouping()
    for stamp in (None, MAX_STAMP - 1, None, None):
        if stamp is not None:
            grouping.stamp = stamp
        ids = rng.integers(0, 500, 2_000)
        uniq, inv, first, full = grouping.group(ids, 500)
        want = group_rows(ids, np.empty(500, np.int32))
        assert [uniq.tolist(), inv.tolist(), first.tolist()] == [w.tolist() for w in want]
        assert len(full) == 0
    assert grouping.stamp == 2  # cleared after MAX_STAMP, counted from 1 again


def test_a_cleared_index_forgets_every_key_and_numbers_from_zero_again():
    index = KeyIndex(16)
    index.get_or_add(np.arange(100, 200, dtype=np.uint64))
    index.clear()
    assert len(index) == 0 and (index.lookup(np.arange(100, 200, dtype=np.uint64)) == -1).all()
    ids, added = index.get_or_add(np.array([7, 5, 7, 9], np.uint64))
    assert ids.tolist() == [0, 1, 0, 2] and added.tolist() == [True, True, False, True]
    assert index.live_ids().tolist() == [0, 1, 2]


def test_memory_counts_the_ids_in_use_not_the_room_grown_for_more():
    """Per-id arrays double as ids come; the room beyond the ids handed out is zeroed pages
    never written, so what is reported is the table and the ids in use."""
    index = KeyIndex(16)
    index.get_or_add(np.arange(1, 1101, dtype=np.uint64))
    assert index.id_capacity >= 2000 and index.ids_used == 1100  # room beyond the ids in use
    per_id = index.keys_by_id.itemsize + index.live.itemsize + 4  # key, live flag, free-stack entry
    assert index.nbytes() == index.t_keys.nbytes + index.t_ids.nbytes + 1100 * per_id
    index.remove(np.arange(500))  # given back: their ids stay below ids_used until handed out again
    index.get_or_add(np.arange(5001, 5501, dtype=np.uint64))
    assert index.ids_used == 1100


def test_unseen_since_lists_the_live_ids_seen_before_the_cutoff():
    rng = np.random.default_rng(5)
    index = KeyIndex(16, max_ids=10_000)
    ids, _ = index.get_or_add(rng.integers(1, 2**63, 3_000, dtype=np.uint64))
    index.remove(ids[::7])  # freed ids: never listed, whenever they were seen
    seen = rng.integers(0, 1_000, index.id_capacity)
    live = index.live_ids()
    for cutoff in (0, 1, 500, 1_000, 2_000):
        assert index.unseen_since(seen, cutoff).tolist() == live[seen[live] < cutoff].tolist()
    # an id beyond the times kept was never seen: listed
    short = seen[: int(live.max())]
    assert index.unseen_since(short, 0).tolist() == [int(live.max())]


def test_address_keys_are_the_saved_states_keys_any_address_and_layout():
    """Host keys are saved with the alert state (``KeyIndex.state``): the compiled pass must
    give what the formula always gave, lower half xor ``mix64`` of the upper (IPv4 exactly
    itself), for any bytes and for a column that is a strided view."""
    rng = np.random.default_rng(5)
    addresses = rng.integers(0, 256, (20_001, 16)).astype(np.uint8)
    addresses[:5000, :10] = 0
    addresses[:5000, 10:12] = 255  # IPv4-mapped
    hi, lo = address_words(addresses)
    assert (address_keys(addresses) == (lo ^ mix64(hi))).all()
    assert (address_keys(addresses[::3]) == (lo ^ mix64(hi))[::3]).all()
    v4 = addresses[:5000]
    place_values = np.uint64(256) ** np.arange(5, -1, -1, dtype=np.uint64)  # bytes 10..15, big-endian
    assert (address_keys(v4) == v4[:, 10:].astype(np.uint64) @ place_values).all()
