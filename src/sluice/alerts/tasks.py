"""One evaluation's work shared out over threads: a list of tasks that free threads take in
order; what one task makes for later ones passes through a ``concurrent.futures.Future``.

Sharing out whole entity types left the threads uneven: the hosts' ten definitions of
``bench/alerts.py`` cost more than the other four types together, and the evaluation took as
long as the hosts did. Tasks of one definition each, taken by whichever thread is free, keep
every thread busy to the end whatever the definitions are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait


class TaskList:
    """Tasks taken in list order, each by the first thread free. A task may wait only for
    what tasks before it in the list make: those have been taken already, by threads that do
    not wait on later ones, so the waits always end."""

    def __init__(self, tasks: Sequence[Callable[[], None]]) -> None:
        self._tasks = list(tasks)
        self._next = 0
        self._lock = threading.Lock()

    def work(self) -> None:
        """Run tasks until none is left."""
        while True:
            with self._lock:
                if self._next >= len(self._tasks):
                    return
                task = self._tasks[self._next]
                self._next += 1
            task()

    def run(self, pool: ThreadPoolExecutor | None, helpers: int) -> None:
        """Run every task: on this thread and ``helpers`` of the pool's; returns when all are
        done. A task's exception is raised here, after the others are done."""
        futures = [pool.submit(self.work) for _ in range(helpers)] if pool is not None else []
        try:
            self.work()
        finally:
            wait(futures)
        for future in futures:
            future.result()
