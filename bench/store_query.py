#!/usr/bin/env python3
"""Storage and query benchmark: 100 M synthetic sessions in the embedded store (Parquet
segment files queried by DuckDB).

Reports inserts/s and CPU-s per million inserted (every thread's), bytes on disk per session against nfcapd's LZ4-compressed file for the
same traffic (a sample of the sessions, sent as NetFlow v9 flows to ``nfcapd -y``), and the
median latency (3 runs) of: top-10 hosts by bytes over the last hour and over everything, a
filtered report, and a time series. Targets: >= 2 M inserts/s, last hour < 0.5 s, everything
< 3 s, bytes per session <= nfcapd's.

With ``--backend clickhouse`` the same sessions go to a two-shard ClickHouse cluster started
for the run (Debian's clickhouse-server, two servers on loopback ports, as the tests start
it), and the same queries run through its Distributed table; CPU then counts the servers'
too. ``--backend both`` runs one after the other, side by side.

Run: ``.venv/bin/python bench/store_query.py [--sessions N] [--quick] [--backend duckdb|clickhouse|both]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests/support: the ClickHouse cluster, as the tests start it

from sluice.flows.enrich import Enricher  # noqa: E402
from sluice.flows.schema import FlowBatch, SessionBatch  # noqa: E402
from sluice.query.filter import parse  # noqa: E402
from sluice.query.reports import Direction, Entity, Metric, ReportSpec, SeriesSpec  # noqa: E402
from sluice.simulate.encode import NetflowV9Encoder  # noqa: E402
from sluice.store.duckdb_store import DuckDBStore  # noqa: E402

DAY_MS = 86_400_000
SPAN_MS = 7 * DAY_MS
END_MS = 1_790_000_000_000 - 1_790_000_000_000 % DAY_MS
START_MS = END_MS - SPAN_MS


def v4(ints: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ints), 16), np.uint8)
    out[:, 10:12] = 0xFF
    out[:, 12:] = ints.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def chunk(rng: np.random.Generator, n: int, t0: int, t1: int, first_id: int) -> SessionBatch:
    """n sessions ending in [t0, t1): a few heavy internal hosts and many light ones."""
    internal = 0x0A000000 + (rng.zipf(1.2, n) % 60_000)
    public_blocks = np.array([0x08080000, 0x01001000, 0x02100000, 0x05010000, 0x1F0D4000, 0x29000000,
                              0x2D3C0000, 0x4D580000, 0x65200000, 0x85000000, 0x97650000, 0xC1000000], np.int64)
    external = public_blocks[rng.integers(0, len(public_blocks), n)] + (rng.zipf(1.1, n) % 65_000)
    services = np.array([443, 80, 53, 22, 25, 123, 3389, 8080])
    srv_port = services[np.minimum(rng.zipf(1.6, n) - 1, len(services) - 1)]
    proto = np.where(np.isin(srv_port, (53, 123)), 17, 6)
    end = np.sort(rng.integers(t0, t1, n))
    start = end - rng.exponential(20_000, n).astype(np.int64)
    outbound = rng.random(n) < 0.8
    cln = np.where(outbound, internal, external)
    srv = np.where(outbound, external, internal)
    cb = np.maximum(rng.lognormal(7, 1.5, n), 40).astype(np.uint64)
    sb = np.maximum(rng.lognormal(9, 2.0, n), 40).astype(np.uint64)
    return SessionBatch.build(
        n, session_id=np.arange(first_id, first_id + n, dtype=np.uint64), start_ms=start, end_ms=end,
        exporter_addr=v4(0xC0000200 + rng.integers(1, 5, n)), protocol=proto,
        cln_addr=v4(cln), srv_addr=v4(srv), cln_port=rng.integers(1024, 65536, n), srv_port=srv_port,
        cln_bytes=cb, srv_bytes=sb, cln_pkts=np.maximum(cb // 600, 1), srv_pkts=np.maximum(sb // 1200, 1),
        tcp_flags=np.where(proto == 6, 0x1B, 0), input_if=rng.integers(1, 8, n), output_if=10, sampling_rate=1,
        cln_asn=rng.choice([0, 64500, 15169, 3320], n), srv_asn=rng.choice([0, 64501, 13335, 16509], n))


def as_flows(s: SessionBatch) -> FlowBatch:
    """The two directions of each session, as an exporter would send them."""
    n = len(s)
    common = dict(time_start_ms=s["start_ms"], time_end_ms=s["end_ms"], protocol=s["protocol"],
                  input_if=s["input_if"], output_if=s["output_if"], sampling_rate=1)
    fwd = FlowBatch.build(n, src_addr=s["cln_addr"], dst_addr=s["srv_addr"], src_port=s["cln_port"],
                          dst_port=s["srv_port"], bytes=s["cln_bytes"], packets=s["cln_pkts"],
                          tcp_flags=s["tcp_flags"], **common)
    rev = FlowBatch.build(n, src_addr=s["srv_addr"], dst_addr=s["cln_addr"], src_port=s["srv_port"],
                          dst_port=s["cln_port"], bytes=s["srv_bytes"], packets=s["srv_pkts"],
                          tcp_flags=s["tcp_flags"], **common)
    return FlowBatch.concat([fwd, rev])


def nfcapd_bytes_per_session(sample: SessionBatch, workdir: Path) -> tuple[float, int]:
    """nfcapd (LZ4) file size per session for the sample's flows; and the flows it stored."""
    binary = shutil.which("nfcapd")
    if binary is None:
        return float("nan"), 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flowdir = workdir / "nfcapd"
    flowdir.mkdir()
    proc = subprocess.Popen([binary, "-p", str(port), "-b", "127.0.0.1", "-w", str(flowdir), "-t", "3600", "-y",
                             "-B", str(32 << 20)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)
    flows = as_flows(sample)
    datagrams = NetflowV9Encoder(template_every=50).encode(flows, END_MS)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    started = time.perf_counter()
    for i, d in enumerate(datagrams):  # paced well below nfcapd's limit: 300 k flows/s
        while (time.perf_counter() - started) * 10_000 < i:
            pass
        sock.send(d)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    stored = int(re.search(r"Flows: (\d+)", out).group(1))
    size = sum(p.stat().st_size for p in flowdir.glob("nfcapd.*"))
    return size / len(sample), stored


def timed(fn, runs: int = 3) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def proc_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100_000_000)
    parser.add_argument("--chunk", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=2_000_000, help="sessions sent to nfcapd for the size ratio")
    parser.add_argument("--quick", action="store_true", help="2 M sessions")
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a temporary directory)")
    parser.add_argument("--backend", choices=["duckdb", "clickhouse", "both"], default="duckdb")
    args = parser.parse_args()
    for backend in ["duckdb", "clickhouse"] if args.backend == "both" else [args.backend]:
        run(args, backend)
    return 0


def run(args: argparse.Namespace, backend: str) -> None:
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)  # not each refused try while a server starts
    total = 2_000_000 if args.quick else args.sessions
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}")
    print(f"== backend: {backend}")
    workdir = Path(tempfile.mkdtemp(dir=args.dir))
    cluster = None
    server_cpu = lambda: 0.0  # noqa: E731
    try:
        if backend == "clickhouse":
            from sluice.store.clickhouse_store import ClickHouseStore
            from tests.support.clickhouse import CLUSTER, ClickHouseCluster

            cluster = ClickHouseCluster()
            pids = [server.proc.pid for server in cluster.servers]
            server_cpu = lambda: sum(proc_cpu_s(pid) for pid in pids)  # noqa: E731

            def open_store() -> object:
                return ClickHouseStore(cluster.addresses, CLUSTER, database="bench", flush_rows=10**9)
        else:

            def open_store() -> object:
                return DuckDBStore(workdir / "sessions.duckdb", flush_rows=10**9)

        store = open_store()
        enricher = Enricher()
        rng = np.random.default_rng(42)
        chunks = max(total // args.chunk, 1)
        insert_s = insert_cpu_s = enrich_s = 0.0
        sample = None
        for k in range(chunks):
            t0 = START_MS + SPAN_MS * k // chunks
            t1 = START_MS + SPAN_MS * (k + 1) // chunks
            batch = chunk(rng, args.chunk, t0, t1, k * args.chunk)
            t = time.perf_counter()
            batch = enricher(batch)
            enrich_s += time.perf_counter() - t
            if sample is None:
                sample = batch.take(np.arange(min(args.sample, len(batch))))
            t, c, sc = time.perf_counter(), time.process_time(), server_cpu()
            store.append(batch)
            store.flush()
            insert_s += time.perf_counter() - t
            # every thread's (DuckDB's or pyarrow's too), and the ClickHouse servers'
            insert_cpu_s += time.process_time() - c + server_cpu() - sc
            if (k + 1) % 10 == 0:
                print(f"  {(k + 1) * args.chunk / 1e6:.0f} M sessions stored", flush=True)
        rows = chunks * args.chunk
        if backend == "duckdb":
            store.close()
            store = DuckDBStore(workdir / "sessions.duckdb")
        # as the server's maintenance does once a day is over (ClickHouse: every shard's days,
        # the servers' CPU included)
        t, c, sc = time.perf_counter(), time.process_time(), server_cpu()
        days = store.build_rollups(END_MS + 2 * DAY_MS)
        rollup_s, rollup_cpu_s = time.perf_counter() - t, time.process_time() - c + server_cpu() - sc
        stats = store.stats()
        per_session = stats.bytes_on_disk / stats.rows
        print(f"inserted {rows / 1e6:.0f} M sessions: {rows / insert_s / 1e6:.2f} M sessions/s, "
              f"{insert_cpu_s / rows * 1e6:.2f} CPU-s per M (enrichment {2 * rows / enrich_s / 1e6:.1f} M lookups/s, not included)")
        print(f"daily host rollups: {days} {'days' if backend == 'duckdb' else 'shard-days'} summed in "
              f"{rollup_s:.1f} s, {rollup_cpu_s:.1f} CPU-s (off the insert path, once per day)")
        nf_per_session, nf_flows = nfcapd_bytes_per_session(sample, workdir)
        print(f"bytes on disk per session: sluice {per_session:.1f}, nfcapd -y (LZ4, two flows per session) "
              f"{nf_per_session:.1f}  -> ratio {per_session / nf_per_session:.2f} "
              f"(nfcapd stored {nf_flows} of {2 * len(sample)} flows of the sample)")
        last_hour = ReportSpec(Entity.HOST, Metric.BYTES, Direction.EITHER, END_MS - 3_600_000, END_MS)
        everything = ReportSpec(Entity.HOST, Metric.BYTES, Direction.EITHER, START_MS - DAY_MS, END_MS + DAY_MS)
        everything_sent = ReportSpec(Entity.HOST, Metric.BYTES, Direction.SENDER, START_MS + 3_600_000, END_MS)
        filtered = ReportSpec(Entity.PORT, Metric.SESSIONS, Direction.EITHER, END_MS - DAY_MS, END_MS,
                              where=parse("PROTO == tcp && COUNTRY != US && TOTBYTS > 10000"))
        series = SeriesSpec(Metric.BYTES, END_MS - DAY_MS, END_MS)
        results = [
            ("top-10 hosts by bytes, last hour", lambda: store.report(last_hour), 0.5),
            ("top-10 hosts by bytes, everything", lambda: store.report(everything), 3.0),
            ("top-10 hosts by bytes sent, 7 days less 1 h", lambda: store.report(everything_sent), None),
            ("top-10 ports by sessions, last day, filtered", lambda: store.report(filtered), None),
            ("bytes time series, last day (auto buckets)", lambda: store.timeseries(series), None),
        ]
        results.insert(3, ("same, everything, raw rows (no rollups)",
                           lambda: store.report(everything, use_rollups=False), None))
        print(f"query latency over {stats.rows / 1e6:.0f} M sessions (median of 3):")
        for name, fn, target in results:
            seconds, table = timed(fn)
            verdict = "" if target is None else (" (target < %.1f s: %s)" % (target, "met" if seconds < target else "MISSED"))
            print(f"  {name:48} {seconds:7.3f} s  {table.num_rows} rows{verdict}")
        store.close()
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
