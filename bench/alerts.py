#!/usr/bin/env python3
"""Alerting benchmark: what 20 alert definitions cost the ingest path, how fast an alert is
recorded, and how much memory the windows take with a million hosts.

1. Throughput. The ingest benchmark's ladder (``bench/ingest.py``: one pinned sender, one
   pinned ``sluice serve`` with one session worker, IPFIX, 30 records per datagram, every
   record a new conversation) run twice, the two climbing in turn (at each rate, one rung
   each): without alert definitions, and with 20 definitions covering every entity type and metric (including
   unique hosts over 1 h) and every kind of threshold (rates over 10 s and 30 s windows, a
   baseline, a lower threshold on watched ASNs). A rung passes with alerts only if >= 99.9 % of the flows were
   decoded *and* every session row was evaluated (none dropped, the queue drained).
   Reported: the highest passing rate each way and their ratio (target >= 70 %), and at the
   highest rate with the definitions, the CPU per flow without them over that with them. With
   ``--workers N`` (N > 1) both ladders run ``sluice serve --workers N`` on every core
   instead, the sender's included: what the default of one worker per core keeps.
2. Latency. With the 20 definitions and background traffic running, probe datagrams each
   push a fresh host over a threshold; the time from sending the probe to the alert record
   being readable over the API (polled every 2 ms). Reported: p50, p99 (target p99 < 1 s).
3. Memory. In-process, the same 20 definitions fed 1,000,000 distinct hosts within their
   windows (two sessions each, to 20,000 servers); the engine's own accounting and the
   process RSS growth (target < 1 GiB), right after the last batch and once glibc's heap
   was trimmed as the server's maintenance trims it (``sluice.allocator.trim_heap``); the
   compiled kernels are loaded by a small run first.
4. Engine cost (``engine``). In process, no server: session rows of new conversations (5,000
   clients x 60,000 servers, random client ports) at ``--engine-rate`` rows per simulated
   second into a fresh engine with the 20 definitions, and with each group of them alone
   (unique hosts/ports; host pairs; the other host sums; ports, countries and ASNs). The
   first ``--engine-warm`` seconds (the windows growing) are measured apart from the
   ``--engine-seconds`` after them (steady: the host pairs and the pairs of unique hosts
   are at their bounds by then, so nothing grows). Reported per group and phase: CPU
   seconds per million rows, user and system time and minor page faults (growing windows
   touch new memory: on some VMs the first touch costs several microseconds a page, which
   shows as system time), beside the cost of making the rows alone; and the wall time the
   evaluations took per million rows, on ``--engine-threads`` evaluation threads (1 by
   default; the server uses one per core), and what each task took (each definition, each
   entity type's rows, the rows' history: ``AlertEngine.cpu_seconds``, as ``/metrics``
   shows them). ``--engine-pool 3000000`` loops a pool of conversations as the throughput
   part's traffic does (its pairs of hosts recur, the tables stay below their bounds).

Run: ``.venv/bin/python bench/alerts.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import cluster as cluster_bench  # noqa: E402
import ingest as ingest_bench  # noqa: E402
from sluice.alerts.definition import Definition, DefinitionIn  # noqa: E402
from sluice.alerts.engine import AlertEngine  # noqa: E402
from sluice.allocator import keep_freed_memory, trim_heap, use_huge_pages  # noqa: E402
from sluice.config import Settings  # noqa: E402
from sluice.flows.schema import Arrivals, FlowBatch, SessionBatch  # noqa: E402
from sluice.simulate.encode import NetflowV5Encoder  # noqa: E402

ADMIN_PASSWORD = "bench-admin-password"
SESSIONS_PER_HOST = 2
THRESHOLD = 10**15  # high: the throughput runs measure evaluation, not alert storms

#: the kinds of threshold beside the plain upper one (issue 15): a rate over a short window
#: (floods), a baseline (K times each entity's usual value), a lower threshold on watched ones
RATE = {"per_second": True}
BASELINE = {"threshold_type": "baseline", "min_volume": 10**12}
LOWER = {"threshold_type": "lower", "watch": ["64512", "64513", "64999"]}
#: (entity, metric, interval, prefilter, kind): every entity type and every metric at least
#: once, and every kind of threshold
DEFINITIONS = [
    ("host", "bytes_sent", "1m", "", {}), ("host", "bytes_received", "5m", "PROTO == tcp", {}),
    ("host", "packets_total", "15m", "", {}), ("host", "bits_sent", "1h", "", BASELINE),
    ("host", "sessions_initiated", "5m", "", {}), ("host", "sessions_received", "30m", "", {}),
    ("host", "unique_hosts", "1h", "", {}), ("host", "unique_ports", "5m", "", {}),
    ("host", "packets_received", "10s", "", RATE),
    ("host_pair", "bytes_total", "5m", "", {}), ("host_pair", "sessions_initiated", "15m", "", {}),
    ("host_pair", "bits_received", "1h", "", {}),
    ("port", "sessions_received", "1m", "SRVPORT < 1024", {}), ("port", "unique_hosts", "1h", "", {}),
    ("port", "bits_received", "5m", "", {}), ("port", "bits_total", "30s", "", RATE),
    ("country", "bytes_sent", "1h", "", {}), ("country", "packets_sent", "12h", "", {}),
    ("asn", "bytes_total", "1d", "", {}), ("asn", "packets_received", "1m", "", LOWER),
]


def definitions_in(threshold: int = THRESHOLD) -> list[DefinitionIn]:
    kinds = {"baseline": 5, "lower": 1}  # K; below one packet: only if a watched AS went quiet
    return [DefinitionIn(title=f"{e} {m} {iv} {kind.get('threshold_type', 'rate' if kind else 'upper')}", entity=e,
                         metric=m, interval=iv, prefilter=pf,
                         threshold=kinds.get(kind.get("threshold_type", ""), threshold // (100 if kind else 1)), **kind)
            for e, m, iv, pf, kind in DEFINITIONS]


def stored_definitions() -> list[Definition]:
    """The 20 definitions as the engine takes them (ids from 1, in ``DEFINITIONS`` order)."""
    return [Definition(id=i + 1, user_id=1, **d.model_dump()) for i, d in enumerate(definitions_in())]


metrics = cluster_bench.metrics


class SluiceWithAlerts(ingest_bench.Sluice):
    """``sluice serve`` as in the ingest benchmark, with the 20 definitions installed."""

    name = "sluice+alerts"
    definitions: list[DefinitionIn] = []

    def __init__(self, workdir: Path, workers: int = 1):
        os.environ["SLUICE_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        super().__init__(workdir, workers)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.http}", auth=("admin", ADMIN_PASSWORD), timeout=10) as c:
            for d in self.definitions:
                c.post("/api/v1/alert-definitions", json=d.model_dump(mode="json")).raise_for_status()

    def stop(self) -> dict[str, int]:
        # every session row must have been evaluated: wait for the queue to drain
        deadline = time.time() + 5
        while True:
            m = metrics(self.http)
            done = m.get("sluice_alert_rows_evaluated_total", 0) >= m.get("sluice_session_rows_total", 0)
            if done or time.time() > deadline:
                break
            time.sleep(0.1)
        self.alert_rows_ok = done and m.get("sluice_alert_rows_dropped_total", 0) == 0
        self.alert_lag_s = 5 - max(0.0, deadline - time.time())
        return super().stop()


def _rung(kind: type, workdir: Path, datagrams: list[bytes], rate: float, seconds: float,
          workers: int, log: list[dict]) -> tuple[bool, bool]:
    """One rung of ``kind`` at ``rate`` (a rung that loses gets one more attempt; every attempt
    is printed and kept in ``log``): (whether it passed, whether it counts: passed with the
    sender keeping up). A rung passed at a rate the sender fell short of does not count, and
    the ladder goes on."""
    for attempt in range(1, ingest_bench.ATTEMPTS + 1):
        collector_box: list = []

        def factory(wd: Path, workers: int, kind: type = kind, box: list = collector_box) -> object:
            c = kind(wd, workers)
            box.append(c)
            return c

        rung = ingest_bench.run_rung(factory, workdir, "ipfix", "new", workers, datagrams, rate, seconds)
        alerts_ok = getattr(collector_box[0], "alert_rows_ok", True)
        lag = getattr(collector_box[0], "alert_lag_s", 0.0)
        ok = rung.lossless and alerts_ok
        log.append({"collector": kind.name, "workers": workers, "target": rate, "attempt": attempt,
                    "received": rung.ratio, "alerts_kept_up": alerts_ok, "alerts_caught_up_s": lag,
                    "cpu_s_per_M": rung.cpu_per_m, "peak_rss_mb": rung.peak_rss_mb, "passed": ok})
        print(f"  {kind.name:14} target {rate / 1e6:5.2f} M/s  sent {rung.send_rate / 1e6:5.2f} M/s  received "
              f"{rung.ratio * 100:7.3f} %  alert rows {'all evaluated' if alerts_ok else 'NOT all evaluated'} "
              f"({lag:.1f} s after)  "
              f"cpu {rung.cpu_per_m:5.2f} s/M  RSS {rung.peak_rss_mb:6.1f} MB  (attempt {attempt})",
              flush=True)
        if ok:
            break
    if ok and not rung.sender_kept:
        print(f"  {kind.name:14} the sender did not keep {rate / 1e6:.2f} M/s: the rung does not count", flush=True)
    return ok, ok and rung.sender_kept


def ladders_in_turn(kinds: list[type], workdir: Path, datagrams: list[bytes], rates: list[float],
                    seconds: float, workers: int = 1) -> tuple[list[float], list[dict]]:
    """Each kind's highest passing rate, the kinds climbing together: at each rate every kind
    still climbing runs its rung before any goes higher. Their figures are compared, and
    this VM's speed drifts over minutes: one ladder after the other had the second run up to
    ten minutes later, on a machine up to a third slower or faster."""
    best, log = [0.0] * len(kinds), []
    climbing = set(range(len(kinds)))
    for rate in rates:
        for k in sorted(climbing):
            passed, counts = _rung(kinds[k], workdir, datagrams, rate, seconds, workers, log)
            if counts:
                best[k] = rate
            elif not passed:
                climbing.discard(k)
        if not climbing:
            break
    return best, log


def cpu_ratio_at(log: list[dict], rate: float, without: str, with_: str) -> float:
    """CPU-s per M flows without definitions over that with them, at ``rate``, from the
    passing attempts of both kinds there (nan if either did not pass): the share of
    ingest kept by CPU per flow, finer than the ladder's steps."""
    def cpu(name: str) -> float:
        got = [r["cpu_s_per_M"] for r in log if r["collector"] == name and r["target"] == rate and r["passed"]]
        return got[-1] if got else float("nan")
    return cpu(without) / cpu(with_)


def cluster_ladder(workdir: Path, collectors: int, datagrams: list[bytes], rates: list[float],
                   seconds: float) -> tuple[float, list[dict]]:
    """The ladder with the 20 definitions over ``collectors`` collectors and an alerting node."""
    best, log = 0.0, []
    for rate in rates:
        for _ in range(ingest_bench.ATTEMPTS):
            r = cluster_bench.rung(workdir, definitions_in(), collectors, datagrams, rate, seconds)
            ok = r["lossless"] and r["alerts_kept_up"]
            if ok:
                break
        log.append(r)
        print(f"  {r['collector']:14} target {rate / 1e6:5.2f} M/s  sent {r['send_rate'] / 1e6:5.2f} M/s  received "
              f"{r['received'] * 100:7.3f} %  partials {'all merged' if r['alerts_kept_up'] else 'NOT all merged'} "
              f"({r['partials']:.0f})  cpu {r['cpu_s_per_M']:5.2f} s/M  RSS {r['peak_rss_mb']:6.1f} MB", flush=True)
        if ok and r["send_rate"] >= ingest_bench.SENDER_KEPT * rate:
            best = rate
        elif not ok:
            break
    return best, log


# -- latency ----------------------------------------------------------------------------------

def probe_flow(i: int) -> FlowBatch:
    """One flow from a fresh host, far over the probe definition's threshold."""
    src = np.zeros((1, 16), np.uint8)
    src[0, 10:12] = 255
    src[0, 12:] = [10, 250, (i >> 8) & 255, i & 255]
    dst = np.zeros((1, 16), np.uint8)
    dst[0, 10:12] = 255
    dst[0, 12:] = [192, 0, 2, 99]
    now = int(time.time() * 1000)
    return FlowBatch.build(1, time_start_ms=now - 1000, time_end_ms=now, src_addr=src, dst_addr=dst, src_port=40000,
                           dst_port=4444, protocol=6, tcp_flags=0x1B, bytes=10**9, packets=10**6, sampling_rate=1)


def latency(workdir: Path, background_rate: float, probes: int, collectors: int = 0,
            workers: int = 1) -> dict[str, float]:
    """Probes to a single server (``sluice serve --workers workers``), or (``collectors``) to
    the collectors of a cluster in turn, the records read from the alerting node."""
    definitions = definitions_in() + [DefinitionIn(
        title="probe", entity="host", metric="bytes_sent", interval="1m", threshold=10**8, prefilter="SRVPORT == 4444",
        severity="HIGH")]
    if collectors:
        server: object = cluster_bench.Cluster(Path(tempfile.mkdtemp(dir=workdir)), definitions, collectors,
                                               ADMIN_PASSWORD)
        ports = server.ports
    else:
        SluiceWithAlerts.definitions = definitions
        server = SluiceWithAlerts(Path(tempfile.mkdtemp(dir=workdir)), workers)
        ports = [server.port]
    datagrams = ingest_bench.datagrams_for("ipfix", "recurring", int(time.time() * 1000))
    stop = threading.Event()

    def background() -> None:
        while not stop.is_set():
            cluster_bench.send_split(ports, datagrams, background_rate, 1.0)

    bg = threading.Thread(target=background, daemon=True)
    bg.start()
    time.sleep(2.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    encoder = NetflowV5Encoder()
    # poll with a bearer token: a password is checked with argon2, deliberately slow
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http}", auth=("admin", ADMIN_PASSWORD), timeout=10) as c:
        token = c.post("/api/v1/tokens", json={"name": "bench"}).json()["token"]
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.http}", headers={"Authorization": f"Bearer {token}"},
                          timeout=10)
    probe_def = [d["id"] for d in client.get("/api/v1/alert-definitions").json() if d["title"] == "probe"][0]
    seen = 0
    samples = []
    for i in range(probes):
        [datagram] = encoder.encode(probe_flow(i), int(time.time() * 1000))
        t0 = time.perf_counter()
        sock.sendto(datagram, ("127.0.0.1", ports[i % len(ports)]))
        while True:
            n = len(client.get("/api/v1/alerts", params={"definition": probe_def, "limit": 100_000}).json())
            if n > seen:
                samples.append(time.perf_counter() - t0)
                seen = n
                break
            if time.perf_counter() - t0 > 10:
                samples.append(float("inf"))
                break
            time.sleep(0.002)
        time.sleep(0.05 + (i % 7) * 0.013)  # probes land at different points of the evaluation cycle
    stop.set()
    bg.join(5)
    client.close()
    server.stop()
    arr = np.array(samples)
    return {"probes": probes, "collectors": collectors, "workers": workers, "background_flows_per_s": background_rate,
            "p50_s": float(np.percentile(arr, 50)),
            "p99_s": float(np.percentile(arr, 99)), "max_s": float(arr.max())}


# -- memory ------------------------------------------------------------------------------------

def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def feed(engine: AlertEngine, hosts: int, sessions_per_host: int = SESSIONS_PER_HOST, batch: int = 200_000) -> None:
    """``hosts`` distinct clients, ``sessions_per_host`` sessions each (to 20,000 servers), in
    batches one second of arrival apart: everything stays inside every window."""
    rng = np.random.default_rng(5)
    total = hosts * sessions_per_host
    client_ids = np.repeat(np.arange(hosts, dtype=np.uint32), sessions_per_host)
    rng.shuffle(client_ids)
    now = 1_900_000_000_000
    for k in range(0, total, batch):
        c = client_ids[k:k + batch]
        n = len(c)
        cln = np.zeros((n, 16), np.uint8)
        cln[:, 10:12] = 255
        cln[:, 12] = 10
        cln[:, 13:16] = np.stack([(c >> 16) & 255, (c >> 8) & 255, c & 255], axis=1)
        srv = np.zeros((n, 16), np.uint8)
        srv[:, 10:12] = 255
        s_id = rng.integers(0, 20_000, n)
        srv[:, 12] = 172
        srv[:, 13] = 16
        srv[:, 14] = s_id >> 8
        srv[:, 15] = s_id & 255
        sessions = SessionBatch.build(
            n, session_id=np.arange(k, k + n, dtype=np.uint64), cln_addr=cln, srv_addr=srv,
            cln_port=rng.integers(1024, 65535, n), srv_port=rng.choice([22, 25, 53, 80, 443, 8080], n), protocol=6,
            cln_bytes=rng.integers(100, 10**6, n), srv_bytes=rng.integers(100, 10**6, n),
            cln_pkts=rng.integers(1, 1000, n), srv_pkts=rng.integers(1, 1000, n), cln_country=b"XP",
            srv_country=b"US", cln_asn=64512 + (c % 1000), srv_asn=15169)
        # tracker slots as a tracker of a million sessions hands them out: taken again in turn
        engine.evaluate(sessions, Arrivals(np.ones(n, bool), (k + np.arange(n)) % 1_000_000), now)
        now += 1000


def memory(hosts: int, sessions_per_host: int = SESSIONS_PER_HOST) -> dict[str, float]:
    use_huge_pages(Settings().huge_pages)  # as ``sluice serve`` does
    keep_freed_memory()  # as well: what it frees stays in the heap until trimmed
    defs = stored_definitions()
    # a server's first batches load the compiled kernels (tens of MB, once per process): not
    # memory per host, so they are loaded before the measurement
    warm = AlertEngine()
    warm.set_definitions(defs)
    feed(warm, 1000)
    del warm
    engine = AlertEngine()
    engine.set_definitions(defs)
    before = rss_mb()
    t0 = time.perf_counter()
    feed(engine, hosts, sessions_per_host)
    elapsed = time.perf_counter() - t0
    accounted = sum(engine.memory().values()) / 2**20
    growth = rss_mb() - before
    trim_heap()  # as the server's maintenance does once 64 MB are free (at most every 30 s)
    return {"distinct_hosts": hosts, "session_rows": hosts * sessions_per_host, "engine_accounted_mb": accounted,
            "rss_growth_mb": growth, "rss_growth_after_trim_mb": rss_mb() - before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows_per_s_in_process": hosts * sessions_per_host / elapsed}


#: the engine part's groups: definitions (by their place in DEFINITIONS, from 1) measured alone
ENGINE_GROUPS = {
    "all 20": list(range(1, 21)),
    "unique hosts/ports (3)": [7, 8, 14],
    "host pairs (3)": [10, 11, 12],
    "other host sums (7)": [1, 2, 3, 4, 5, 6, 9],
    "ports, countries, ASNs (7)": [13, 15, 16, 17, 18, 19, 20],
    "none (making the rows)": [],
}


def new_conversations(rng: np.random.Generator, n: int, first_id: int, now_ms: int) -> SessionBatch:
    def addresses(base: int, count: int) -> np.ndarray:
        out = np.zeros((n, 16), np.uint8)
        out[:, 10:12] = 255
        out[:, 12:] = (base + rng.integers(0, count, n)).astype(">u4").view(np.uint8).reshape(n, 4)
        return out
    countries = np.array([b"US", b"DE", b"FR", b"CN", b"BR", b"JP", b"GB", b"NL"], "S2")
    return SessionBatch.build(
        n, session_id=np.arange(first_id, first_id + n, dtype=np.uint64), start_ms=now_ms - 1000, end_ms=now_ms,
        protocol=6, cln_addr=addresses(0x0A000000, 5000), srv_addr=addresses(0xC0000000, 60000),
        cln_port=rng.integers(1024, 65535, n), srv_port=rng.choice([80, 443, 22, 53], n),
        cln_bytes=rng.integers(40, 5000, n), srv_bytes=rng.integers(40, 50000, n), cln_pkts=rng.integers(1, 10, n),
        srv_pkts=rng.integers(1, 40, n), cln_country=countries[rng.integers(0, 8, n)],
        srv_country=countries[rng.integers(0, 8, n)], cln_asn=rng.integers(1, 200, n),
        srv_asn=rng.integers(1, 2000, n))


def engine_cost(ids: list[int], rate: float, seconds: float, warm: float = 0.0, batch: int = 30_000,
                threads: int = 1, pool: int = 0) -> dict[str, object]:
    """One fresh engine with the definitions ``ids`` fed ``warm`` then ``seconds`` of new
    conversations: the cost of each phase (while its windows grow; then once they are full),
    in CPU time and in wall time (on ``threads`` evaluation threads), and each task's CPU time
    (``AlertEngine.cpu_seconds``). ``pool``: the conversations come from a pool of that many,
    looped (each time a new session, as the throughput part's traffic), instead of being new
    every time."""
    defs = stored_definitions()
    engine = AlertEngine(evaluation_threads=threads)
    engine.set_definitions([d for d in defs if d.id in ids])
    rng = np.random.default_rng(1)
    t0 = 1_900_000_000_000
    looped = [new_conversations(rng, batch, 0, t0) for _ in range(max(pool // batch, 1))] if pool else []
    titles = {f"definition:{d.id}": d.title for d in defs}

    def conversations(b: int, now: int) -> SessionBatch:
        if not looped:
            return new_conversations(rng, batch, b * batch, now)
        columns = dict(looped[b % len(looped)].columns)
        columns["session_id"] = np.arange(b * batch, (b + 1) * batch, dtype=np.uint64)
        columns["start_ms"], columns["end_ms"] = np.full(batch, now - 1000), np.full(batch, now)
        return SessionBatch(columns)

    def phase(first: int, n_batches: int) -> dict[str, object]:
        before, started, evaluating = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0.0
        tasks_before = engine.cpu_seconds()
        for b in range(first, first + n_batches):
            now = t0 + int(b * batch / rate * 1000)
            sessions = conversations(b, now)
            slots = (b * batch + np.arange(batch)) % 1_000_000  # a tracker of a million sessions
            if ids:
                arrivals = Arrivals(np.ones(batch, bool), slots, np.full(batch, now, np.int64))
                t = time.perf_counter()
                engine.evaluate(sessions, arrivals, now)
                evaluating += time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_SELF)
        rows_m = max(n_batches * batch, 1) / 1e6
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        if not ids:  # making the batches: all the time there is
            evaluating = time.perf_counter() - started
        tasks = {titles.get(task, task): (spent - tasks_before.get(task, 0.0)) / rows_m
                 for task, spent in engine.cpu_seconds().items()}
        return {"rows": n_batches * batch, "cpu_s_per_M": (user + system) / rows_m, "user_s": user,
                "system_s": system, "minor_faults_M": (after.ru_minflt - before.ru_minflt) / 1e6,
                "wall_s_per_M": evaluating / rows_m,
                "tasks_cpu_s_per_M": dict(sorted(tasks.items(), key=lambda kv: -kv[1]))}

    n_warm = int(warm * rate / batch)
    out: dict[str, object] = {"definitions": len(ids)}
    if n_warm:
        out["warm_up"] = phase(0, n_warm)
    out.update(phase(n_warm, int(seconds * rate / batch)))
    out["engine_accounted_mb"] = sum(engine.memory().values()) / 2**20
    out["entities_dropped"] = engine.stats["entities_dropped"]
    out["threads"] = threads
    engine.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: short rungs, few probes, 100k hosts")
    parser.add_argument("--rates", default="100000,200000,250000,300000,350000,400000,450000,500000,550000,600000,"
                                          "700000,800000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workers", type=int, default=1,
                        help="throughput and latency parts: sluice serve --workers N (1: pinned to one core; "
                             "N > 1: every core, the sender's included)")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to leave out: memory, throughput, latency, engine")
    parser.add_argument("--engine-rate", type=float, default=500_000,
                        help="engine part: session rows per simulated second")
    parser.add_argument("--engine-seconds", type=float, default=30,
                        help="engine part: simulated seconds measured per group, after --engine-warm")
    parser.add_argument("--engine-warm", type=float, default=60,
                        help="engine part: simulated seconds fed first (its windows growing), measured apart")
    parser.add_argument("--engine-group", action="append", dest="engine_groups", metavar="NAME",
                        help="engine part: a group to measure (repeat for several; default every one): "
                             + "; ".join(ENGINE_GROUPS))
    parser.add_argument("--engine-batch", type=int, default=30_000,
                        help="engine part: session rows per evaluation (the server's grow with load, up to 262,144)")
    parser.add_argument("--engine-pool", type=int, default=0,
                        help="engine part: conversations from a looped pool of this many (3000000: the throughput "
                             "part's traffic, whose pairs of hosts recur) instead of new ones every time (0)")
    parser.add_argument("--engine-threads", type=int, default=1,
                        help="engine part: evaluation threads (the server's default is one per core)")
    parser.add_argument("--collectors", type=int, default=0,
                        help="also run the throughput and latency parts on a cluster of this many collectors and an "
                             "alerting node (NATS JetStream), beside the single server in the same run")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    rates = [float(r) for r in args.rates.split(",")]
    seconds, probes, hosts = args.seconds, 200, 1_000_000
    if args.quick:
        rates, seconds, probes, hosts = [250_000, 500_000], 1.0, 20, 100_000
    info = ingest_bench.machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy {info['numpy']}")
    results: dict[str, object] = {"machine": info}

    mem = {"rss_growth_mb": float("nan")}
    if "memory" not in skip:
        print(f"\n3. memory: {hosts:,} distinct hosts in the windows of the 20 definitions (in process)")
        mem = memory(hosts)
        results["memory"] = mem
        print(f"  engine accounts for {mem['engine_accounted_mb']:.0f} MB; process RSS grew "
              f"{mem['rss_growth_mb']:.0f} MB, {mem['rss_growth_after_trim_mb']:.0f} MB once the heap was trimmed "
              f"(peak {mem['peak_rss_mb']:.0f} MB); evaluated {mem['rows_per_s_in_process'] / 1e6:.2f} M session "
              "rows/s")

    if "engine" not in skip:
        use_huge_pages(Settings().huge_pages)  # as ``sluice serve`` does
        AlertEngine.warm_up()
        print(f"\n4. engine cost in process: {args.engine_rate / 1e6:.2f} M new-conversation session rows per "
              f"simulated second, a fresh engine per group: {args.engine_warm:g} s while its windows grow, then "
              f"{args.engine_seconds:g} s measured apart (steady)")
        results["engine"] = {"rate": args.engine_rate, "seconds": args.engine_seconds, "warm": args.engine_warm,
                             "groups": {}}
        groups = args.engine_groups or list(ENGINE_GROUPS)
        unknown = [name for name in groups if name not in ENGINE_GROUPS]
        if unknown:
            parser.error(f"unknown --engine-group {unknown}: choose among {list(ENGINE_GROUPS)}")
        for name in groups:
            ids = ENGINE_GROUPS[name]
            cost = engine_cost(ids, args.engine_rate, args.engine_seconds, args.engine_warm,
                               batch=args.engine_batch, threads=args.engine_threads, pool=args.engine_pool)
            results["engine"]["groups"][name] = cost
            warm_up = cost.get("warm_up")
            growing = (f"growing {warm_up['cpu_s_per_M']:5.2f} (system {warm_up['system_s']:4.1f} s, "
                       f"{warm_up['minor_faults_M']:.2f} M page faults); " if isinstance(warm_up, dict) else "")
            print(f"  {name:27} {growing}steady {cost['cpu_s_per_M']:5.2f} CPU-s and {cost['wall_s_per_M']:5.2f} s "
                  f"per M rows on {cost['threads']} thread(s) (user "
                  f"{cost['user_s']:5.1f} s, system {cost['system_s']:4.1f} s, {cost['minor_faults_M']:.2f} M "
                  f"page faults); {cost['engine_accounted_mb']:,.0f} MB accounted, "
                  f"{cost['entities_dropped'] / 1e6:.1f} M entity rows over alerts.max_entities", flush=True)
            tasks = cost["tasks_cpu_s_per_M"]
            assert isinstance(tasks, dict)
            print("    costliest tasks (CPU-s per M rows): "
                  + ", ".join(f"{name} {seconds:.3f}" for name, seconds in list(tasks.items())[:6]), flush=True)
        if skip >= {"throughput", "latency"}:
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))
            return 0

    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {ingest_bench.SENDER_CPU})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with_alerts, ratio, clustered = 200_000.0, float("nan"), 100_000.0
        if "throughput" not in skip:
            print("\n1. ingest throughput, IPFIX, without and with 20 alert definitions")
            datagrams = ingest_bench.datagrams_for("ipfix", "new", int(time.time() * 1000))
            SluiceWithAlerts.definitions = definitions_in()
            kinds = [ingest_bench.Sluice, SluiceWithAlerts]
            (without, with_alerts), log = ladders_in_turn(kinds, workdir, datagrams, rates, seconds, args.workers)
            ratio = with_alerts / without if without else float("nan")
            by_cpu = cpu_ratio_at(log, with_alerts, ingest_bench.Sluice.name, SluiceWithAlerts.name)
            results["throughput"] = {"without_alerts": without, "with_alerts": with_alerts, "ratio": ratio,
                                     "cpu_ratio_at_with_alerts": by_cpu, "rungs": log}
            print(f"  highest rate without alerts {without / 1e6:.2f} M flows/s, with 20 definitions "
                  f"{with_alerts / 1e6:.2f} M flows/s: {ratio * 100:.0f} % (target >= 70 %); by CPU per flow "
                  f"at {with_alerts / 1e6:.2f} M: {by_cpu * 100:.0f} %")
            if args.collectors:
                print(f"\n1b. the same with 20 definitions over {args.collectors} collectors and an alerting node "
                      "(every process on the collector core)")
                clustered, log3 = cluster_ladder(workdir, args.collectors, datagrams, rates, seconds)
                results["throughput"]["cluster"] = {"collectors": args.collectors, "with_alerts": clustered,
                                                    "rungs": log3}
                print(f"  highest rate over {args.collectors} collectors {clustered / 1e6:.2f} M flows/s, one server "
                      f"{with_alerts / 1e6:.2f} M flows/s")
        if "latency" in skip:
            print(f"\nsummary: throughput with alerts {ratio * 100:.0f} % of without")
            if args.json:
                args.json.write_text(json.dumps(results, indent=2, default=str))
            return 0

        background = max(with_alerts / 2, 100_000)
        print(f"\n2. latency: datagram that crosses a threshold -> alert record readable over the API "
              f"({probes} probes, background {background / 1e6:.2f} M flows/s)")
        lat = latency(workdir, background, probes, workers=args.workers)
        results["latency"] = lat
        print(f"  p50 {lat['p50_s'] * 1000:.0f} ms, p99 {lat['p99_s'] * 1000:.0f} ms, max {lat['max_s'] * 1000:.0f} ms "
              f"(target p99 < 1000 ms)")
        if args.collectors:
            # every process of the cluster shares the one core: background at a fifth of what
            # its ladder kept (which counted the drain after the sender stopped), so that the
            # core is not saturated and the figure is the path's, not a queue's
            cbackground = max(clustered / 5, 50_000)
            print(f"\n2b. latency over {args.collectors} collectors: probes to each in turn, records read from the "
                  f"alerting node (background {cbackground / 1e6:.2f} M flows/s)")
            clat = latency(workdir, cbackground, probes, args.collectors)
            results["latency_cluster"] = clat
            print(f"  p50 {clat['p50_s'] * 1000:.0f} ms, p99 {clat['p99_s'] * 1000:.0f} ms, "
                  f"max {clat['max_s'] * 1000:.0f} ms (target p99 < 2000 ms)")
    print(f"\nsummary: throughput with alerts {ratio * 100:.0f} % of without; "
          f"latency p99 {lat['p99_s'] * 1000:.0f} ms; memory with {hosts:,} hosts {mem['rss_growth_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
