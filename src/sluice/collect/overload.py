"""Overload: what the server loses because it cannot keep up, as figures an operator reads.

Past its capacity the server sheds load in two places, both bounded: the kernel drops the
datagrams a listening socket's buffer cannot hold (``socket_drops``), and the alert queue
drops session rows it cannot take (``alert_rows_dropped_total``). Neither can lose more
memory than its bound, so the server stays up; this turns the drops into what they mean:

- ``datagrams_lost_per_second``: the kernel's datagram drops over the last ``WINDOW_S``
  seconds, per second;
- ``flows_lost_per_second``: the same times the flows a datagram carried (an estimate: a
  dropped datagram is not read), at the ratio of the datagrams read meanwhile, or of all read
  so far; drops before any datagram was read are estimated once one is;
- ``overloaded``: 1 while anything was lost within that window, else 0.

The status API and the dashboard show them ("overloaded, about X flows/s lost").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..counters import Counters

#: the window over which losses are averaged, and for how long a loss keeps ``overloaded`` set
WINDOW_S = 10.0


class OverloadMeter:
    def __init__(self, counters: Counters, clock: Callable[[], float] = time.monotonic):
        self.counters = counters
        self.clock = clock
        # the counters start at zero with the server (and a socket's drops with the socket)
        self._last: tuple[float, float, float, float, float] | None = (clock(), 0.0, 0.0, 0.0, 0.0)
        # (time, datagrams dropped, their flows per datagram (0: not known then), alert rows dropped)
        self._losses: deque[tuple[float, float, float, float]] = deque()

    def sample(self) -> None:
        """Read the drop counters; call about once a second."""
        c = self.counters
        now = self.clock()
        drops, datagrams, flows = c.get("socket_drops"), c.get("datagrams_total"), c.get("flows_total")
        alert_drops = c.get("alert_rows_dropped_total")
        if self._last is not None:
            _, last_drops, last_datagrams, last_flows, last_alert_drops = self._last
            dropped = max(0.0, drops - last_drops)  # a socket re-opened starts from zero again
            read = datagrams - last_datagrams
            # flows per datagram of those read meanwhile (the decoder counts a batch's datagrams
            # just before its flows: a sample between the two sees datagrams without flows,
            # which is not a ratio of 0; the ratio of all read so far is taken then)
            per_datagram = (flows - last_flows) / read if read > 0 and flows > last_flows else 0.0
            lost_rows = max(0.0, alert_drops - last_alert_drops)
            if dropped or lost_rows:
                self._losses.append((now, dropped, per_datagram, lost_rows))
        self._last = (now, drops, datagrams, flows, alert_drops)
        while self._losses and self._losses[0][0] <= now - WINDOW_S:
            self._losses.popleft()
        so_far = flows / datagrams if datagrams and flows else 0.0
        c.set("datagrams_lost_per_second", sum(lost for _, lost, _, _ in self._losses) / WINDOW_S)
        c.set("flows_lost_per_second", sum(lost * (ratio or so_far) for _, lost, ratio, _ in self._losses) / WINDOW_S)
        c.set("overloaded", 1 if self._losses else 0)


def overload_status(counters: Counters) -> dict[str, object]:
    """The overload part of the server status."""
    lost = counters.get("flows_lost_per_second")
    datagrams_lost = counters.get("datagrams_lost_per_second")
    overloaded = bool(counters.get("overloaded"))
    if not overloaded:
        message = ""
    elif datagrams_lost and not lost:  # no datagram read yet: flows per datagram not known
        message = (
            f"overloaded: about {datagrams_lost:,.0f} datagrams/s lost in the last {WINDOW_S:.0f} s, none read yet; "
            "the server cannot keep up (see Overload in docs/metrics.md)"
        )
    else:
        message = (
            f"overloaded: about {lost:,.0f} flows/s lost in the last {WINDOW_S:.0f} s; "
            "the server cannot keep up (see Overload in docs/metrics.md)"
        )
    return {
        "overloaded": overloaded,
        "flows_lost_per_second": round(lost, 1),
        "datagrams_lost_per_second": round(datagrams_lost, 1),
        "datagrams_dropped": int(counters.get("socket_drops")),
        "alert_rows_dropped": int(counters.get("alert_rows_dropped_total")),
        "message": message,
    }
