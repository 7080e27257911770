"""The batch scan of IPFIX and NetFlow v9 (``Decoder._scan_batch``) against the
message-by-message walk it stands in for: the same flows, records, counters and sequence
state on random batches from several exporters, domains and ports (template refreshes,
options data, sampling, padding, trailing bytes, lost and reordered messages), and the walk
taking every batch the scan must not (new or changed templates, data before its template,
malformed messages)."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder

from ..support.wirebuild import (
    EXPORT_S,
    data_set,
    ip4,
    ipfix_message,
    ipfix_options_template_set,
    ipfix_template_set,
    v9_message,
    v9_options_template_set,
    v9_template_set,
)

BASIC = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 4)]
EXPORTERS = [("192.0.2.1", 4739), ("192.0.2.1", 4740), ("198.51.100.7", 4739)]


class Wire:
    """How one version says templates, sampling options and messages: IPFIX (selectorId and
    sampling interval, space) or NetFlow v9 (FLOW_SAMPLER_ID and SAMPLING_INTERVAL)."""

    def __init__(self, version: int):
        self.version = version
        if version == 10:
            self.selector = [(302, 4)]
            self.options = ipfix_options_template_set(500, [(302, 4)], [(305, 4), (306, 4)])
            self.sampling = struct.pack("!III", 7, 1, 99)  # 1 in 100
            self.selector_value = struct.pack("!I", 7)
        else:
            self.selector = [(48, 1)]
            self.options = v9_options_template_set(500, [(1, 4)], [(48, 1), (34, 4)])
            self.sampling = struct.pack("!IBI", 0, 7, 100)
            self.selector_value = b"\x07"

    def templates(self, basic: list = BASIC) -> bytes:
        pairs = [(300, basic), (301, BASIC + self.selector)]
        return ipfix_template_set(pairs) if self.version == 10 else v9_template_set(pairs)

    def message(self, sets: list[bytes], sequence: int = 0, domain: int = 1) -> bytes:
        if self.version == 10:
            return ipfix_message(sets, sequence=sequence, domain=domain, export_s=EXPORT_S)
        return v9_message(sets, sequence=sequence, source_id=domain, uptime_ms=3_600_000, export_s=EXPORT_S)


def record(rng: random.Random, selector: bytes = b"") -> bytes:
    out = ip4(f"10.0.{rng.randint(0, 3)}.{rng.randint(1, 9)}") + ip4(f"10.1.0.{rng.randint(1, 9)}")
    out += struct.pack("!HHBQI", rng.randint(1024, 1100), rng.choice([53, 80, 443]), 6, rng.randint(40, 9000),
                       rng.randint(1, 9))  # fmt: skip
    return out + selector


class Exporter:
    """One exporter's domains, each with its own sequence numbers."""

    def __init__(self, wire: Wire, address: str, port: int):
        self.wire, self.address, self.port = wire, address, port
        self.sequence = {1: 0, 2: 1000}

    def first(self) -> list[Datagram]:
        return [self.datagram(self.wire.message([self.wire.templates(), self.wire.options], domain=d)) for d in (1, 2)]

    def datagram(self, payload: bytes) -> Datagram:
        return Datagram(payload, self.address, self.port, float(EXPORT_S))

    def message(self, rng: random.Random, refresh: bool) -> bytes:
        wire, domain = self.wire, rng.choice([1, 2])
        sets = [wire.templates(), wire.options] if refresh else []
        if rng.random() < 0.1:
            sets.append(data_set(500, [wire.sampling]))
        count = 0
        for _ in range(rng.randint(1, 3)):
            selector = wire.selector_value if rng.random() < 0.3 else b""
            n = rng.randint(1, 5)
            sets.append(data_set(301 if selector else 300, [record(rng, selector) for _ in range(n)],
                                 pad_to=rng.choice([4, 8])))  # fmt: skip
            count += n
        if rng.random() < 0.05:
            self.sequence[domain] += rng.randint(1, 40)  # lost on the way
        message = wire.message(sets, sequence=self.sequence[domain], domain=domain)
        # IPFIX numbers data records, v9 export packets
        self.sequence[domain] = (self.sequence[domain] + (count if wire.version == 10 else 1)) & 0xFFFFFFFF
        if rng.random() < 0.05:  # bytes after the message (IPFIX), zero fill after the last flowset (v9)
            message += b"\0" * rng.randint(1, 7)
        return message


def decode_both(batches: list[list[Datagram]]) -> tuple[Decoder, Decoder, list, list, int]:
    scanned, walked = Decoder(), Decoder()
    walked._scan_batch = lambda datagrams, version: None  # type: ignore[method-assign]
    calls = [0]
    real = scanned._scan_batch

    def counting(datagrams, version):
        taken = real(datagrams, version)
        calls[0] += taken is not None
        return taken

    scanned._scan_batch = counting  # type: ignore[method-assign]
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
            assert ga.piece_keys.as_list() == gb.piece_keys.as_list()
    timeless = {k: v for k, v in walked.counters.snapshot().items() if k[0] != "exporter_last_datagram_seconds"}
    assert {k: v for k, v in scanned.counters.snapshot().items() if k[0] in {n for n, _ in timeless}} == timeless
    assert scanned._sequences == walked._sequences


@pytest.mark.parametrize("version", [10, 9])
@pytest.mark.parametrize("seed", range(5))
def test_the_batch_scan_decodes_and_counts_as_the_walk(seed: int, version: int) -> None:
    rng = random.Random(seed)
    exporters = [Exporter(Wire(version), a, p) for a, p in EXPORTERS]
    batches = [[dg for e in exporters for dg in e.first()]]
    for _ in range(8):
        batch = []
        for _ in range(rng.randint(1, 60)):
            e = rng.choice(exporters)
            batch.append(e.datagram(e.message(rng, rng.random() < 0.05)))
        if rng.random() < 0.2 and len(batch) > 2:  # reordered on the way
            batch[0], batch[-1] = batch[-1], batch[0]
        batches.append(batch)
    scanned, walked, got, want, taken = decode_both(batches)
    assert taken == len(batches) - 1  # the first batch learns the templates: the walk's
    assert sum(len(r.flows) for r in got) > 100
    assert sum(r.flows["sampling_rate"].tolist().count(100) for r in got) > 0
    assert_same(scanned, walked, got, want)


@pytest.mark.parametrize("version", [10, 9])
def test_batches_the_scan_must_not_take_go_to_the_walk(version: int) -> None:
    rng = random.Random(1)
    wire = Wire(version)
    e = Exporter(wire, *EXPORTERS[0])
    changed = wire.message([wire.templates(BASIC[:-1])])  # the layout changes
    early = wire.message([data_set(310, [record(rng)])])  # before its template
    short_header = wire.message([data_set(300, [record(rng)])])[:10]
    bad_set = bytearray(wire.message([data_set(300, [record(rng)])]))
    at = 16 if version == 10 else 20
    bad_set[at + 2 : at + 4] = (2000).to_bytes(2, "big")  # a set longer than its message
    other_version = Wire(19 - version).message([data_set(300, [record(rng)])])
    for odd in (changed, early, short_header, bytes(bad_set), other_version):
        batch = [e.datagram(e.message(rng, False)), e.datagram(odd), e.datagram(e.message(rng, False))]
        scanned, walked, got, want, taken = decode_both([e.first(), batch])
        assert taken == 0
        assert_same(scanned, walked, got, want)
