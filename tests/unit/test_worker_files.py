"""Session workers that write their own rows' files: a failed write is counted, and the
count outlives the worker."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from sluice.config import EnrichSettings, SessionSettings
from sluice.counters import Counters
from sluice.flows.shards import ShardedSessions
from sluice.simulate.traffic import TrafficModel
from sluice.store.duckdb_store import DuckDBStore

from ..support.waiting import wait_until, wait_until_steady


def test_a_failed_write_of_a_workers_files_is_counted_across_its_restart(tmp_path):
    store = DuckDBStore(tmp_path / "s.duckdb")
    unwritable = replace(store.staging(), directory=tmp_path / "no-such-directory")
    counters = Counters()
    pool = ShardedSessions(2, SessionSettings(), EnrichSettings(), tmp_path / "cache", lambda s, n: None, counters,
                           unwritable, store.adopt, lambda: False, lambda rows: None)
    try:
        now = int(time.time() * 1000)
        pool.submit(TrafficModel(seed=3).conversations(now - 10_000, now, 500), now)
        pool.expire(now)  # a flush: each worker with rows tries to write them, and cannot
        wait_until(lambda: pool.write_errors() >= 1, timeout=30, what="the failed write reported")
        # both workers may fail, and report at their own pace: the count before the kill is
        # the settled one (read at the first report, a second worker's came in "meanwhile")
        errors = wait_until_steady(pool.write_errors, steady_s=1.0, timeout=30, what="every failed write reported")
        victim = next(w for w in pool.workers if w.report.write_errors)
        os.kill(victim.process.pid, signal.SIGKILL)
        wait_until(lambda: counters.get("session_worker_restarts_total") == 1 and victim.process.is_alive(),
                   timeout=60, what="the worker started again")
        assert pool.write_errors() == errors  # meanwhile too
        wait_until(lambda: victim.report.stats is not None, timeout=60, what="a report from the new process")
        assert victim.report.write_errors == 0 and pool.write_errors() == errors
    finally:
        pool.stop()
        store.close()


def test_a_worker_started_again_hands_out_new_session_ids(tmp_path):
    """Its predecessor's ids are stored already: the new process counts from its start, in
    its own residue among the workers, never from where the first process began."""
    from sluice.flows.schema import SessionBatch

    batches: list[SessionBatch] = []
    counters = Counters()
    pool = ShardedSessions(2, SessionSettings(), EnrichSettings(), tmp_path / "cache",
                           lambda sessions, new: batches.append(sessions), counters)
    try:
        now = int(time.time() * 1000)
        pool.submit(TrafficModel(seed=3).conversations(now - 10_000, now, 300), now)
        wait_until_steady(lambda: sum(map(len, batches)), steady_s=1.0, timeout=60, what="the first sessions")
        before = len(batches)
        victim = pool.workers[0]
        os.kill(victim.process.pid, signal.SIGKILL)
        wait_until(lambda: counters.get("session_worker_restarts_total") == 1 and victim.process.is_alive(),
                   timeout=60, what="the worker started again")
        now = int(time.time() * 1000)
        pool.submit(TrafficModel(seed=4).conversations(now - 10_000, now, 300), now)
        wait_until_steady(lambda: sum(map(len, batches)), steady_s=1.0, timeout=60, what="the later sessions")
    finally:
        pool.stop()
    first, later = SessionBatch.concat(batches[:before]), SessionBatch.concat(batches[before:])
    assert len(first) > 100 and len(later) > 100
    keys = lambda b: {(int(i), bytes(c), bytes(s), int(p), int(q)) for i, c, s, p, q in zip(  # noqa: E731
        b["session_id"], b["cln_addr"], b["srv_addr"], b["cln_port"], b["srv_port"], strict=True)}
    conversations_of: dict[int, set] = {}
    for key in keys(first) | keys(later):
        conversations_of.setdefault(key[0], set()).add(key[1:])
    assert all(len(c) == 1 for c in conversations_of.values()), "an id given to two conversations"
    assert {i % 2 for i in later["session_id"].tolist()} == {0, 1}  # each worker keeps its residue
