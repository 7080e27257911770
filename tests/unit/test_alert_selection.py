"""The compiled pass of sum definitions (``selection.select_sums``) against the numpy one it
replaces for them (``AlertEngine.select``, then the rows summed per entity), on random
batches: recurring sessions, both ends one entity, rows without an AS number, zero traffic,
prefilters and exceptions, batches over two periods and rows of a period already left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sluice.alerts.definition import AlertMetric, Definition, EntityType
from sluice.alerts.engine import AlertEngine, DefinitionState, Periods, prefilter_mask
from sluice.alerts.entities import BatchKeys
from sluice.alerts import selection
from sluice.alerts.selection import select_sums
from sluice.alerts.window import SlotHistory, _accumulate, unpack_sums
from sluice.flows.schema import SessionBatch

T0 = 1_700_000_000_000
SUM_METRICS = [m for m in AlertMetric if not m.is_distinct]


def random_batch(rng: np.random.Generator, n: int, slots: int) -> tuple[SessionBatch, np.ndarray, np.ndarray]:
    def addresses(count: int) -> np.ndarray:
        out = np.zeros((n, 16), np.uint8)
        out[:, 10:12] = 255
        out[:, 12:] = [10, 0, 0, 0]
        out[:, 15] = rng.integers(1, count + 1, n)  # few hosts: both ends are often one
        return out

    countries = np.array([b"US", b"NL", b"DE"], "S2")
    sessions = SessionBatch.build(
        n, session_id=np.arange(n, dtype=np.uint64), protocol=rng.choice([6, 17], n),
        cln_addr=addresses(4), srv_addr=addresses(4), cln_port=rng.integers(1024, 1030, n),
        srv_port=rng.choice([22, 80, 443], n), cln_bytes=rng.choice([0, 40, 1500], n),
        srv_bytes=rng.choice([0, 60, 9000], n), cln_pkts=rng.choice([0, 1, 7], n), srv_pkts=rng.choice([0, 2, 9], n),
        cln_country=countries[rng.integers(0, 3, n)], srv_country=countries[rng.integers(0, 3, n)],
        cln_asn=rng.choice([0, 64512, 64513], n), srv_asn=rng.choice([0, 64512, 64514], n))  # fmt: skip
    slot = rng.integers(0, slots, n)  # slots repeat: sessions with earlier rows
    new = rng.random(n) < 0.4
    return sessions, slot, new


FILTERS = [("", {}), ("PROTO == tcp", {}), ("", {"ports": [22], "countries": ["NL"], "addresses": ["10.0.0.2"]})]


@pytest.mark.parametrize("kind", list(EntityType))
@pytest.mark.parametrize("prefilter, exceptions", FILTERS)
def test_the_compiled_pass_selects_sums_and_counts_as_the_numpy_one(
    kind: EntityType, prefilter: str, exceptions: dict
) -> None:
    rng = np.random.default_rng(7)
    engine = AlertEngine()
    step_ms = 1000  # a 1 minute interval: steps of one second
    checked = 0
    for b in range(12):
        n = int(rng.integers(1, 400))
        sessions, slot, new = random_batch(rng, n, 300)
        # arrivals over two or three periods; some of a period the window has already left
        at_ms = T0 + b * 1500 + rng.integers(0, 2500, n)
        current = int((T0 + b * 1500 + 1000) // step_ms)
        before = engine.history.recall(slot, new, at_ms, sessions)
        periods = Periods(at_ms, before)
        rows = engine._entity_rows(kind, sessions, new, int(at_ms.max()), BatchKeys(sessions))
        masks: dict[str, np.ndarray] = {}
        for metric in SUM_METRICS:
            definition = Definition(id=1, user_id=1, title="t", entity=kind, metric=metric, interval="1m",
                                    threshold=1, prefilter=prefilter, exceptions=exceptions)  # fmt: skip
            state = DefinitionState(definition)
            pre = prefilter_mask(state, sessions, masks)
            kept = AlertEngine._kept(state, rows, pre)
            selected = AlertEngine.select(state, rows, pre, periods, current)
            buckets, steps, _ = periods.of(step_ms, current)
            for bucket in steps.tolist():
                acc, hit, counted = unpack_sums(select_sums(
                    rows, metric, kept, buckets, bucket, len(steps) == 1, step_ms, periods.before
                ))
                if selected is None:
                    assert not hit.any()
                    continue
                mask, contributing, _, _ = selected
                in_step = mask & rows.session_col_of(buckets == bucket)
                want = unpack_sums(_accumulate(rows.inv, len(rows.uniq), in_step, rows.values(metric), contributing))
                for got_one, want_one, what in zip((acc, hit, counted), want, ("amounts", "concerned", "counts")):
                    np.testing.assert_array_equal(got_one, want_one, err_msg=f"{metric.value} {what} batch {b}")
                checked += int(hit.sum())
    assert checked > 100  # entities were concerned, not only empty selections


FROM_CACHE = """
import itertools, json
from sluice.alerts import selection
from tests.unit import test_alert_selection as t
for kind, (prefilter, exceptions) in itertools.product(t.EntityType, t.FILTERS):
    t.test_the_compiled_pass_selects_sums_and_counts_as_the_numpy_one(kind, prefilter, exceptions)
stats = [kernel.stats for kernel in selection._KERNELS.values()]
print(json.dumps({"plans": len(stats), "loaded": sum(sum(s.cache_hits.values()) for s in stats),
                  "compiled": sum(sum(s.cache_misses.values()) for s in stats)}))
"""


def test_every_plan_is_the_same_compiled_and_loaded_from_numbas_cache(tmp_path: Path) -> None:
    """A plan's pass is a closure (one per plan, ``selection._kernel``), which numba caches
    apart from module functions, keyed by the plan's values: every plan compiled into an empty
    cache, then loaded from it by another process, each time against the numpy path."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", FROM_CACHE], capture_output=True, text=True, timeout=900,
                             env=env, cwd=root)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["plans"] == second["plans"] == 9
    assert first["compiled"] >= 9 and first["loaded"] == 0
    assert second["loaded"] >= 9 and second["compiled"] == 0


def test_each_plan_is_cached_under_a_name_of_its_own() -> None:
    """Numba's cache numbers the compiled forms of one function in one index, the first
    process to compile each taking the next number. The plans were one function: two
    processes compiling different plans at once (pytest's workers) could take the same number,
    and a later process loaded one plan's code for another - seen as "'descr' is NULL" and the
    plan's definitions set aside, and it could as well have counted with the other plan. With
    a name per plan, each plan has an index of its own."""
    AlertEngine.warm_up()  # every plan, endpoint types' and the others'
    kernels = list(selection._KERNELS.values())
    indexes = {kernel._cache._cache_file._index_path for kernel in kernels}  # type: ignore[attr-defined]
    assert len(kernels) >= 9 and len(indexes) == len(kernels), sorted(indexes)


def test_the_slot_history_recalls_each_rows_earlier_times_as_a_plain_loop_does() -> None:
    """``SlotHistory.recall`` against a per-row Python reading of what it keeps: slots taken
    again by new sessions forget the old one's times, sides without traffic keep theirs, and
    a slot seen twice in one batch reads its own earlier row."""
    rng = np.random.default_rng(11)
    history = SlotHistory()
    kept: dict[int, list[int]] = {}  # slot -> (last row, cln bytes, cln pkts, srv bytes, srv pkts) in seconds
    for b in range(30):
        n = int(rng.integers(1, 500))
        sessions, slot, new = random_batch(rng, n, 2000)
        at_ms = T0 + b * 2500 + rng.integers(0, 4000, n)
        got = history.recall(slot, new, at_ms, sessions)
        want = np.zeros((5, n), np.int64)
        for i in range(n):
            record = [0] * 5 if new[i] else kept.get(int(slot[i]), [0] * 5)
            want[:, i] = np.array(record) * 1000
            t = int(at_ms[i]) // 1000
            sent = [sessions[c][i] > 0 for c in ("cln_bytes", "cln_pkts", "srv_bytes", "srv_pkts")]
            kept[int(slot[i])] = [t] + [t if s else old for s, old in zip(sent, record[1:], strict=True)]
        np.testing.assert_array_equal(got, want, err_msg=f"batch {b}")
    assert len(kept) > 1000 and history.slots_used == max(kept) + 1
