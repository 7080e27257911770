"""The most recent flows, kept in memory (bounded) for a first look before storage exists."""

from __future__ import annotations

import threading

import numpy as np

from .schema import FlowBatch


class RecentFlows:
    """A flow sink that keeps the last ``capacity`` flows."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._batches: list[FlowBatch] = []
        self._rows = 0
        self._lock = threading.Lock()
        self.total = 0

    def __call__(self, flows: FlowBatch) -> None:
        with self._lock:
            self.total += len(flows)
            self._batches.append(flows)
            self._rows += len(flows)
            while self._batches and self._rows - len(self._batches[0]) >= self.capacity:
                self._rows -= len(self._batches.pop(0))

    def snapshot(self) -> FlowBatch:
        with self._lock:
            batch = FlowBatch.concat(self._batches)
        if len(batch) > self.capacity:
            batch = batch.take(np.arange(len(batch) - self.capacity, len(batch)))
        return batch

    def top_talkers(self, n: int = 10) -> list[tuple[bytes, int, int]]:
        """(address, bytes sent, flows) of the ``n`` heaviest senders among the recent flows."""
        flows = self.snapshot()
        if not len(flows):
            return []
        addrs, inverse = np.unique(flows["src_addr"], axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        sent = np.bincount(inverse, weights=flows["bytes"].astype(np.float64))
        count = np.bincount(inverse)
        order = np.argsort(-sent)[:n]
        return [(bytes(addrs[i]), int(sent[i]), int(count[i])) for i in order]
