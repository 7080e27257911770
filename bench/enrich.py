#!/usr/bin/env python3
"""Enrichment benchmark: country lookups per second with the embedded MMDB data.

Random addresses (80 % IPv4 uniformly over the whole space, 20 % IPv6 in 2000::/3) are
looked up in batches, as the ingest path does (special ranges included). Target: >= 5 M
lookups/s. Run: ``.venv/bin/python bench/enrich.py``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sluice.flows.enrich import DEFAULT_COUNTRY_MMDB, Enricher  # noqa: E402


def addresses(n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((n, 16), np.uint8)
    v4 = rng.random(n) < 0.8
    out[v4, 10:12] = 0xFF
    out[v4, 12:] = rng.integers(0, 256, (int(v4.sum()), 4))
    v6 = ~v4
    out[v6] = rng.integers(0, 256, (int(v6.sum()), 16))
    out[v6, 0] = 0x20 | (out[v6, 0] & 0x1F)  # global unicast
    return out


def main() -> int:
    if not DEFAULT_COUNTRY_MMDB.exists():
        print(f"{DEFAULT_COUNTRY_MMDB} missing: run `make geodata`", file=sys.stderr)
        return 2
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, numpy {np.__version__}")
    t = time.perf_counter()
    enricher = Enricher()
    print(f"load (cached range arrays): {time.perf_counter() - t:.2f} s")
    rng = np.random.default_rng(7)
    for batch in (1_000, 100_000, 1_000_000):
        addrs = addresses(batch, rng)
        runs = []
        for _ in range(max(3, 3_000_000 // batch)):
            t = time.perf_counter()
            enricher.countries(addrs)
            runs.append(time.perf_counter() - t)
        rate = batch / statistics.median(runs)
        print(f"  batch {batch:>9,}: {rate / 1e6:5.1f} M lookups/s (target >= 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
