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

``--shards N`` then measures what sharding itself costs, on one thread with no process or
hand-over: at the steady state, one tracker of ``max_sessions`` on batches of ``--batch``
flows against N trackers of ``max_sessions / N`` fed as the server's workers are (each
batch, N times as large, as the collector makes it for N workers, split by conversation
with ``shard_order`` and each share copied out), in turn for ``--rounds`` rounds: CPU per M
flows of the split, the copy and the tracking, and the whole against one tracker.

Run: ``.venv/bin/python bench/tracker.py [--max-sessions N] [--flows N] [--batch N] [--shards N]``.
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

from sluice.flows.schema import FlowBatch, take_rows  # noqa: E402
from sluice.flows.sessions import SessionTracker  # noqa: E402
from sluice.flows.shards import shard_order  # noqa: E402


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
    parser.add_argument("--shards", type=int, default=1, help="also measure N sharded trackers against one")
    parser.add_argument("--rounds", type=int, default=3, help="rounds in turn, with --shards")
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
    if args.shards > 1:
        sharding(args, rng, exporter, t_ms)


class Sharded:
    """``count`` trackers of 1/count of the bound, fed as the server's session workers are."""

    def __init__(self, count: int, max_sessions: int):
        self.count = count
        self.trackers = [
            SessionTracker(max_sessions=max_sessions // count, first_id=1 + i, id_step=count) for i in range(count)
        ]
        self.split_s = self.copy_s = self.track_s = 0.0

    def __len__(self) -> int:
        return sum(len(t) for t in self.trackers)

    def update(self, flows: FlowBatch, now_ms: int) -> None:
        started = time.perf_counter()
        if self.count == 1:  # the whole batch to the one tracker, as the server does
            parts = [flows]
        else:
            order, bounds = shard_order(flows, self.count)
            split = time.perf_counter()
            self.split_s += split - started
            parts = []
            for i in range(self.count):  # the rows a worker gets, copied out (into its ring, in the server)
                rows = order[bounds[i] : bounds[i + 1]]
                parts.append(FlowBatch({name: take_rows(column, rows) for name, column in flows.columns.items()}))
            started = time.perf_counter()
            self.copy_s += started - split
        for i, (tracker, part) in enumerate(zip(self.trackers, parts, strict=True)):
            tracker.track(part, now_ms, self.count, i)
        self.track_s += time.perf_counter() - started


def sharding(args: argparse.Namespace, rng: np.random.Generator, exporter: np.ndarray, t_ms: int) -> None:
    """One tracker against ``args.shards`` sharded ones, at the steady state, in turn."""
    configs = {count: Sharded(count, args.max_sessions) for count in (1, args.shards)}

    def feed(config: Sharded, flows_wanted: int) -> tuple[float, int]:
        nonlocal t_ms
        cpu, flows = 0.0, 0
        batch = args.batch * config.count  # the collector's batch for that many workers (``batch_bounds``)
        while flows < flows_wanted:
            t_ms += 5 * config.count
            flows_in = new_conversations(rng, batch, t_ms, exporter)  # generated outside the measurement
            start = time.process_time()
            config.update(flows_in, t_ms)
            cpu += time.process_time() - start
            flows += batch
        return cpu, flows

    for config in configs.values():  # to the bound and past it: evicting on every batch
        feed(config, int(args.max_sessions * 1.5))
    print(f"\none tracker of {args.max_sessions:,} against {args.shards} of {args.max_sessions // args.shards:,} "
          f"(batches of {args.batch:,} flows a tracker), steady state, CPU-s per M flows:")
    ratios = []
    for round_ in range(1, args.rounds + 1):
        figures = {}
        for count, config in configs.items():
            config.split_s = config.copy_s = config.track_s = 0.0  # this round's alone
            cpu, flows = feed(config, args.flows)
            figures[count] = cpu / flows * 1e6
            per_m = 1e6 / flows
            print(f"  round {round_}  {count} tracker(s): {figures[count]:.3f}  (split {config.split_s * per_m:.3f}, "
                  f"copy {config.copy_s * per_m:.3f}, tracking {config.track_s * per_m:.3f}; live {len(config):,})")
        ratios.append(figures[args.shards] / figures[1])
        print(f"  round {round_}  {args.shards} against 1: {ratios[-1] - 1:+.1%}")
    print(f"{args.shards} sharded trackers against one, median of {args.rounds} rounds: "
          f"{sorted(ratios)[len(ratios) // 2] - 1:+.1%}")


if __name__ == "__main__":
    main()
