#!/usr/bin/env python3
"""Flood detection side by side with FastNetMon: how soon each tells of a packet flood.

Both get the same NetFlow v5 datagrams, each sent to both at once: a flood of ``--pps``
packets per second at one host (from 200 sources), reported every 100 ms as that tenth of a
second's flows, as a router with a short active timeout would.

- Sluice (``sluice serve``, one pinned core) with the definition a flood detector would write:
  *packets received for any one host exceeds 100,000 per second over 10 s*;
- FastNetMon (Debian's ``fastnetmon`` 1.2.4: ``apt-get install fastnetmon``) with
  ``threshold_pps = 100000`` for the target network, ``ban_for_pps``, and its Debian
  defaults for the averaging (``average_calculation_time = 5``, ``check_period = 1``).

Measured per trial (a new target host each time): from the first flood datagram to Sluice's
alert record being readable over the API (polled every 2 ms), and to FastNetMon running its
notify script (the ban). Reported: median and maximum of each, and their ratio.

Run: ``.venv/bin/python bench/flood.py [--trials 10] [--pps 2000000] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import alerts as alerts_bench  # noqa: E402
import ingest as ingest_bench  # noqa: E402
from sluice.alerts.definition import DefinitionIn  # noqa: E402
from sluice.flows.schema import FlowBatch, addr_bytes  # noqa: E402
from sluice.simulate.encode import NetflowV5Encoder  # noqa: E402

THRESHOLD_PPS = 100_000
TICK_S = 0.1
SOURCES = 200

FASTNETMON_CONF = """\
logging_level = info
enable_ban = on
process_incoming_traffic = on
process_outgoing_traffic = on
ban_time = 1900
unban_only_if_attack_finished = on
networks_list_path = {dir}/networks
white_list_path = {dir}/whitelist
check_period = 1
enable_connection_tracking = off
ban_for_pps = on
ban_for_bandwidth = off
ban_for_flows = off
threshold_pps = {threshold}
netflow = on
sflow = off
pcap = off
mirror_afpacket = off
average_calculation_time = 5
speed_calculation_delay = 1
netflow_port = {port}
netflow_host = 127.0.0.1
netflow_sampling_ratio = 1
notify_script_path = {dir}/notify.sh
collect_attack_pcap_dumps = off
redis_enabled = off
mongodb_enabled = off
exabgp = off
gobgp = off
disable_usage_report = on
"""


class FastNetMon:
    def __init__(self, workdir: Path, threshold_pps: int):
        binary = shutil.which("fastnetmon") or "/usr/sbin/fastnetmon"
        if not Path(binary).exists():
            raise SystemExit("bench/flood.py compares with FastNetMon: apt-get install fastnetmon")
        self.dir = workdir / "fastnetmon"
        self.dir.mkdir()
        self.bans = self.dir / "bans.txt"
        (self.dir / "notify.sh").write_text(f'#!/bin/sh\necho "$(date +%s.%N) $1 $4" >> {self.bans}\ncat > /dev/null\n')
        (self.dir / "notify.sh").chmod(0o755)
        (self.dir / "networks").write_text("198.51.100.0/24\n")
        (self.dir / "whitelist").write_text("")
        self.port = ingest_bench.free_port(socket.SOCK_DGRAM)
        conf = self.dir / "fastnetmon.conf"
        conf.write_text(FASTNETMON_CONF.format(dir=self.dir, threshold=threshold_pps, port=self.port))
        self.proc = subprocess.Popen(
            [binary, "--configuration_file", str(conf), "--log_file", str(self.dir / "fastnetmon.log"),
             "--disable_pid_logic"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: ingest_bench.pin(ingest_bench.COLLECTOR_CPU))
        for _ in range(100):
            if "listen on 127.0.0.1" in (self.dir / "fastnetmon.log").read_text(errors="replace") if (
                    self.dir / "fastnetmon.log").exists() else False:
                return
            time.sleep(0.1)
        raise SystemExit(f"FastNetMon did not start: see {self.dir / 'fastnetmon.log'}")

    def banned(self, target: str) -> float | None:
        """When the notify script was run for ``target`` (epoch seconds), if it was."""
        if not self.bans.exists():
            return None
        for line in self.bans.read_text().splitlines():
            when, ip, *action = line.split()
            if ip == target and (not action or action[0] == "ban"):
                return float(when)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def flood_datagrams(target: str, pps: float, now_ms: int, encoder: NetflowV5Encoder) -> list[bytes]:
    """One tick's flows: ``pps`` x ``TICK_S`` packets from ``SOURCES`` hosts to ``target``."""
    n = SOURCES
    src = np.zeros((n, 16), np.uint8)
    src[:, 10:12] = 255
    src[:, 12:14] = [203, 0]
    src[:, 14] = 113
    src[:, 15] = np.arange(n) + 1
    dst = np.frombuffer(addr_bytes(target) * n, np.uint8).reshape(n, 16)
    packets = int(pps * TICK_S / n)
    batch = FlowBatch.build(n, time_start_ms=now_ms - int(TICK_S * 1000), time_end_ms=now_ms, src_addr=src,
                            dst_addr=dst, src_port=np.arange(n) + 30000, dst_port=53, protocol=17, tcp_flags=0,
                            bytes=packets * 64, packets=packets, sampling_rate=1)
    return encoder.encode(batch, now_ms)


def trial(target: str, pps: float, sluice: alerts_bench.SluiceWithAlerts, client: httpx.Client, definition: int,
          fnm: FastNetMon, timeout_s: float = 15.0) -> tuple[float, float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    encoder = NetflowV5Encoder()
    t0 = time.time()
    next_tick = t0
    sluice_s = fnm_s = float("nan")
    while time.time() - t0 < timeout_s and (sluice_s != sluice_s or fnm_s != fnm_s):  # nan: not yet
        now = time.time()
        if now >= next_tick:
            for datagram in flood_datagrams(target, pps, int(now * 1000), encoder):
                sock.sendto(datagram, ("127.0.0.1", sluice.port))
                sock.sendto(datagram, ("127.0.0.1", fnm.port))
            next_tick += TICK_S
        if sluice_s != sluice_s:
            rows = client.get("/api/v1/alerts", params={"definition": definition}).json()
            if any(r["entity"] == target for r in rows):
                sluice_s = time.time() - t0
        if fnm_s != fnm_s:
            when = fnm.banned(target)
            if when is not None:
                fnm_s = when - t0
        time.sleep(0.002)
    sock.close()
    return sluice_s, fnm_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pps", type=float, default=2_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = ingest_bench.machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy {info['numpy']}")
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "fastnetmon"], capture_output=True,
                             text=True).stdout or "?"
    print(f"flood of {args.pps / 1e6:g} M packets/s at one host, reported every {TICK_S * 1000:.0f} ms; "
          f"threshold {THRESHOLD_PPS:,} packets/s; FastNetMon {version}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        alerts_bench.SluiceWithAlerts.definitions = [DefinitionIn(
            title="flood", entity="host", metric="packets_received", interval="10s", threshold=THRESHOLD_PPS,
            per_second=True, severity="CRITICAL")]
        sluice = alerts_bench.SluiceWithAlerts(workdir, 1)
        fnm = FastNetMon(workdir, THRESHOLD_PPS)
        results: list[tuple[float, float]] = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{sluice.http}",
                              auth=("admin", alerts_bench.ADMIN_PASSWORD), timeout=10) as c:
                token = c.post("/api/v1/tokens", json={"name": "bench"}).json()["token"]
            client = httpx.Client(base_url=f"http://127.0.0.1:{sluice.http}",
                                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
            definition = client.get("/api/v1/alert-definitions").json()[0]["id"]
            time.sleep(2.0)
            for i in range(args.trials):
                target = f"198.51.100.{10 + i}"
                s, f = trial(target, args.pps, sluice, client, definition, fnm)
                results.append((s, f))
                print(f"  trial {i + 1:2d} ({target}): Sluice record {s * 1000:6.0f} ms, "
                      f"FastNetMon ban {f * 1000:6.0f} ms", flush=True)
                time.sleep(12)  # the flood leaves Sluice's 10 s window before the next target
            client.close()
        finally:
            fnm.stop()
            sluice.stop()
    sluice_ms = [s * 1000 for s, _ in results]
    fnm_ms = [f * 1000 for _, f in results]
    summary = {
        "machine": info, "pps": args.pps, "tick_s": TICK_S, "threshold_pps": THRESHOLD_PPS,
        "fastnetmon_version": version, "trials": len(results),
        "sluice_ms": {"median": statistics.median(sluice_ms), "max": max(sluice_ms)},
        "fastnetmon_ms": {"median": statistics.median(fnm_ms), "max": max(fnm_ms)},
        "ratio_median": statistics.median(sluice_ms) / statistics.median(fnm_ms),
        "raw": results,
    }
    print(f"\nSluice's record {summary['sluice_ms']['median']:.0f} ms median (max {summary['sluice_ms']['max']:.0f}), "
          f"FastNetMon's ban {summary['fastnetmon_ms']['median']:.0f} ms (max {summary['fastnetmon_ms']['max']:.0f}): "
          f"{summary['ratio_median']:.2f}x the time")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
