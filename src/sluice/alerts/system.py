"""SYSTEM alerts: the server watching itself, telling administrators through the same records,
channels, Alerts widgets and ``-al`` lines as the analytical alerts.

Every ``alerts.system_check_interval_s`` the watch reads the counters (what ``/metrics``
shows) and the alert engine's failed definitions, and works out which conditions hold:

- an exporter heard from has sent nothing for ``alerts.exporter_silent_s``;
- an exporter's sequence numbers show more than ``alerts.exporter_loss_percent`` lost since
  the last check;
- the kernel dropped datagrams on a listening socket since the last check;
- writes to the flow store failed since the last check;
- notifications were given up as dead since the last check;
- an alert definition is set aside because it failed.

A condition that holds raises (or counts up: COUNT is the checks it held in) one record per
administrator; one that has not held for ``alerts.system_clear_after_s`` is cleared (its
record says "Ended: ..." and every channel tells of it). The wait keeps a condition that
comes and goes (a server dropping datagrams every other check) from being cleared and raised
again, on every channel, at every check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

import structlog

from ..config import AlertSettings
from ..counters import Counters
from ..lifecycle import Worker
from .records import AlertStore, SystemCondition

log = structlog.get_logger(__name__)

Snapshot = dict[str, dict[tuple[tuple[str, str], ...], float]]  # name -> labels -> value


def _by_name(counters: Counters) -> Snapshot:
    out: Snapshot = {}
    for (name, labels), value in counters.snapshot().items():
        out.setdefault(name, {})[tuple(sorted(labels))] = value
    return out


def _increase(now: Snapshot, before: Snapshot, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """How much each labelled counter grew since ``before`` (a counter that went back, as one
    reset, counts from zero)."""
    old = before.get(name, {})
    out = {}
    for labels, value in now.get(name, {}).items():
        grown = value - old.get(labels, 0.0)
        out[labels] = grown if grown >= 0 else value
    return out


class SystemWatch:
    def __init__(
        self,
        counters: Counters,
        store: AlertStore,
        settings: AlertSettings,
        failed_definitions: Callable[[], dict[int, tuple[str, str]]],
        clock: Callable[[], float] = time.time,
    ):
        """``failed_definitions``: per definition set aside, (its title, why)."""
        self.counters = counters
        self.store = store
        self.settings = settings
        self.failed_definitions = failed_definitions
        self.clock = clock
        self._before: Optional[Snapshot] = None
        self._active: Optional[set[str]] = None  # the conditions raised and not cleared
        #: per raised condition, when a check last found it held
        self._last_held: dict[str, float] = {}
        self._worker = Worker("sluice-system-alerts", self._run)

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()

    def _run(self) -> None:
        while not self._worker.stopping.wait(self.settings.system_check_interval_s):
            try:
                self.check()
            except Exception:  # the next check tries again (the state database may be back)
                log.exception("system alert check failed")

    def check(self) -> list[tuple[int, str]]:
        """One round: raise what holds, clear what ended; the records touched."""
        now = self.clock()
        snapshot = _by_name(self.counters)
        held = self.conditions(snapshot, self._before, now)
        if self._active is None:  # after a restart, what is raised counts as held at the first check
            self._active = self.store.active_system()
            self._last_held = dict.fromkeys(self._active, now)
        keys = {condition.entity for condition in held}
        # an exporter not heard from since this server started is not known to have sent
        # again: its "silent" record stays as it is (raised)
        heard = {
            f"exporter {dict(labels).get('exporter')} {dict(labels).get('proto')} silent"
            for labels in snapshot.get("exporter_last_datagram_seconds", {})
        }
        unknown = {key for key in self._active if key.endswith(" silent") and key not in heard}
        for key in keys:
            self._last_held[key] = now
        not_held = self._active - keys - unknown
        ended = {key for key in not_held if now - self._last_held[key] >= self.settings.system_clear_after_s}
        changes = self.store.apply_system(held, ended, int(now * 1_000_000))
        self._active, self._before = (self._active | keys) - ended, snapshot
        for key in ended:
            del self._last_held[key]
        return changes

    def conditions(self, now_snapshot: Snapshot, before: Optional[Snapshot], now: float) -> list[SystemCondition]:
        """The conditions that hold (those about change since the last check need one)."""
        s = self.settings
        out: list[SystemCondition] = []
        if s.exporter_silent_s > 0:
            for labels, last in now_snapshot.get("exporter_last_datagram_seconds", {}).items():
                label = dict(labels)
                silent = now - last
                if silent > s.exporter_silent_s:
                    out.append(
                        SystemCondition(
                            f"exporter {label.get('exporter')} {label.get('proto')} silent",
                            "HIGH",
                            f"Exporter {label.get('exporter')} has sent no {label.get('proto')} datagram for "
                            f"{int(silent)} s (more than {s.exporter_silent_s:g} s).",
                            int(silent),
                            int(s.exporter_silent_s),
                        )
                    )
        for definition_id, (title, reason) in sorted(self.failed_definitions().items()):
            out.append(
                SystemCondition(
                    f"alert definition {definition_id} failed",
                    "MEDIUM",
                    f"Alert definition {definition_id} ({title}) is not being evaluated: {reason}"[:400],
                    1,
                    0,
                )
            )
        if before is None:
            return out
        gaps = _increase(now_snapshot, before, "sequence_gaps_total")
        flows = _increase(now_snapshot, before, "flows_total")
        datagrams = _increase(now_snapshot, before, "datagrams_total")
        for labels, lost in gaps.items():
            label = dict(labels)
            # NetFlow v9 numbers datagrams; v5 and IPFIX number flows
            received = (datagrams if label.get("proto") == "netflow9" else flows).get(labels, 0.0)
            percent = 100 * lost / (lost + received) if lost > 0 else 0.0
            if lost > 0 and percent > s.exporter_loss_percent:
                unit = "datagrams" if label.get("proto") == "netflow9" else "flows"
                out.append(
                    SystemCondition(
                        f"exporter {label.get('exporter')} {label.get('proto')} loss",
                        "MEDIUM",
                        f"Exporter {label.get('exporter')} lost {percent:.1f} % of its {label.get('proto')} {unit} "
                        f"({int(lost)} by its sequence numbers) since the last check (more than "
                        f"{s.exporter_loss_percent:g} %).",
                        int(lost),
                        int(s.exporter_loss_percent),
                    )
                )
        for labels, dropped in _increase(now_snapshot, before, "socket_drops").items():
            if dropped > 0:
                port = dict(labels).get("port")
                out.append(
                    SystemCondition(
                        f"socket {port} drops",
                        "HIGH",
                        f"The kernel dropped {int(dropped)} datagrams on UDP port {port} since the last check: "
                        "the server is not keeping up (see sluice_socket_drops and docs/configuration.md).",
                        int(dropped),
                        0,
                    )
                )
        for _, failed in _increase(now_snapshot, before, "store_write_errors_total").items():
            if failed > 0:
                out.append(
                    SystemCondition(
                        "store writes failed",
                        "CRITICAL",
                        f"{int(failed)} writes to the flow store failed since the last check (the log says why).",
                        int(failed),
                        0,
                    )
                )
        for labels, dead in _increase(now_snapshot, before, "notifications").items():
            label = dict(labels)
            if label.get("state") == "dead" and dead > 0:
                out.append(
                    SystemCondition(
                        f"notifications {label.get('channel')} dead",
                        "HIGH",
                        f"{int(dead)} {label.get('channel')} notifications were given up as undeliverable since the "
                        "last check (see the notifications' last errors).",
                        int(dead),
                        0,
                    )
                )
        return out
