#!/usr/bin/env python3
"""Whole-server ingest benchmark: ``sluice serve`` against nfcapd (Debian nfdump), same sender.

What it measures is the server an operator runs: collector -> sessions -> enrichment ->
DuckDB store (no alert definitions), fed over loopback UDP. For each export protocol
(NetFlow v5, v9, IPFIX; 30 records a datagram) and each traffic shape:

- **new**: every record a new TCP conversation (random client ports, 5,000 clients x 60,000
  servers, current timestamps) - what a router on a busy network exports. The sender loops
  over a pool of distinct conversations three times ``max_sessions`` (1 M) long, so a
  conversation has been forgotten by the time it comes round again: the tracker lives at its
  bound, evicting on every batch (its steady state).
- **recurring**: 60,000 conversations, looped (long-lived sessions updated again and again).

one sender process paces pre-encoded datagrams at a ladder of rates (sleeping whenever it is
ahead of its schedule), to nfcapd and then to Sluice (a fresh collector per rung, the sender
on CPU 0, the collector on CPU 1). A rung is
**lossless** when >= 99.9 % of the flows sent were decoded *and* every session row the
tracker made was stored. The figure per collector is the highest lossless rate; beside it,
CPU seconds per million flows (all the collector's threads) and peak RSS. Rungs last
``--seconds`` (default 60: long enough for the tracker to reach its bound at the lower
rungs; shorter rungs measure a tracker still filling, which flatters it).

``--workers 1,2`` runs Sluice once per worker count (``sluice serve --workers N``). With one
worker the server is pinned to one core, as nfcapd is; with N > 1 it may use every core,
the sender's included (on a 2-core machine the sender then takes part of one).

``--alternate K`` (with one rate and several worker counts) answers "does CPU per flow stay
flat as workers are added?" on a machine whose speed drifts: instead of a ladder per worker
count, one rung of each worker count in turn, K rounds: each count's CPU-s per M flows
against the first count's in the same round, and the median of those. Add ``--one-core`` to
keep every count on one core. Add ``--independent`` for a reference that no hand-over
touches: in each round, beside N workers, N independent one-worker servers, each with 1/N of
``max_sessions`` and of the traffic and batches as large as the N workers' collector makes,
placed on the cores as the N workers are. They share nothing, so what they cost beyond one
server is what N processes at 1/N of the rate cost on this machine (their fixed costs per
second, the cores' caches), not a hand-over.

Both collectors ask for a 32 MB socket buffer (nfcapd ``-B``, Sluice's default). nfcapd asks
with plain SO_RCVBUF, which the kernel caps at ``net.core.rmem_max``; run as root, the
benchmark raises that to 32 MB for the run and sets it back after, so both get the same
buffer (not root: nfcapd gets what rmem_max allows, and a note says so).

Run: ``make bench`` or ``.venv/bin/python bench/ingest.py [--quick] [--json FILE]``.
Results go to ``bench/results/ingest.json`` with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sluice.collect.listener import batch_bounds  # noqa: E402
from sluice.config import CollectSettings  # noqa: E402
from sluice.flows.schema import FlowBatch  # noqa: E402
from sluice.simulate.encode import IpfixEncoder, NetflowV5Encoder, NetflowV9Encoder  # noqa: E402

RECORDS_PER_DATAGRAM = 30
THRESHOLD = 0.999
#: a rung counts only where the sender reached this share of its target rate
SENDER_KEPT = 0.95
ATTEMPTS = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_SESSIONS = 1_000_000
#: the encoders put the templates in every 20th datagram (v9, IPFIX): several ports get runs of
#: 20 in turn, so that each gets the templates
TEMPLATE_EVERY = 20
SENDER_CPU, COLLECTOR_CPU = 0, 1  # one core each, so the scheduler does not make them share


@dataclass
class Rung:
    collector: str
    protocol: str
    shape: str
    workers: int
    target_flows_per_s: float
    seconds: float
    sent_flows: int
    send_rate: float  # flows/s the sender achieved
    decoded_flows: int
    session_rows: int  # rows the tracker made
    stored_rows: int  # rows in the store after the drain
    socket_drops: int
    cpu_s: float
    peak_rss_mb: float

    @property
    def ratio(self) -> float:
        return self.decoded_flows / self.sent_flows if self.sent_flows else 0.0

    @property
    def lossless(self) -> bool:
        return self.ratio >= THRESHOLD and self.stored_rows >= self.session_rows

    @property
    def sender_kept(self) -> bool:
        """Whether the sender reached the target rate (``SENDER_KEPT`` of it)."""
        return self.send_rate >= SENDER_KEPT * self.target_flows_per_s

    @property
    def cpu_per_m(self) -> float:
        return self.cpu_s / max(self.decoded_flows, 1) * 1e6


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ipv4_mapped(ints: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ints), 16), np.uint8)
    out[:, 10] = out[:, 11] = 0xFF
    out[:, 12:] = ints.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def conversations(shape: str, now_ms: int, seed: int = 11) -> FlowBatch:
    """The pool the sender loops over: distinct TCP conversations, client to server."""
    rng = np.random.default_rng(seed)
    n = 3 * MAX_SESSIONS if shape == "new" else 60_000
    # distinct (client, client port, server, server port): draw extra and keep the first of each
    draw = int(n * 1.05)
    client = rng.integers(0, 5000, draw)
    server = rng.integers(0, 60000, draw)
    cport = rng.integers(1024, 65536, draw)
    sport = rng.choice(np.array([80, 443, 22, 53]), draw)
    key = (client.astype(np.uint64) << 40) | (server.astype(np.uint64) << 18) | (cport.astype(np.uint64) << 2)
    key |= np.searchsorted([22, 53, 80, 443], sport).astype(np.uint64)
    _, first = np.unique(key, return_index=True)
    pick = np.sort(first)[:n]
    rng.shuffle(pick)
    m = len(pick)
    return FlowBatch.build(
        m, src_addr=ipv4_mapped(0x0A010000 + client[pick]), dst_addr=ipv4_mapped(0x0A100000 + server[pick]),
        src_port=cport[pick], dst_port=sport[pick], protocol=6, tcp_flags=0x1B, bytes=1500, packets=6,
        time_start_ms=now_ms - 200, time_end_ms=now_ms, sampling_rate=1, input_if=1, output_if=2,
    )


def datagrams_for(protocol: str, shape: str, now_ms: int) -> list[bytes]:
    encoder = {"netflow5": NetflowV5Encoder(), "netflow9": NetflowV9Encoder(template_every=TEMPLATE_EVERY),
               "ipfix": IpfixEncoder(template_every=TEMPLATE_EVERY)}[protocol]
    return encoder.encode(conversations(shape, now_ms), now_ms, per_datagram=RECORDS_PER_DATAGRAM)


#: the sender sleeps this long whenever it is ahead of its schedule, instead of spinning: it
#: then takes from the machine what sending costs. Spinning on its core, it made one pinned
#: Sluice worker on the other core cost 13 % more CPU per flow (v9, 0.5 M flows/s: 1.85 and
#: 1.88 against 1.61 and 1.65 CPU-s per M), and it held a core that two workers share with it
AHEAD_SLEEP_S = 0.0002


def send(port: int, datagrams: list[bytes], rate: float, seconds: float) -> tuple[int, float]:
    """Send at ``rate`` flows/s for ``seconds``; returns (flows sent, flows/s achieved)."""
    return send_to([port], datagrams, rate, seconds)


def send_to(ports: list[int], datagrams: list[bytes], rate: float, seconds: float, run: int = 1) -> tuple[int, float]:
    """``send`` over several ports in turn, ``run`` datagrams at a time to each."""
    socks = []
    for port in ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    total = int(rate * seconds / RECORDS_PER_DATAGRAM)
    dg_rate = rate / RECORDS_PER_DATAGRAM
    sent, n, k = 0, len(datagrams), len(socks)
    start = time.perf_counter()
    while sent < total:
        due = min(int((time.perf_counter() - start) * dg_rate) + 1, total)
        if sent >= due:
            time.sleep(AHEAD_SLEEP_S)
            continue
        while sent < due:
            try:
                socks[sent // run % k].send(datagrams[sent % n])
            except (BlockingIOError, ConnectionRefusedError):
                pass  # counted as sent: the collector's socket is the one that must keep up
            sent += 1
    elapsed = time.perf_counter() - start
    for sock in socks:
        sock.close()
    return sent * RECORDS_PER_DATAGRAM, sent * RECORDS_PER_DATAGRAM / elapsed


def pin(cpu: int | None) -> None:
    if cpu is not None and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def proc_cpu_s(pid: int) -> float:
    """CPU time of a process and its children that have ended (workers, when they exit)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def tree_cpu_s(pid: int) -> float:
    """CPU time of a process and its live descendants."""
    total = proc_cpu_s(pid)
    for child in children(pid):
        try:
            fields = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out + [g for c in out for g in children(c)]


def tree_peak_rss_mb(pid: int) -> float:
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            m = re.search(r"VmHWM:\s+(\d+) kB", open(f"/proc/{p}/status").read())
            total += int(m.group(1)) / 1024 if m else 0.0
        except OSError:
            pass
    return total


class Nfcapd:
    name = "nfcapd"

    def __init__(self, workdir: Path, workers: int):
        self.port = free_port(socket.SOCK_DGRAM)
        self.data = flowdir = workdir / f"nfcapd-{self.port}"
        flowdir.mkdir()
        binary = shutil.which("nfcapd") or "/usr/bin/nfcapd"
        self.proc = subprocess.Popen([binary, "-p", str(self.port), "-b", "127.0.0.1", "-w", str(flowdir),
                                      "-t", "3600", "-B", str(RECEIVE_BUFFER)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=lambda: pin(COLLECTOR_CPU))
        time.sleep(0.5)

    def counts(self) -> dict[str, int] | None:
        return None  # known only at exit, from nfcapd's own summary line

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=300)  # it writes its file out first
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            print("  (nfcapd did not exit within 300 s of SIGTERM: rung counted as lost)", flush=True)
            return {"flows": 0, "rows": 0, "stored": 0, "drops": 0}
        m = re.search(r"Flows: (\d+)", out)
        if not m:
            raise RuntimeError(f"nfcapd printed no summary:\n{out}")
        flows = int(m.group(1))  # nfcapd writes every flow it decodes to its file
        return {"flows": flows, "rows": flows, "stored": flows, "drops": 0}


class Sluice:
    name = "sluice"
    #: several workers kept on the one core of one worker too (``--one-core``): the CPU per
    #: flow of the design alone, without the sender's core shared
    one_core = False

    def __init__(self, workdir: Path, workers: int, settings: dict[str, str] | None = None,
                 pinned: bool | None = None):
        """``settings``: SLUICE_* environment variables for the server (``docs/configuration.md``)."""
        self.port = free_port(socket.SOCK_DGRAM)
        self.http = free_port(socket.SOCK_STREAM)
        pinned = workers <= 1 or self.one_core if pinned is None else pinned
        env = None if settings is None else os.environ | settings
        binary = str(Path(sys.executable).parent / "sluice")
        extra = ["--workers", str(workers)] if workers else []
        self.data = data = workdir / f"sluice-{self.port}"
        self.proc = subprocess.Popen(
            [binary, "serve", "--no-simulate", "--listen", "127.0.0.1", "--netflow-port", str(self.port),
             "--ipfix-port", "0", "--sflow-port", "0", "--http-listen", "127.0.0.1", "--http-port", str(self.http),
             "--data-dir", str(data), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
            # one worker: pinned like nfcapd; several: every core (on a 2-core machine that
            # includes the sender's: the figure is then what the machine as a whole keeps)
            preexec_fn=(lambda: pin(COLLECTOR_CPU)) if pinned else (
                lambda: os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))))
        for _ in range(1200):  # a first start compiles the numba loops: tens of seconds on a busy machine
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)

    def counts(self) -> dict[str, int]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10).read().decode()

        def total(name: str) -> int:
            return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith(name + "{") or line.startswith(name + " ")))

        return {"flows": total("sluice_flows_total"), "rows": total("sluice_session_rows_total"),
                "stored": total("sluice_store_rows"), "drops": total("sluice_socket_drops")}

    def stop(self) -> dict[str, int]:
        counts = self.counts()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        return counts


class IndependentSluices:
    """``count`` one-worker servers that share nothing, each with 1/count of ``max_sessions``
    and of the traffic (runs of ``TEMPLATE_EVERY`` datagrams in turn), on the cores ``count``
    workers would have: the reference for what ``count`` processes cost here (``--independent``).
    Each gathers its batches as the collector of ``count`` workers does (``batch_bounds``), so
    that a batch is as large as one server's at the whole rate: the difference to one server
    is then the processes' own (their fixed costs per second, the cores' caches)."""

    name = "sluice-independent"

    def __init__(self, workdir: Path, count: int):
        datagrams, wait_s = batch_bounds(CollectSettings(), count)
        settings = {"SLUICE_SESSIONS__MAX_SESSIONS": str(MAX_SESSIONS // count),
                    "SLUICE_COLLECT__BATCH_MAX_DATAGRAMS": str(datagrams),
                    "SLUICE_COLLECT__BATCH_MAX_WAIT_MS": str(round(wait_s * 1000))}
        self.members: list[Sluice] = []
        try:
            for _ in range(count):
                self.members.append(Sluice(workdir, 1, settings, pinned=Sluice.one_core))
        except BaseException:
            terminate(self.members)
            raise
        self.ports = [member.port for member in self.members]

    def counts(self) -> dict[str, int]:
        return _summed([member.counts() for member in self.members])

    def stop(self) -> dict[str, int]:
        return _summed([member.stop() for member in self.members])


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    return {key: sum(c[key] for c in counts) for key in counts[0]}


def terminate(processes: Sequence[Sluice | Nfcapd]) -> None:
    """Stop collectors left running (a rung interrupted or failed): SIGTERM, a minute, SIGKILL."""
    for process in processes:
        process.proc.terminate()
        try:
            process.proc.wait(60)
        except subprocess.TimeoutExpired:
            process.proc.kill()


def _processes(collector: Sluice | Nfcapd | IndependentSluices) -> Sequence[Sluice | Nfcapd]:
    return collector.members if isinstance(collector, IndependentSluices) else [collector]


def run_rung(kind: type, workdir: Path, protocol: str, shape: str, workers: int, datagrams: list[bytes],
             rate: float, seconds: float) -> Rung:
    collector = kind(workdir, workers)
    try:
        return _measure(collector, protocol, shape, workers, datagrams, rate, seconds)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM) or failed: leave no collector running
        terminate(_processes(collector))
        raise


def _measure(collector: Sluice | Nfcapd | IndependentSluices, protocol: str, shape: str, workers: int,
             datagrams: list[bytes], rate: float, seconds: float) -> Rung:
    processes = _processes(collector)
    cpu0 = sum(tree_cpu_s(p.proc.pid) for p in processes)
    sent, achieved = send_to([p.port for p in processes], datagrams, rate, seconds, run=TEMPLATE_EVERY)
    # let the collector drain its socket buffer and write its queue: wait until nothing moves
    last, stable = None, 0
    for _ in range(300):
        time.sleep(0.2)
        now = collector.counts()
        if now is None:
            time.sleep(1.0)
            break
        stable = stable + 1 if now == last else 0
        last = now
        if stable >= 5 and now["stored"] >= now["rows"]:
            break
    cpu = sum(tree_cpu_s(p.proc.pid) for p in processes) - cpu0
    rss = sum(tree_peak_rss_mb(p.proc.pid) for p in processes)
    c = collector.stop()
    # a rung of new conversations leaves gigabytes (nfcapd's files above all): the next rung
    # must not run on a filling disk
    for p in processes:
        shutil.rmtree(p.data, ignore_errors=True)
    return Rung(collector.name, protocol, shape, workers, rate, seconds, sent, achieved, c["flows"], c["rows"],
                c["stored"], c["drops"], cpu, rss)


#: the socket buffer both collectors ask for (Sluice's default ``receive_buffer_bytes``; nfcapd's -B)
RECEIVE_BUFFER = 32 << 20
RMEM_MAX = Path("/proc/sys/net/core/rmem_max")


@contextlib.contextmanager
def receive_buffers_allowed(size: int) -> Iterator[int]:
    """``net.core.rmem_max`` raised to ``size`` for the run (root only), and set back after.

    nfcapd asks with plain SO_RCVBUF, which the kernel caps at rmem_max (4 MB on Debian);
    Sluice, as root, gets its buffer beyond it (SO_RCVBUFFORCE). Raised, both get the 32 MB
    they ask for, as an operator following either one's documentation would set. Yields
    the buffer nfcapd gets."""
    before = int(RMEM_MAX.read_text())
    raised = False
    if before < size:
        try:
            RMEM_MAX.write_text(str(size))
            raised = True
        except OSError:
            print(f"note: net.core.rmem_max is {before} and cannot be raised (not root): nfcapd gets "
                  f"{before} bytes of socket buffer, Sluice as root {size}", flush=True)
    # a benchmark stopped with SIGTERM (kill, pkill) would otherwise leave the machine's
    # limit raised: Python's default for it ends the process without running ``finally``
    handled = raised and threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, _exit_on_term) if handled else None
    try:
        yield min(size, int(RMEM_MAX.read_text()))
    finally:
        if raised:
            RMEM_MAX.write_text(str(before))
        if handled:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def machine() -> dict[str, object]:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    nfcapd_version = subprocess.run(["nfcapd", "-V"], capture_output=True, text=True)
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "kernel": platform.release(),
            "nfcapd": (nfcapd_version.stdout + nfcapd_version.stderr).strip().splitlines()[0]}


def ladder(kind: type, workdir: Path, protocol: str, shape: str, workers: int, datagrams: list[bytes],
           rates: list[float], seconds: float, results: list[Rung]) -> Rung | None:
    best = None
    label = kind.name + (f" x{workers}" if kind is Sluice and workers else "")
    label += "/1c" if kind is Sluice and Sluice.one_core and workers > 1 else ""
    for rate in rates:
        # a rung that loses flows gets one more attempt (for either collector alike): a single
        # hiccup of a shared 2-core machine should not end the ladder
        for attempt in range(1, ATTEMPTS + 1):
            rung = run_rung(kind, workdir, protocol, shape, workers, datagrams, rate, seconds)
            results.append(rung)
            ok = rung.lossless and rung.sender_kept
            # every attempt printed: a lost first attempt is part of the result too
            verdict = "ok" if ok else "LOSS" if not rung.lossless else "sender-limited"
            verdict += f" (attempt {attempt})" if attempt > 1 or not rung.lossless else ""
            print(f"  {protocol:9} {shape:9} {label:10} target {rate / 1e6:5.2f} M/s  "
                  f"sent {rung.send_rate / 1e6:5.2f} M/s  decoded {rung.ratio * 100:7.3f} %  "
                  f"stored {rung.stored_rows:>10,}/{rung.session_rows:<10,}  cpu {rung.cpu_per_m:5.2f} s/M  "
                  f"peak RSS {rung.peak_rss_mb:6.0f} MB  {verdict}", flush=True)
            if rung.lossless:
                break
        if ok:
            best = rung
        else:
            break
    return best


def alternate(workdir: Path, protocol: str, shape: str, worker_counts: list[int], datagrams: list[bytes],
              rate: float, seconds: float, rounds: int, results: list[Rung],
              independent: bool = False) -> dict[str, object]:
    """One rung per worker count in turn, ``rounds`` times: the CPU per flow of each count
    measured as close in time as the others', so that a machine's drift falls on all alike.
    With ``independent``, each count N > 1 also as N independent servers (``IndependentSluices``)."""
    runs = [(workers, False) for workers in worker_counts]
    if independent:
        runs += [(workers, True) for workers in worker_counts if workers > 1]
    cpu: dict[tuple[int, bool], list[float]] = {run: [] for run in runs}
    lossless: dict[tuple[int, bool], int] = {run: 0 for run in runs}
    for round_ in range(1, rounds + 1):
        for workers, apart in runs:
            kind = IndependentSluices if apart else Sluice
            rung = run_rung(kind, workdir, protocol, shape, workers, datagrams, rate, seconds)
            results.append(rung)
            cpu[workers, apart].append(rung.cpu_per_m)
            lossless[workers, apart] += rung.lossless
            label = f"{workers} apart" if apart else f"x{workers}"
            label += "/1c" if Sluice.one_core and workers > 1 else ""
            print(f"  round {round_}/{rounds}  {protocol:9} {shape:9} sluice {label:10} {rate / 1e6:5.2f} M/s  "
                  f"decoded {rung.ratio * 100:7.3f} %  cpu {rung.cpu_per_m:5.2f} s/M  "
                  f"{'ok' if rung.lossless else 'LOSS'}", flush=True)
    first = cpu[worker_counts[0], False]
    per_workers = []
    for workers, apart in runs:
        # each round's rungs ran minutes apart at most: their ratio is the comparison least
        # touched by the machine's drift
        in_round = [mine / theirs - 1 for mine, theirs in zip(cpu[workers, apart], first, strict=True)]
        per_workers.append({
            "workers": workers, "independent_servers": apart, "cpu_s_per_M": cpu[workers, apart],
            "median": statistics.median(cpu[workers, apart]), "over_first_by_round": in_round,
            "over_first_median": statistics.median(in_round), "lossless_rounds": lossless[workers, apart]})
    return {"protocol": protocol, "shape": shape, "rate": rate, "rounds": rounds, "per_workers": per_workers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s rungs, v5 only, few rates (a smoke run)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of traffic per rung")
    parser.add_argument("--protocols", default="netflow5,netflow9,ipfix")
    parser.add_argument("--shapes", default="new,recurring")
    parser.add_argument("--rates", default="100000,250000,500000,750000,1000000,1500000,2000000,3000000",
                        help="comma-separated ladder of flows/s")
    parser.add_argument("--nfcapd-rates", help="ladder for nfcapd (default: the same; 'none' skips it)")
    parser.add_argument("--workers", default="1", help="comma-separated Sluice worker counts, e.g. 1,2")
    parser.add_argument("--one-core", action="store_true",
                        help="several workers on the one core of one worker too, so that CPU per flow compares "
                             "the designs alone (by default several workers use every core, the sender's included)")
    parser.add_argument("--alternate", type=int, default=0, metavar="K",
                        help="with one rate: one rung per worker count in turn, K rounds; each count's CPU per "
                             "flow against the first count's in the same round (no ladders, no nfcapd)")
    parser.add_argument("--independent", action="store_true",
                        help="with --alternate: each count N > 1 also as N independent one-worker servers, each "
                             "with 1/N of the bound and of the traffic (the floor of N processes on this machine)")
    parser.add_argument("--json", type=Path, help="also write the results here (after every ladder)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other protocol/traffic/worker results already in --json")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    nf_rates = rates if not args.nfcapd_rates else [] if args.nfcapd_rates == "none" else [
        float(r) for r in args.nfcapd_rates.split(",")]
    seconds, protocols, shapes = args.seconds, args.protocols.split(","), args.shapes.split(",")
    if args.quick:
        rates, nf_rates, seconds, protocols = [100000, 250000, 500000], [500000, 1000000], 10.0, ["netflow5"]
    if not shutil.which("nfcapd"):
        print("nfcapd not found: install Debian's nfdump (make debian-deps)", file=sys.stderr)
        return 2
    pin(SENDER_CPU)
    Sluice.one_core = args.one_core
    info = machine()
    info["workers_on_one_core"] = args.one_core
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy {info['numpy']}; "
          f"{info['nfcapd']}; {seconds:.0f} s per rung")
    results: list[Rung] = []
    summary: list[dict[str, object]] = []
    kept: list[dict[str, object]] = []
    kept_rungs: list[dict[str, object]] = []
    if args.merge and args.json and args.json.exists():
        previous = json.loads(args.json.read_text())
        kept, kept_rungs = previous.get("summary", []), previous.get("rungs", [])
    worker_counts = [int(w) for w in args.workers.split(",")]

    def save() -> None:
        if not args.json:
            return
        done = {(s["protocol"], s["shape"], s["workers"]) for s in summary}
        nfcapd_done = {(s["protocol"], s["shape"]) for s in summary}
        rungs = [asdict(r) | {"ratio": r.ratio, "lossless": r.lossless} for r in results]
        old_rungs = [r for r in kept_rungs if (r["protocol"], r["shape"], r["workers"]) not in done
                     and not (r["collector"] == "nfcapd" and (r["protocol"], r["shape"]) in nfcapd_done)]
        args.json.write_text(json.dumps({
            "machine": info, "seconds_per_rung": seconds,
            "summary": [s for s in kept if (s["protocol"], s["shape"], s["workers"]) not in done] + summary,
            "rungs": old_rungs + rungs}, indent=2))

    if args.alternate:
        if len(rates) != 1:
            print("--alternate takes one rate (--rates R)", file=sys.stderr)
            return 2
        return alternate_main(args, info, protocols, shapes, worker_counts, rates[0], seconds)
    with tempfile.TemporaryDirectory() as tmp, receive_buffers_allowed(RECEIVE_BUFFER) as buffer:
        workdir = Path(tmp)
        info["socket_buffer_bytes"] = buffer
        print(f"socket buffer: {buffer >> 20} MB for both collectors", flush=True)
        for protocol in protocols:
            for shape in shapes:
                datagrams = datagrams_for(protocol, shape, int(time.time() * 1000))
                nf = ladder(Nfcapd, workdir, protocol, shape, 0, datagrams, nf_rates, seconds, results)
                for workers in worker_counts:
                    sl = ladder(Sluice, workdir, protocol, shape, workers, datagrams, rates, seconds, results)
                    summary.append({
                        "protocol": protocol, "shape": shape, "workers": workers,
                        "nfcapd_max_flows_per_s": nf.target_flows_per_s if nf else 0,
                        "sluice_max_flows_per_s": sl.target_flows_per_s if sl else 0,
                        "ratio_sluice_over_nfcapd": sl.target_flows_per_s / nf.target_flows_per_s if nf and sl else None,
                        "nfcapd_cpu_s_per_M": nf.cpu_per_m if nf else None,
                        "sluice_cpu_s_per_M": sl.cpu_per_m if sl else None,
                        "nfcapd_peak_rss_mb": nf.peak_rss_mb if nf else None,
                        "sluice_peak_rss_mb": sl.peak_rss_mb if sl else None,
                    })
                    save()
    print(f"\nwhole server, highest lossless rate ({THRESHOLD:.1%} decoded, every session row stored; "
          f"{seconds:.0f} s rungs, 30 records/datagram):")
    print(f"  {'protocol':9}  {'traffic':9}  {'workers':>7}  {'nfcapd':>9}  {'sluice':>9}  {'ratio':>6}  "
          f"{'CPU-s/M nf':>10}  {'CPU-s/M sl':>10}  {'RSS MB nf':>9}  {'RSS MB sl':>9}")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for s in summary:
        print(f"  {s['protocol']:9}  {s['shape']:9}  {s['workers']:>7}  {s['nfcapd_max_flows_per_s'] / 1e6:7.2f} M  "
              f"{s['sluice_max_flows_per_s'] / 1e6:7.2f} M  {fmt(s['ratio_sluice_over_nfcapd'], '5.2f')}x  "
              f"{fmt(s['nfcapd_cpu_s_per_M'], '10.2f')}  {fmt(s['sluice_cpu_s_per_M'], '10.2f')}  "
              f"{fmt(s['nfcapd_peak_rss_mb'], '9.0f')}  {fmt(s['sluice_peak_rss_mb'], '9.0f')}")
    return 0


def alternate_main(args: argparse.Namespace, info: dict[str, object], protocols: list[str], shapes: list[str],
                   worker_counts: list[int], rate: float, seconds: float) -> int:
    results: list[Rung] = []
    summaries = []
    with tempfile.TemporaryDirectory() as tmp, receive_buffers_allowed(RECEIVE_BUFFER) as buffer:
        info["socket_buffer_bytes"] = buffer
        for protocol in protocols:
            for shape in shapes:
                datagrams = datagrams_for(protocol, shape, int(time.time() * 1000))
                summaries.append(alternate(Path(tmp), protocol, shape, worker_counts, datagrams, rate, seconds,
                                           args.alternate, results, args.independent))
                if args.json:
                    args.json.write_text(json.dumps({
                        "machine": info, "seconds_per_rung": seconds, "alternation": summaries,
                        "rungs": [asdict(r) | {"ratio": r.ratio, "lossless": r.lossless} for r in results]}, indent=2))
    print(f"\nCPU per flow by worker count, {args.alternate} rounds in turn at {rate / 1e6:.2f} M flows/s "
          f"({seconds:.0f} s rungs{', every count on one core' if Sluice.one_core else ''}):")
    for summary in summaries:
        for row in summary["per_workers"]:
            values = ", ".join(f"{v:.2f}" for v in row["cpu_s_per_M"])
            rounds = ", ".join(f"{v:+.0%}" for v in row["over_first_by_round"])
            label = f"{row['workers']} apart" if row["independent_servers"] else f"x{row['workers']}"
            print(f"  {summary['protocol']:9} {summary['shape']:9} {label}  median {row['median']:.2f} "
                  f"CPU-s/M ({values}); against x{worker_counts[0]} in the same round: median "
                  f"{row['over_first_median']:+.0%} ({rounds}); "
                  f"lossless in {row['lossless_rounds']} of {args.alternate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
