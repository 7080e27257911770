#!/usr/bin/env python3
"""Session tracker benchmark: new-conversation traffic at the tracker's steady state.

What routers export on a busy network is mostly new conversations (new 5-tuples), so a
tracker bounded at ``max_sessions`` (1 M by default) spends its life full, forgetting the
least recently updated sessions to make room. This measures the tracker alone (no sockets,
no decoding, no store) in CPU seconds per million flows, in two phases of the same run:

- *filling*: below the bound (sessions only added; the table still grows and re-indexes);
- *steady state*: at the bound, every batch of new conversations forcing evictions - the
  figure that matters, since a busy router keeps the tracker there.

It prints both and their ratio. The compiled loops are warmed up first, as the server does. Traffic: 5,000 clients x 60,000 servers, random client ports,
TCP to four server ports, ``--batch`` flows per batch (the collector's batches are up to
2,048 datagrams x 30 records).

Run: ``.venv/bin/python bench/tracker.py [--max-sessions N] [--flows N] [--batch N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sluice.flows.schema import FlowBatch  # noqa: E402
from sluice.flows.sessions import SessionTracker  # noqa: E402


def ipv4_mapped(ints: np.ndarray) -> np.ndarray:
    out = np.zeros((len(ints), 16), np.uint8)
    out[:, 10] = out[:, 11] = 0xFF
    out[:, 12:] = ints.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def new_conversations(rng: np.random.Generator, n: int, t_ms: int, exporter: np.ndarray) -> FlowBatch:
    clients = 0x0A010000 + rng.integers(0, 5000, n)
    servers = 0x0A020000 + rng.integers(0, 60000, n)
    return FlowBatch.build(
        n, src_addr=ipv4_mapped(clients), dst_addr=ipv4_mapped(servers), src_port=rng.integers(1024, 65535, n),
        dst_port=rng.choice([80, 443, 22, 53], n), protocol=6, tcp_flags=0x1B, bytes=1000, packets=5,
        time_start_ms=t_ms - 100, time_end_ms=t_ms, sampling_rate=1, exporter_addr=np.broadcast_to(exporter, (n, 16)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-sessions", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=3_000_000, help="flows measured at the steady state")
    parser.add_argument("--batch", type=int, default=8192)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    exporter = ipv4_mapped(np.array([0x0A000001]))[0]
    SessionTracker.warm_up()  # compiled before the measurement, as the server does at start-up
    tracker = SessionTracker(max_sessions=args.max_sessions, first_id=1)
    t_ms = 1_700_000_000_000

    def run(flows_wanted: int, until_full: bool) -> tuple[float, int]:
        nonlocal t_ms
        cpu, flows = 0.0, 0
        while (len(tracker) + args.batch <= args.max_sessions) if until_full else flows < flows_wanted:
            t_ms += 5
            batch = new_conversations(rng, args.batch, t_ms, exporter)  # generated outside the measurement
            start = time.process_time()
            tracker.update(batch, t_ms)
            cpu += time.process_time() - start
            flows += args.batch
        return cpu, flows

    fill_cpu, fill_flows = run(0, until_full=True)
    steady_cpu, steady_flows = run(args.flows, until_full=False)
    fill = fill_cpu / fill_flows * 1e6
    steady = steady_cpu / steady_flows * 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"filling to {args.max_sessions:,} sessions: {fill:.2f} CPU-s per M flows ({1 / fill:.2f} M flows/s per core)")
    print(f"steady state, {steady_flows:,} new conversations, {tracker.stats.sessions_evicted:,} evicted: "
          f"{steady:.2f} CPU-s per M flows ({1 / steady:.2f} M flows/s per core)")
    print(f"steady state against filling: {fill / steady:.2f}x the rate")


if __name__ == "__main__":
    main()
