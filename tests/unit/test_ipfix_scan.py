"""The IPFIX batch scan (``Decoder._scan_ipfix``) against the message-by-message walk it
stands in for: the same flows, records, counters and sequence state on random batches from
several exporters, domains and ports (template refreshes, options data, sampling, padding,
trailing bytes, lost and reordered messages), and the walk taking every batch the scan must
not (new or changed templates, data before its template, malformed messages)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from sluice.collect.decoder import Datagram, Decoder

from ..support.wirebuild import (
    EXPORT_S,
    data_set,
    ip4,
    ipfix_message,
    ipfix_options_template_set,
    ipfix_template_set,
)

BASIC = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 4)]
WITH_SELECTOR = BASIC + [(302, 4)]
OPTIONS = ipfix_options_template_set(500, [(302, 4)], [(305, 4), (306, 4)])
EXPORTERS = [("192.0.2.1", 4739), ("192.0.2.1", 4740), ("198.51.100.7", 4739)]


def record(rng: random.Random, selector: bool) -> bytes:
    out = ip4(f"10.0.{rng.randint(0, 3)}.{rng.randint(1, 9)}") + ip4(f"10.1.0.{rng.randint(1, 9)}")
    out += struct.pack("!HHBQI", rng.randint(1024, 1100), rng.choice([53, 80, 443]), 6, rng.randint(40, 9000),
                       rng.randint(1, 9))  # fmt: skip
    return out + (struct.pack("!I", 7) if selector else b"")


def templates(domain: int) -> bytes:
    return ipfix_template_set([(300, BASIC), (301, WITH_SELECTOR)])


class Exporter:
    """One exporter's domains, each with its own sequence numbers."""

    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self.sequence = {1: 0, 2: 1000}

    def message(self, rng: random.Random, refresh: bool) -> bytes:
        domain = rng.choice([1, 2])
        sets = [templates(domain), OPTIONS] if refresh else []
        if rng.random() < 0.1:
            sets.append(data_set(500, [struct.pack("!III", 7, 1, 99)]))  # sampling: 1 in 100
        count = 0
        for _ in range(rng.randint(1, 3)):
            selector = rng.random() < 0.3
            n = rng.randint(1, 5)
            sets.append(data_set(301 if selector else 300, [record(rng, selector) for _ in range(n)],
                                 pad_to=rng.choice([4, 8])))  # fmt: skip
            count += n
        if rng.random() < 0.05:
            self.sequence[domain] += rng.randint(1, 40)  # lost on the way
        message = ipfix_message(sets, sequence=self.sequence[domain], domain=domain, export_s=EXPORT_S)
        self.sequence[domain] = (self.sequence[domain] + count) & 0xFFFFFFFF
        return message + (b"\0" * rng.randint(1, 3) if rng.random() < 0.05 else b"")  # trailing bytes


def decode_both(batches: list[list[Datagram]]) -> tuple[Decoder, Decoder, list, list, int]:
    scanned, walked = Decoder(), Decoder()
    walked._scan_ipfix = lambda datagrams: None  # type: ignore[method-assign]
    calls = [0]
    real = scanned._scan_ipfix

    def counting(datagrams):
        taken = real(datagrams)
        calls[0] += taken is not None
        return taken

    scanned._scan_ipfix = counting  # type: ignore[method-assign]
    return scanned, walked, [scanned.decode(b) for b in batches], [walked.decode(b) for b in batches], calls[0]


def assert_same(scanned: Decoder, walked: Decoder, got: list, want: list) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert sorted(a.flows.columns) == sorted(b.flows.columns)
        for name in b.flows.columns:
            np.testing.assert_array_equal(a.flows[name], b.flows[name], err_msg=f"batch {i} flows {name}")
        assert [(g.template_id, g.kind, len(g)) for g in a.records] == [(g.template_id, g.kind, len(g)) for g in b.records]
        for ga, gb in zip(a.records, b.records, strict=True):
            for name in gb.meta:
                np.testing.assert_array_equal(ga.meta[name], gb.meta[name], err_msg=f"batch {i} meta {name}")
            assert ga.piece_keys == gb.piece_keys
    timeless = {k: v for k, v in walked.counters.snapshot().items() if k[0] != "exporter_last_datagram_seconds"}
    assert {k: v for k, v in scanned.counters.snapshot().items() if k[0] in {n for n, _ in timeless}} == timeless
    assert scanned._sequences == walked._sequences


@pytest.mark.parametrize("seed", range(6))
def test_the_batch_scan_decodes_and_counts_as_the_walk(seed: int) -> None:
    rng = random.Random(seed)
    exporters = [Exporter(a, p) for a, p in EXPORTERS]
    first = [Datagram(ipfix_message([templates(d), OPTIONS], domain=d), e.address, e.port, float(EXPORT_S))
             for e in exporters for d in (1, 2)]  # fmt: skip
    batches = [first]
    for _ in range(8):
        batch = []
        for _ in range(rng.randint(1, 60)):
            e = rng.choice(exporters)
            batch.append(Datagram(e.message(rng, rng.random() < 0.05), e.address, e.port, float(EXPORT_S)))
        if rng.random() < 0.2 and len(batch) > 2:  # reordered on the way
            batch[0], batch[-1] = batch[-1], batch[0]
        batches.append(batch)
    scanned, walked, got, want, taken = decode_both(batches)
    assert taken == len(batches) - 1  # the first batch learns the templates: the walk's
    assert sum(len(r.flows) for r in got) > 100
    assert_same(scanned, walked, got, want)
    assert scanned.counters.get("sequence_gaps_total", exporter="192.0.2.1", proto="ipfix") == walked.counters.get(
        "sequence_gaps_total", exporter="192.0.2.1", proto="ipfix")


def test_batches_the_scan_must_not_take_go_to_the_walk() -> None:
    rng = random.Random(1)
    e = Exporter(*EXPORTERS[0])
    known = [Datagram(ipfix_message([templates(1), OPTIONS], domain=1), e.address, e.port, float(EXPORT_S))]
    changed = ipfix_message([ipfix_template_set([(300, BASIC[:-1])])], domain=1)  # the layout changes
    early = ipfix_message([data_set(310, [record(rng, False)])], domain=1)  # before its template
    short_header = ipfix_message([data_set(300, [record(rng, False)])], domain=1)[:10]
    bad_set = bytearray(ipfix_message([data_set(300, [record(rng, False)])], domain=1))
    bad_set[18:20] = (2000).to_bytes(2, "big")  # a set longer than its message
    for odd in (changed, early, short_header, bytes(bad_set)):
        batch = [Datagram(e.message(rng, False), e.address, e.port, float(EXPORT_S)), Datagram(odd, e.address, e.port,
                 float(EXPORT_S)), Datagram(e.message(rng, False), e.address, e.port, float(EXPORT_S))]  # fmt: skip
        scanned, walked, got, want, taken = decode_both([known, batch])
        assert taken == 0
        assert_same(scanned, walked, got, want)
