"""How the collector splits a batch over the session workers: by conversation, whichever way
round and from whichever exporter, each flow once and in the order it came."""

from __future__ import annotations

import numpy as np
import pytest

from sluice.flows.schema import FlowBatch
from sluice.flows.sessions import conversation_keys
from sluice.flows.shards import shard_order


def flows(n: int, seed: int) -> FlowBatch:
    rng = np.random.default_rng(seed)

    def addresses() -> np.ndarray:
        out = rng.integers(0, 256, (n, 16), dtype=np.uint8)
        v4 = rng.random(n) < 0.5  # IPv4-mapped and IPv6 mixed
        out[v4, :10], out[v4, 10:12] = 0, 255
        return out

    return FlowBatch.build(
        n, src_addr=addresses(), dst_addr=addresses(), src_port=rng.integers(0, 65536, n),
        dst_port=rng.integers(0, 65536, n), protocol=rng.choice([6, 17, 1, 58], n),
        exporter_addr=rng.integers(0, 256, (n, 16), dtype=np.uint8))  # fmt: skip


def shards_of(batch: FlowBatch, shards: int) -> np.ndarray:
    order, bounds = shard_order(batch, shards)
    out = np.full(len(batch), -1)
    for k in range(shards):
        out[order[bounds[k] : bounds[k + 1]]] = k
    return out


@pytest.mark.parametrize("shards", [1, 2, 3, 8])
def test_every_flow_goes_to_one_shard_in_the_order_it_came_and_the_shards_are_even(shards):
    batch = flows(20_000, shards)
    order, bounds = shard_order(batch, shards)
    assert bounds[0] == 0 and bounds[-1] == len(batch) and np.all(np.diff(bounds) >= 0)
    assert np.array_equal(np.sort(order), np.arange(len(batch)))  # each flow once
    for k in range(shards):
        assert np.all(np.diff(order[bounds[k] : bounds[k + 1]]) > 0)  # in wire order
    sizes = np.diff(bounds)
    assert sizes.min() > 0.9 * len(batch) / shards  # distinct conversations spread evenly


def test_both_directions_and_every_exporter_of_a_conversation_go_to_the_same_shard():
    batch = flows(5000, 1)
    c = batch.columns
    reverse = FlowBatch({**c, "src_addr": c["dst_addr"], "dst_addr": c["src_addr"], "src_port": c["dst_port"],
                         "dst_port": c["src_port"], "exporter_addr": c["exporter_addr"][::-1]})
    assert np.array_equal(shards_of(batch, 5), shards_of(reverse, 5))
    # ICMP has no ports in its conversation (a request and its reply differ in type/code)
    icmp = c["protocol"] == 1
    codes = {"src_port": np.where(icmp, 7, c["src_port"]), "dst_port": np.where(icmp, 0, c["dst_port"])}
    other_codes = FlowBatch({**c, **{name: v.astype(np.uint16) for name, v in codes.items()}})
    assert np.array_equal(shards_of(batch, 5), shards_of(other_codes, 5))


def test_flows_the_tracker_makes_one_session_go_to_one_shard():
    """What the tracker joins (its key without the exporter) is never split between workers."""
    rng = np.random.default_rng(3)
    base = flows(400, 2)
    picks = rng.integers(0, 400, 10_000)  # many flows a conversation, some reversed
    c = {name: np.take(col, picks, axis=0) for name, col in base.columns.items()}
    flip = rng.random(10_000) < 0.5
    for a, b in (("src_addr", "dst_addr"), ("src_port", "dst_port")):
        where = flip[:, None] if c[a].ndim == 2 else flip
        c[a], c[b] = np.where(where, c[b], c[a]), np.where(where, c[a], c[b])
    batch = FlowBatch(c)
    keys, _ = conversation_keys(batch, with_exporter=False)
    shard = shards_of(batch, 4)
    for key in np.unique(keys):
        assert len(set(shard[keys == key].tolist())) == 1
