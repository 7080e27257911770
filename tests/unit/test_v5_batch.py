"""NetFlow v5 read a batch at once (``Decoder._v5_batch``) against the datagram-by-datagram
walk it stands in for: the same flows, records, counters and sequence state on random
batches from several exporters, ports and engines (lost and reordered datagrams, sequence
resets, sampling, trailing bytes), and the walk taking every batch it must not (a datagram
too short, a record count out of range, records cut short, another version in the batch)."""

from __future__ import annotations

import random

import numpy as np

from sluice.collect import netflow5
from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder

from ..support.wirebuild import EXPORT_S
from .test_batch_scan import assert_same

EXPORTERS = [("192.0.2.1", 2055), ("192.0.2.1", 2056), ("198.51.100.7", 9995)]


def v5_datagram(rng: random.Random, count: int, sequence: int, engine: tuple[int, int], sampling: int) -> bytes:
    header = netflow5.HEADER.pack(5, count, 3_600_000, EXPORT_S, 123_000_000, sequence, *engine, sampling)
    records = np.zeros(count, netflow5.RECORD_DTYPE)
    for field in ("src_addr", "dst_addr", "packets", "bytes", "src_port", "dst_port", "src_as", "dst_as"):
        records[field] = [rng.randint(1, 60_000) for _ in range(count)]
    records["src_addr"] |= 0x0A000000
    records["dst_addr"] |= 0xC0000000
    records["first_switched_ms"] = 3_500_000
    records["last_switched_ms"] = [rng.randint(3_500_000, 3_599_000) for _ in range(count)]
    records["protocol"] = [rng.choice([6, 17]) for _ in range(count)]
    return header + records.tobytes()


class Exporter:
    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self.sequence = {(0, 1): 0, (1, 2): 5_000}

    def datagram(self, rng: random.Random) -> Datagram:
        engine = rng.choice(list(self.sequence))
        count = rng.randint(1, netflow5.MAX_RECORDS)
        if rng.random() < 0.05:
            self.sequence[engine] += rng.randint(1, 90)  # lost on the way
        if rng.random() < 0.02:
            self.sequence[engine] = rng.randint(0, 100)  # the exporter restarted
        sampling = rng.choice([0, 0, 0x4000 | 100])
        payload = v5_datagram(rng, count, self.sequence[engine], engine, sampling)
        self.sequence[engine] = (self.sequence[engine] + count) & 0xFFFFFFFF
        if rng.random() < 0.05:
            payload += b"\0" * rng.randint(1, 40)  # bytes after the last record
        return Datagram(payload, self.address, self.port, float(EXPORT_S))


def decode_both(batches: list[list[Datagram]]) -> tuple[Decoder, Decoder, list, list, int]:
    batched, walked = Decoder(), Decoder()
    walked._v5_batch = lambda datagrams: None  # type: ignore[method-assign]
    calls = [0]
    real = batched._v5_batch

    def counting(datagrams):
        taken = real(datagrams)
        calls[0] += taken is not None
        return taken

    batched._v5_batch = counting  # type: ignore[method-assign]
    return batched, walked, [batched.decode(b) for b in batches], [walked.decode(b) for b in batches], calls[0]


def test_a_v5_batch_read_at_once_decodes_and_counts_as_the_walk() -> None:
    for seed in range(5):
        rng = random.Random(seed)
        exporters = [Exporter(a, p) for a, p in EXPORTERS]
        batches = []
        for _ in range(8):
            batch = [rng.choice(exporters).datagram(rng) for _ in range(rng.randint(1, 60))]
            if rng.random() < 0.2 and len(batch) > 2:  # reordered on the way
                batch[0], batch[-1] = batch[-1], batch[0]
            batches.append(batch)
        batched, walked, got, want, taken = decode_both(batches)
        assert taken == len(batches)
        assert sum(len(r.flows) for r in got) > 1000
        assert sum(r.flows["sampling_rate"].tolist().count(100) for r in got) > 0
        gaps = batched.counters.get("sequence_gaps_total", exporter="192.0.2.1", proto="netflow5")
        resets = batched.counters.get("sequence_resets_total", exporter="192.0.2.1", proto="netflow5")
        assert gaps + resets > 0  # losses and restarts happen: their counting is compared too
        assert_same(batched, walked, got, want)


def test_batches_the_v5_read_must_not_take_go_to_the_walk() -> None:
    rng = random.Random(1)
    e = Exporter(*EXPORTERS[0])
    sound = v5_datagram(rng, 3, 0, (0, 1), 0)
    no_records = netflow5.HEADER.pack(5, 0, 0, EXPORT_S, 0, 0, 0, 1, 0) + bytes(netflow5.RECORD_LEN)
    too_many = netflow5.HEADER.pack(5, 31, 0, EXPORT_S, 0, 0, 0, 1, 0) + bytes(31 * netflow5.RECORD_LEN)
    odd = [sound[:20], no_records, too_many, sound[:-10], b"\x00\x0a" + sound[2:]]
    for payload in odd:
        batch = [e.datagram(rng), Datagram(payload, e.address, e.port, float(EXPORT_S)), e.datagram(rng)]
        batched, walked, got, want, taken = decode_both([batch])
        assert taken == 0
        assert_same(batched, walked, got, want)
        errors = [v for k, v in walked.counters.snapshot().items() if k[0] == "decode_errors_total"]
        assert sum(errors) == 1  # the walk counted the odd one out
        assert len(got[0].flows) == sum(int.from_bytes(dg.payload[2:4], "big") for dg in (batch[0], batch[2]))
