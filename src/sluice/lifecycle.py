"""Background threads, started and stopped one way everywhere.

Every long-running loop of the server (the collector, store maintenance, alert evaluation and
housekeeping, notification delivery) is a ``Worker``: a named daemon thread with its own stop
signal. ``stop`` sets the signal, wakes the loop if it sleeps on something else, and waits a
bounded time; a loop that does not end in time, or that died of an exception, is logged by
name, and ``workers()`` reports every worker of the process (for status pages and tests).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Optional

import structlog

log = structlog.get_logger(__name__)

_ALL: weakref.WeakSet[Worker] = weakref.WeakSet()

#: how much lower than the receive loop and alert evaluation the bulk writing of the
#: alert-state snapshots runs: a nice value
BACKGROUND_NICENESS = 10
#: alert evaluation runs a little below the receive loop: a datagram the socket drops is lost,
#: while rows waiting for evaluation queue (``alerts.max_pending_rows``) and are caught up on
EVALUATION_NICENESS = 5
#: the store's writing runs beside the evaluation, below the receive loop. Below the
#: evaluation too (at ``BACKGROUND_NICENESS``), it starved while rows waited for evaluation:
#: its queue passed twice its bound, and the receive loop then wrote the files itself while
#: its socket overflowed. One core at 0.7 M flows/s with the 20 definitions of
#: ``bench/alerts.py`` received 88.8-97.4 % of the flows that way, 100 % at this value
STORE_WRITING_NICENESS = EVALUATION_NICENESS


def lower_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Give the calling thread ``niceness`` (Linux: a thread has its own nice value);
    elsewhere, nothing. It cannot be raised back without privileges."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class Worker:
    def __init__(
        self,
        name: str,
        loop: Callable[[], None],
        join_timeout_s: float = 10.0,
        wake: Optional[Callable[[], None]] = None,
    ):
        """``loop`` runs until it returns; it should return soon after ``stopping`` is set.
        ``wake`` interrupts whatever else the loop may be waiting on (a condition, say)."""
        self.name = name
        self.stopping = threading.Event()
        self.join_timeout_s = join_timeout_s
        self.error: Optional[str] = None
        self._loop = loop
        self._wake = wake
        self._thread: Optional[threading.Thread] = None
        _ALL.add(self)

    def start(self) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a loop must not die silently: say which one, and why
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("background thread died", thread=self.name)

    def stop(self) -> bool:
        """Signal, wake and wait; True if the thread has ended (or never ran)."""
        self.stopping.set()
        if self._wake is not None:
            self._wake()
        if self._thread is None:
            return True
        self._thread.join(self.join_timeout_s)
        if self._thread.is_alive():
            log.warning("background thread did not stop in time", thread=self.name, waited_s=self.join_timeout_s)
            return False
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def report(self) -> dict[str, object]:
        state = "running" if self.alive else ("died" if self.error else ("stopped" if self._thread else "new"))
        return {"name": self.name, "state": state, "error": self.error}


def workers() -> list[Worker]:
    """Every worker of this process that still exists, by name."""
    return sorted(_ALL, key=lambda w: w.name)
