"""``sluice serve`` on the other store backend: sessions in a two-shard ClickHouse cluster
(Debian's clickhouse-server, started by the tests), from a real exporter through the API."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx

from ..support.exporters import export
from ..support.interop import free_tcp_port, free_udp_port
from ..support.pcapgen import scan_pcap
from ..support.server import ADMIN, start_server
from ..support.waiting import wait_until, wait_until_steady


def test_a_server_keeps_its_sessions_in_a_clickhouse_cluster(tmp_path, clickhouse):
    from clickhouse_driver import Client

    http, netflow = free_tcp_port(), free_udp_port()
    database = f"live{os.getpid()}"
    proc = start_server(tmp_path, http, netflow, SLUICE_STORE__BACKEND="clickhouse",
                        SLUICE_STORE__CLICKHOUSE_SERVERS=json.dumps(clickhouse.addresses),
                        SLUICE_STORE__CLICKHOUSE_DATABASE=database, SLUICE_SESSIONS__NODE_ID="5")
    try:
        work = tmp_path / "a"
        work.mkdir()
        scan_pcap(work / "t.pcap", "10.9.0.10", 70, time.time() - 5)  # 70 sessions, one port each
        export(work, "softflowd", "9", netflow)
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=ADMIN, timeout=10) as c:
            rows = wait_until_steady(lambda: c.get("/api/v1/sessions", params={"limit": 1000}).json(),
                                     what="the exported sessions")
            scanned = [r for r in rows if r["srv_addr"] == "10.9.0.10"]
            assert len({r["srv_port"] for r in scanned}) == 70
            assert {r["session_id"] >> 56 for r in rows} == {5}  # the node's number: ids of servers sharing the cluster differ
            [top] = c.get("/api/v1/reports", params={"entity": "host", "metric": "unique_ports",
                                                      "direction": "receiver", "top": 1}).json()
            assert top == {"address": "10.9.0.10", "value": 70}
            low = c.get("/api/v1/sessions", params={"filter": "SRVIP == 10.9.0.10 && SRVPORT < 1010",
                                                     "limit": 1000}).json()
            assert sorted({r["srv_port"] for r in low}) == list(range(1000, 1010))  # the scan's ports 1000-1069
        assert not (tmp_path / "var" / "sessions.duckdb").exists()  # nothing went to the embedded store
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    per_shard = [Client(host="127.0.0.1", port=int(a.rsplit(":", 1)[1])).execute(
        f"SELECT count() FROM {database}.sessions_local")[0][0] for a in clickhouse.addresses]
    assert sum(per_shard) >= 70 and min(per_shard) > 0  # the rows are spread over both shards


def test_sessions_for_a_shard_that_is_down_wait_in_the_spool_and_are_stored_once_it_is_back(tmp_path, clickhouse):
    """kill -9 of one shard while a real exporter sends: the server goes on, its rows wait in
    the spool (in /metrics), and once the shard is started again every session is stored once."""
    from clickhouse_driver import Client

    from ..support.server import metrics

    http, netflow = free_tcp_port(), free_udp_port()
    database = f"spooled{os.getpid()}"
    proc = start_server(tmp_path, http, netflow, SLUICE_STORE__BACKEND="clickhouse",
                        SLUICE_STORE__CLICKHOUSE_SERVERS=json.dumps(clickhouse.addresses),
                        SLUICE_STORE__CLICKHOUSE_DATABASE=database)
    down = clickhouse.servers[1]
    try:
        wait_until(lambda: metrics(http).get("sluice_store_shards_down") == 0, timeout=30, what="the tables")
        down.kill()
        work = tmp_path / "a"
        work.mkdir()
        scan_pcap(work / "t.pcap", "10.9.0.20", 200, time.time() - 5)  # 200 sessions, one port each
        export(work, "softflowd", "9", netflow)
        waiting = wait_until(lambda: metrics(http), lambda m: m.get("sluice_store_spool_rows", 0) > 0, timeout=30,
                             what="rows in the spool")
        assert waiting["sluice_store_shards_down"] == 1
        with httpx.Client(base_url=f"http://127.0.0.1:{http}", auth=ADMIN, timeout=10) as c:
            assert c.get("/api/v1/sessions").status_code == 503  # a query needs every shard
            down.start()
            after = wait_until(lambda: metrics(http), lambda m: m.get("sluice_store_spool_rows") == 0, timeout=60,
                               what="the spool replayed")
            assert after["sluice_store_replayed_rows_total"] == waiting["sluice_store_spooled_rows_total"] > 0
            assert after["sluice_store_dropped_rows_total"] == 0 and after["sluice_store_shards_down"] == 0
            rows = c.get("/api/v1/sessions", params={"filter": "SRVIP == 10.9.0.20", "limit": 1000}).json()
            assert sorted(r["srv_port"] for r in rows) == list(range(1000, 1200))  # each session once
    finally:
        down.start()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    [(n, ids)] = Client(host="127.0.0.1", port=clickhouse.servers[0].port).execute(
        f"SELECT count(), uniqExact(session_id) FROM {database}.sessions")
    assert n == ids >= 200
