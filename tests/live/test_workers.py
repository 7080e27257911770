"""Session workers (``sluice serve --workers N``): the same traffic gives the same sessions,
reports and alerts with one worker and with several, and a worker that dies is replaced."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx

from sluice.flows.schema import FlowBatch
from sluice.simulate.encode import NetflowV9Encoder
from sluice.simulate.traffic import TrafficModel

from ..support.interop import free_tcp_port, free_udp_port
from ..support.server import ADMIN, metrics, start_server
from ..support.waiting import wait_until, wait_until_steady


def start(tmp_path: Path, name: str, workers: int, **popen) -> tuple[subprocess.Popen, int, int]:
    """A server with ``workers`` session workers, its data in ``tmp_path/name``, its log in
    ``tmp_path/name.log``."""
    http, netflow = free_tcp_port(), free_udp_port()
    (tmp_path / name).mkdir(exist_ok=True)
    proc = start_server(tmp_path / name, http, netflow, log=tmp_path / f"{name}.log",
                        args=("--workers", str(workers), "--log-level", "info"), popen=popen)
    return proc, http, netflow


def traffic(now_ms: int) -> list[bytes]:
    """Two minutes of the simulator's traffic (both directions of TCP, UDP and ICMP
    conversations, a port scan), as NetFlow v9 datagrams."""
    model = TrafficModel(seed=21, opening_events=True)
    flows = FlowBatch.concat([model.conversations(now_ms - 120_000 + i * 1000, now_ms - 119_000 + i * 1000, 300)
                              for i in range(120)])
    return NetflowV9Encoder(template_every=10).encode(flows, now_ms, per_datagram=20)


def send(datagrams: list[bytes], http: int, port: int, source: str) -> None:
    """Send at the server's pace: at most ``AHEAD`` datagrams beyond those it has decoded. A
    fixed pace overflowed the socket buffer when the machine was busy with other tests, and
    the comparisons need every datagram received."""
    decoded = lambda: totals(http)["datagrams_total"]  # noqa: E731
    before = decoded()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for i, d in enumerate(datagrams, 1):
            sock.sendto(d, ("127.0.0.1", port))
            if i % CHUNK == 0 or i == len(datagrams):
                wait_until(decoded, lambda n, i=i: n >= before + i - AHEAD, timeout=60, interval=0.02,
                           what=f"the server to decode the datagrams sent ({i})")


CHUNK, AHEAD = 100, 300


def totals(http: int) -> dict[str, float]:
    values = metrics(http)
    pick = lambda prefix: sum(v for k, v in values.items() if k.startswith(prefix))  # noqa: E731
    return {name: pick(f"sluice_{name}") for name in
            ("datagrams_total", "flows_total", "session_rows_total", "store_rows", "sessions_started_total",
             "flows_deduplicated_total", "socket_drops")}


def test_one_worker_and_two_give_the_same_sessions_reports_and_alerts(tmp_path):
    servers = {n: start(tmp_path, f"w{n}", n) for n in (1, 2)}
    try:
        definitions = [
            {"title": "chatty", "metric": "sessions_initiated", "entity": "host", "threshold": 40, "interval": "1h"},
            {"title": "scanner", "metric": "unique_ports", "entity": "host", "threshold": 50, "interval": "1h"},
            {"title": "big", "metric": "bytes_total", "entity": "host", "threshold": 2_000_000, "interval": "1h"},
        ]
        for _, http, _ in servers.values():
            for d in definitions:
                assert httpx.post(f"http://127.0.0.1:{http}/api/v1/alert-definitions", json=d, auth=ADMIN,
                                  timeout=10).status_code == 201
        datagrams = traffic(int(time.time() * 1000))
        # COUNT counts (session, one-minute period) pairs: both servers get the traffic within
        # one minute, so that one period boundary cannot split a session on one and not the other
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        # the same conversations from a second exporter: de-duplicated, with one worker or two
        for _, http, netflow in servers.values():
            send(datagrams, http, netflow, "127.0.0.1")
            send(datagrams[: len(datagrams) // 2], http, netflow, "127.0.0.2")

        def settled(http: int) -> bool:
            t = totals(http)
            return t["store_rows"] == t["session_rows_total"] > 0
        for _, http, _ in servers.values():
            wait_until(lambda: settled(http), timeout=60, what="every session row stored")
            # the tracker's figures are gauges the server gathers from its workers about once
            # a second, and flows that were all duplicates make no row to wait for
            wait_until_steady(lambda: tuple(totals(http).values()), steady_s=3, timeout=60,
                              what="the tracker's figures")
        one, two = (totals(servers[n][1]) for n in (1, 2))
        assert one["socket_drops"] == two["socket_drops"] == 0
        assert one["flows_total"] == two["flows_total"] > 0
        assert one["flows_deduplicated_total"] == two["flows_deduplicated_total"] > 0
        assert one["sessions_started_total"] == two["sessions_started_total"] > 0

        def answers(http: int) -> dict[str, object]:
            c = httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=ADMIN, timeout=30)
            frame = {"start_ms": int(time.time() * 1000) - 3_600_000, "end_ms": int(time.time() * 1000) + 60_000}
            out: dict[str, object] = {}
            for entity, metric in [("host", "bytes"), ("host", "sessions"), ("port", "packets"),
                                   ("host_pair", "bytes"), ("host", "unique_ports")]:
                out[f"{entity}/{metric}"] = c.get("/api/v1/reports", params={
                    "entity": entity, "metric": metric, "top": 1000, **frame}).json()
            # sessions summed by their fixed client/server orientation
            rows = c.get("/api/v1/sessions", params={"limit": 100_000, **frame}).json()
            sums: dict[tuple, list[int]] = {}
            for r in rows:
                key = (r["cln_addr"], r["cln_port"], r["srv_addr"], r["srv_port"], r["protocol"])
                total = sums.setdefault(key, [0, 0])
                total[0] += r["cln_bytes"]
                total[1] += r["srv_bytes"]
            out["sessions"] = sums
            out["alerts"] = sorted((a["title"], a["entity"], a["v1"], a["v2"]) for a in c.get("/api/v1/alerts").json())
            c.close()
            return out

        # alerts are evaluated a moment after the rows arrive: wait until both have the same
        wait_until(lambda: answers(servers[1][1])["alerts"] == answers(servers[2][1])["alerts"] != [],
                   timeout=30, what="the same alerts on both servers")
        a1, a2 = answers(servers[1][1]), answers(servers[2][1])
        assert a1["sessions"] == a2["sessions"] and len(a1["sessions"]) > 1000
        for name in a1:
            assert a1[name] == a2[name], name
        assert {title for title, *_ in a1["alerts"]} == {"chatty", "scanner", "big"}
    finally:
        for proc, _, _ in servers.values():
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def test_a_session_worker_that_dies_is_started_again(tmp_path):
    proc, http, netflow = start(tmp_path, "w", 2)
    try:
        children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert workers, children
        os.kill(workers[-1], signal.SIGKILL)
        wait_until(lambda: metrics(http).get("sluice_session_worker_restarts_total", 0) >= 1, timeout=30,
                   what="the worker to be started again")
        datagrams = traffic(int(time.time() * 1000))
        send(datagrams, http, netflow, "127.0.0.1")
        wait_until(lambda: totals(http)["store_rows"] == totals(http)["session_rows_total"] > 0, timeout=60,
                   what="rows stored after the restart")
        t = totals(http)
        assert t["flows_total"] > 0 and t["sessions_started_total"] > 0
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_workers_keep_the_rows_nobody_wants_and_hand_them_over_once_a_definition_does(tmp_path):
    """Workers store their own rows; without alert definitions the batches stay with them and
    only their number comes back - still every row counted, stored and (as nothing) evaluated.
    Once a definition exists, the batches come back and alert."""
    proc, http, netflow = start(tmp_path, "w2", 2)
    try:
        datagrams = traffic(int(time.time() * 1000))
        send(datagrams[: len(datagrams) // 2], http, netflow, "127.0.0.1")

        def counts() -> tuple[float, float, float]:
            values = metrics(http)
            return (values.get("sluice_session_rows_total", 0), values.get("sluice_store_rows", 0),
                    values.get("sluice_alert_rows_evaluated_total", 0))
        wait_until(lambda: counts()[0] > 0 and len(set(counts())) == 1, timeout=60,
                   what="every row counted, stored and evaluated")
        assert httpx.post(f"http://127.0.0.1:{http}/api/v1/alert-definitions", auth=ADMIN, timeout=10, json={
            "title": "chatty", "metric": "sessions_initiated", "entity": "host", "threshold": 20,
            "interval": "1h"}).status_code == 201
        send(datagrams[len(datagrams) // 2:], http, netflow, "127.0.0.1")
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{http}/api/v1/alerts", auth=ADMIN, timeout=10).json() != [],
                   timeout=60, what="an alert from the second half")
        wait_until(lambda: len(set(counts())) == 1, timeout=60, what="every row counted, stored and evaluated")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


def test_sigterm_to_the_whole_process_group_stops_the_server_and_its_workers_cleanly(tmp_path):
    """``systemctl stop`` (and ``timeout``, and a shell's job control) signal every process of
    the server at once: the workers leave their stopping to the server, which stores what they
    hold, rather than dying first and being started again as it stops."""
    proc, http, netflow = start(tmp_path, "w", 2, start_new_session=True)
    try:
        send(traffic(int(time.time() * 1000)), http, netflow, "127.0.0.1")
        rows = wait_until_steady(lambda: totals(http)["session_rows_total"], timeout=60, what="the session rows")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = (tmp_path / "w.log").read_text()
    assert proc.returncode == 0, err
    assert "worker died" not in err
    again, http, _ = start(tmp_path, "w", 1)
    try:
        # every row the workers held was stored (the gauge is set by the first maintenance round)
        assert wait_until(lambda: totals(http)["store_rows"], timeout=30, what="the stored rows") == rows > 1000
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(30)


def test_flows_that_come_while_the_workers_start_wait_for_them(tmp_path):
    """The sockets open before the session workers are ready (they start for a second or
    more; far longer while numba's cache is cold): what arrives meanwhile waits in the socket
    buffer. It used to reach the pipeline before the workers did, fail to be handed on and be
    lost (counted in ``sluice_sink_errors_total``)."""
    http, netflow = free_tcp_port(), free_udp_port()
    datagrams = traffic(int(time.time() * 1000))
    stop = threading.Event()

    def keep_sending() -> None:  # from before the server starts until after it answers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            i = 0
            while not stop.is_set():
                sock.sendto(datagrams[i % len(datagrams)], ("127.0.0.1", netflow))
                i += 1
                if i % 20 == 0:
                    time.sleep(0.01)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    proc = None
    try:
        proc = start_server(tmp_path, http, netflow, log=tmp_path / "w.log", args=("--workers", "2"))
        time.sleep(1.0)
        stop.set()
        sender.join(10)
        wait_until(lambda: totals(http)["store_rows"] == totals(http)["session_rows_total"] > 0, timeout=60,
                   what="every session row stored")
        errors = sum(v for k, v in metrics(http).items() if k.startswith("sluice_sink_errors_total"))
        assert errors == 0, (tmp_path / "w.log").read_text()[-3000:]
        assert totals(http)["flows_total"] > 0
    finally:
        stop.set()
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
