"""Several collectors and an alerting node on this machine, for ``bench/alerts.py --collectors N``.

A NATS server with JetStream (Debian's ``nats-server``), an alerting node and N collectors of
``sluice serve`` (``[cluster] role``), sharing one SQLite state file (one machine: no
PostgreSQL needed for a benchmark). The sender splits the traffic between the collectors
(in runs of a few datagrams), as routers exporting to different collectors would. Every
process of the cluster is pinned to the collector core, as the single server is: the figure
is what distributing costs on the same CPU, not what more machines gain.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx

import ingest as ingest_bench

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _wait_http(http: int, proc: subprocess.Popen) -> None:
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"sluice serve ended with status {proc.returncode}") from None
            time.sleep(0.1)
    raise RuntimeError("sluice serve did not answer")


def metrics(http: int) -> dict[str, float]:
    """A server's /metrics, each metric summed over its labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            out[base] = out.get(base, 0.0) + float(value)
    return out


class Cluster:
    """NATS, an alerting node with ``definitions``, and ``collectors`` collectors."""

    name = "cluster"

    def __init__(self, workdir: Path, definitions: list, collectors: int = 2, admin_password: str = "bench-admin-password"):
        self.data = workdir / f"cluster-{ingest_bench.free_port(socket.SOCK_STREAM)}"
        self.data.mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []
        pin = lambda: ingest_bench.pin(ingest_bench.COLLECTOR_CPU)  # noqa: E731
        nats_port = ingest_bench.free_port(socket.SOCK_STREAM)
        self.nats = subprocess.Popen(
            [NATS_SERVER, "-js", "-sd", str(self.data / "nats"), "-a", "127.0.0.1", "-p", str(nats_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin)
        self.procs.append(self.nats)
        env = dict(os.environ, SLUICE_ADMIN_PASSWORD=admin_password,
                   SLUICE_STATE__URL=f"sqlite:///{self.data / 'state.db'}",
                   SLUICE_CLUSTER__NATS_URL=f"nats://127.0.0.1:{nats_port}")
        binary = str(Path(sys.executable).parent / "sluice")

        def serve(name: str, role: str, node_id: int) -> tuple[int, int]:
            port, http = ingest_bench.free_port(socket.SOCK_DGRAM), ingest_bench.free_port(socket.SOCK_STREAM)
            proc = subprocess.Popen(
                [binary, "serve", "--no-simulate", "--listen", "127.0.0.1", "--netflow-port", str(port),
                 "--ipfix-port", "0", "--sflow-port", "0", "--http-listen", "127.0.0.1", "--http-port", str(http),
                 "--data-dir", str(self.data / name), "--workers", "1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=pin,
                env=dict(env, SLUICE_CLUSTER__ROLE=role, SLUICE_CLUSTER__NODE_NAME=name,
                         SLUICE_SESSIONS__NODE_ID=str(node_id)))
            self.procs.append(proc)
            _wait_http(http, proc)
            return port, http

        self.port, self.http = serve("node", "alerting", 1)  # the API: alert records are read here
        with httpx.Client(base_url=f"http://127.0.0.1:{self.http}", auth=("admin", admin_password), timeout=10) as c:
            for d in definitions:
                c.post("/api/v1/alert-definitions", json=d.model_dump(mode="json")).raise_for_status()
        self.collectors = [serve(f"c{i}", "collector", 2 + i) for i in range(collectors)]
        self.ports = [port for port, _ in self.collectors]
        self.alert_rows_ok = True

    def cpu_s(self) -> float:
        return sum(ingest_bench.tree_cpu_s(p.pid) for p in self.procs if p.poll() is None)

    def peak_rss_mb(self) -> float:
        return sum(ingest_bench.tree_peak_rss_mb(p.pid) for p in self.procs if p.poll() is None)

    def counts(self) -> dict[str, float]:
        """The collectors' flows, rows, stored rows and drops; the partials published and merged."""
        each = [metrics(http) for _, http in self.collectors]
        node = metrics(self.http)

        def total(name: str) -> float:
            return sum(c.get(name, 0.0) for c in each)

        return {"flows": total("sluice_flows_total"), "rows": total("sluice_session_rows_total"),
                "stored": total("sluice_store_rows"), "drops": total("sluice_socket_drops"),
                "evaluated": total("sluice_alert_rows_evaluated_total"),
                "alert_rows_dropped": total("sluice_alert_rows_dropped_total"),
                "partials_dropped": total("sluice_alert_partials_dropped_total"),
                "published": total("sluice_alert_partials_published_total"),
                "queued": total("sluice_alert_partials_queued"),
                "merged": node.get("sluice_alert_partials_merged_total", 0.0)}

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.data, ignore_errors=True)


#: datagrams go to the collectors in runs of this many: the encoders repeat their templates
#: every 20 datagrams, and runs of 3 give every collector some of them
RUN = 3


def send_split(ports: list[int], datagrams: list[bytes], rate: float, seconds: float) -> tuple[int, float]:
    """``ingest.send`` over several collectors, in runs of ``RUN`` datagrams each."""
    return ingest_bench.send_to(ports, datagrams, rate, seconds, RUN)


def rung(workdir: Path, definitions: list, collectors: int, datagrams: list[bytes], rate: float,
         seconds: float) -> dict:
    """One rung: the flows decoded and stored by the collectors, every row made into partials and
    every partial merged by the alerting node; CPU of every process of the cluster."""
    cluster = Cluster(workdir, definitions, collectors)
    try:
        cpu0 = cluster.cpu_s()
        sent, achieved = send_split(cluster.ports, datagrams, rate, seconds)
        last, stable = None, 0
        for _ in range(300):  # drained: nothing moves, every row stored, every partial merged
            time.sleep(0.2)
            now = cluster.counts()
            stable = stable + 1 if now == last else 0
            last = now
            if (stable >= 5 and now["stored"] >= now["rows"] and now["evaluated"] >= now["rows"]
                    and now["queued"] == 0 and now["merged"] >= now["published"]):
                break
        cpu = cluster.cpu_s() - cpu0
        rss = cluster.peak_rss_mb()
        assert last is not None
    finally:
        cluster.stop()
    received = last["flows"] / sent if sent else 0.0
    alerts_ok = (last["evaluated"] >= last["rows"] and last["alert_rows_dropped"] == 0 and last["queued"] == 0
                 and last["partials_dropped"] == 0 and last["published"] > 0 and last["merged"] >= last["published"])
    return {"collector": f"cluster x{collectors}", "target": rate, "send_rate": achieved, "received": received,
            "lossless": received >= ingest_bench.THRESHOLD and last["stored"] >= last["rows"],
            "alerts_kept_up": alerts_ok, "partials": last["published"],
            "cpu_s_per_M": cpu / max(last["flows"], 1) * 1e6, "peak_rss_mb": rss}
