"""The receive loop waiting for a session worker that is behind is counted: meanwhile only
the kernel's socket buffer holds what comes, so an operator seeing drops needs to know."""

from __future__ import annotations

import os
import signal
import threading
import time

from sluice.config import EnrichSettings, SessionSettings
from sluice.counters import Counters
from sluice.flows.shards import ShardedSessions
from sluice.simulate.traffic import TrafficModel

WAITED = "session_worker_wait_seconds_total"


def test_the_time_spent_waiting_for_a_stopped_worker_is_counted(tmp_path):
    counters = Counters()
    pool = ShardedSessions(1, SessionSettings(), EnrichSettings(), tmp_path / "cache", lambda s, n: None, counters)
    worker = pool.workers[0]
    try:
        now = int(time.time() * 1000)
        flows = TrafficModel(seed=5).conversations(now - 1000, now, 50_000)
        pool.submit(flows, now)
        assert counters.get(WAITED) == 0  # its queue had room
        os.kill(worker.process.pid, signal.SIGSTOP)  # it takes nothing more: its ring and queue fill
        # 20 batches of 50,000 flows (112 bytes each): more than its 32 MB ring and queue hold
        sender = threading.Thread(target=lambda: [pool.submit(flows, now) for _ in range(20)], daemon=True)
        sender.start()
        sender.join(2.0)
        assert sender.is_alive(), "the submissions should wait for the stopped worker"
        os.kill(worker.process.pid, signal.SIGCONT)
        sender.join(60)
        assert not sender.is_alive()
        assert counters.get(WAITED) >= 1.5
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
        pool.stop()
