"""Overload: kernel drops and alert queue drops turned into flows lost per second."""

from sluice.collect.overload import WINDOW_S, OverloadMeter, overload_status
from sluice.counters import Counters


def test_drops_become_flows_lost_per_second_and_clear_after_the_window():
    counters, now = Counters(), [100.0]
    meter = OverloadMeter(counters, clock=lambda: now[0])

    def second(datagrams: int, flows: int, drops: int, alert_drops: int = 0) -> None:
        now[0] += 1
        counters.inc("datagrams_total", datagrams, exporter="e", proto="netflow5")
        counters.inc("flows_total", flows, exporter="e", proto="netflow5")
        counters.set("socket_drops", counters.get("socket_drops", port=2055) + drops, port=2055)
        counters.inc("alert_rows_dropped_total", alert_drops)
        meter.sample()

    meter.sample()
    second(1000, 30_000, 0)
    assert counters.get("overloaded") == 0 and counters.get("flows_lost_per_second") == 0
    assert overload_status(counters)["overloaded"] is False and overload_status(counters)["message"] == ""
    # 200 datagrams dropped a second for 3 s, at 30 flows a datagram: 18,000 flows over the window
    for _ in range(3):
        second(1000, 30_000, 200)
    assert counters.get("overloaded") == 1
    assert counters.get("flows_lost_per_second") == 3 * 200 * 30 / WINDOW_S
    status = overload_status(counters)
    assert status["overloaded"] and status["datagrams_dropped"] == 600
    assert "about 1,800 flows/s lost" in status["message"]
    # nothing lost for a whole window: no longer overloaded
    for _ in range(int(WINDOW_S)):
        second(1000, 30_000, 0)
    assert counters.get("overloaded") == 0 and counters.get("flows_lost_per_second") == 0
    # alert rows dropped are a loss too, though no flow was
    second(1000, 30_000, 0, alert_drops=5000)
    assert counters.get("overloaded") == 1 and overload_status(counters)["alert_rows_dropped"] == 5000


def test_a_second_with_every_datagram_dropped_uses_the_flows_per_datagram_seen_before():
    counters, now = Counters(), [0.0]
    meter = OverloadMeter(counters, clock=lambda: now[0])
    counters.inc("datagrams_total", 10)
    counters.inc("flows_total", 80)
    meter.sample()
    now[0] += 1
    counters.set("socket_drops", 50)
    meter.sample()
    assert counters.get("flows_lost_per_second") == 50 * 8 / WINDOW_S
    # a socket re-opened counts from zero: not a negative loss
    now[0] += 1
    counters.set("socket_drops", 0)
    meter.sample()
    assert counters.get("flows_lost_per_second") == 50 * 8 / WINDOW_S


def test_a_sample_between_a_batchs_datagram_and_flow_counts_still_counts_the_loss():
    """The decoder counts a batch's datagrams just before its flows: a sample in between saw
    datagrams read and no flows, and said 0 flows lost while overloaded (a flaky browser test)."""
    counters, now = Counters(), [100.0]
    meter = OverloadMeter(counters, clock=lambda: now[0])
    meter.sample()
    now[0] += 1
    counters.inc("datagrams_total", 1000, exporter="e", proto="netflow5")
    counters.inc("flows_total", 30_000, exporter="e", proto="netflow5")
    meter.sample()
    now[0] += 1
    counters.inc("datagrams_total", 100, exporter="e", proto="netflow5")  # its flows not counted yet
    counters.set("socket_drops", 50, port=2055)
    meter.sample()
    assert counters.get("overloaded") == 1
    assert counters.get("flows_lost_per_second") > 0  # at the flows per datagram seen so far


def test_drops_before_any_datagram_was_read_are_estimated_once_one_is():
    """A flood that fills the socket before the first batch is counted: the first sample saw
    drops and no datagram read at all, and said 0 flows lost while overloaded (CI, the
    browser test of overload)."""
    counters, now = Counters(), [100.0]
    meter = OverloadMeter(counters, clock=lambda: now[0])
    meter.sample()
    now[0] += 1
    counters.set("socket_drops", 400, port=2055)
    meter.sample()
    assert counters.get("overloaded") == 1 and counters.get("datagrams_lost_per_second") == 400 / WINDOW_S
    status = overload_status(counters)
    assert "about 40 datagrams/s lost in the last 10 s, none read yet" in status["message"]
    now[0] += 1
    counters.inc("datagrams_total", 10, exporter="e", proto="netflow5")
    counters.inc("flows_total", 300, exporter="e", proto="netflow5")
    meter.sample()  # no new drops: the earlier ones now at 30 flows a datagram
    assert counters.get("flows_lost_per_second") == 400 * 30 / WINDOW_S
    assert "about 1,200 flows/s lost" in overload_status(counters)["message"]
