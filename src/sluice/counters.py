"""The process's counters and gauges, shared by every stage (collector, sessions, store,
alerts, notifications) and exported at /metrics in Prometheus format (``http/metrics.py``).

A plain dict keyed by (name, labels) is cheap enough to bump per datagram or per set; an
increment from one thread at a time needs no lock (the GIL keeps each ``+=`` whole enough for
counters that only one stage writes), and the metrics endpoint reads a snapshot.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LabelKey = tuple[tuple[str, str], ...]


class Counters:
    def __init__(self) -> None:
        self._values: defaultdict[tuple[str, LabelKey], float] = defaultdict(float)
        self._lock = threading.Lock()

    def inc(self, name: str, amount: float = 1, **labels: object) -> None:
        key = (name, tuple(sorted((label, str(value)) for label, value in labels.items())))
        self._values[key] += amount

    def set(self, name: str, value: float, **labels: object) -> None:
        key = (name, tuple(sorted((label, str(value)) for label, value in labels.items())))
        self._values[key] = value

    def forget(self, name: str) -> None:
        """Drop every label set of ``name`` (gauges whose subjects come and go)."""
        with self._lock:
            for key in [existing for existing in self._values if existing[0] == name]:
                del self._values[key]

    def get(self, name: str, **labels: object) -> float:
        """Sum of ``name`` over every label set that includes the given labels."""
        want = {(label, str(value)) for label, value in labels.items()}
        return sum(
            value
            for (metric, labels_of), value in list(self._values.items())
            if metric == name and want <= set(labels_of)
        )

    def snapshot(self) -> dict[tuple[str, LabelKey], float]:
        with self._lock:
            return dict(self._values)
