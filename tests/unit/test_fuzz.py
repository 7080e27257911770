"""Hostile input for every decoder: random bytes behind each version number, and mutations
(bit flips, truncation, insertion, lying lengths) of the real vendor datagrams. The decoder
must never raise, must keep its memory bounded, and must account for every datagram."""

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder, DecoderConfig

from ..support.env import CONFORMANCE

CASES = json.loads((CONFORMANCE / "cases.json").read_text())["cases"]
CORPUS = [[(CONFORMANCE / f).read_bytes() for f in case["files"]] for case in CASES]


def _encoded_seeds() -> list[list[bytes]]:
    """sFlow (absent from the vendor corpus) and Sluice's own v9/IPFIX exports as more seeds."""
    from sluice.simulate.encode import IpfixEncoder, NetflowV9Encoder, SflowEncoder
    from sluice.simulate.traffic import TrafficModel

    flows = TrafficModel(seed=3, scan_every_s=0, exfil_every_s=0).conversations(0, 200, 100)
    return [enc.encode(flows, 1_700_000_000_000)[:4] for enc in
            (SflowEncoder(), SflowEncoder(agent="2001:db8::9"), NetflowV9Encoder(sampling_rate=10),
             IpfixEncoder(sampling_rate=10))]


CORPUS += _encoded_seeds()
PREFIXES = [b"\x00\x05", b"\x00\x09", b"\x00\x0a", b"\x00\x00\x00\x05", b""]
LIMITS = DecoderConfig(pending_max_bytes=64 << 10, max_templates=64)


def check(decoder: Decoder, datagrams: list[bytes]) -> None:
    before = decoder.counters.get("datagrams_total") + decoder.counters.get("decode_errors_total", proto="unknown")
    result = decoder.decode([Datagram(d, "192.0.2.1", 2055, 1_700_000_000.0) for d in datagrams])
    after = decoder.counters.get("datagrams_total") + decoder.counters.get("decode_errors_total", proto="unknown")
    # every datagram is either recognised (and counted per exporter) or counted as an error
    assert after - before == len(datagrams)
    # no amplification: a record takes at least one byte (biflows become two flows)
    assert len(result.flows) <= 2 * sum(len(d) for d in datagrams)
    # bounded state
    assert len(decoder.templates) <= LIMITS.max_templates
    assert decoder.pending._bytes <= LIMITS.pending_max_bytes
    result.flows.to_arrow()  # and the output is a well-formed batch


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=1500))
def test_random_bytes_behind_every_version(prefix, body):
    check(Decoder(LIMITS), [prefix + body])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        if op == 0 and b:  # flip a byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:  # truncate
            del b[rng.randrange(len(b)):]
        elif op == 2:  # insert junk
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and len(b) >= 8:  # make a 16-bit length/count lie (set lengths, field counts)
            pos = rng.randrange(0, len(b) - 1)
            b[pos:pos + 2] = rng.choice([b"\xff\xff", b"\x00\x00", b"\x00\x04", b"\x00\x01", b"\xff\xfe"])
        elif op == 4 and len(b) > 20:  # duplicate a region (template loops, repeated sets)
            a = rng.randrange(len(b) - 4)
            b[a:a] = b[a:a + rng.randint(4, 64)]
    return bytes(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.integers(0, len(CORPUS) - 1), seed=st.integers(0, 2**32 - 1))
def test_mutated_vendor_datagrams(case, seed):
    rng = random.Random(seed)
    decoder = Decoder(LIMITS)
    datagrams = CORPUS[case]
    # the genuine templates first, then mutated copies of every datagram of the case
    check(decoder, datagrams)
    check(decoder, [_mutate(rng, d) for d in datagrams for _ in range(3)])


def test_template_flood_stays_within_the_cache_limit():
    from ..support.wirebuild import data_set, ipfix_message, ipfix_template_set

    decoder = Decoder(LIMITS)
    for i in range(20):
        templates = [(256 + i * 100 + k, [(8, 4), (1, 4)]) for k in range(50)]
        check(decoder, [ipfix_message([ipfix_template_set(templates), data_set(9999, [b"\0" * 8])], domain=i)])
    assert decoder.counters.get("templates_evicted_total") > 0


def test_spoofed_source_flood_keeps_state_and_metrics_bounded():
    from sluice.collect.decoder import DecoderConfig as Config
    from ..support.wirebuild import ipfix_message

    decoder = Decoder(Config(max_exporters=50))
    datagrams = [Datagram(ipfix_message([], sequence=i, domain=i), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                          2055, 0.0) for i in range(500)]
    decoder.decode(datagrams)
    assert len(decoder._sequences) <= 50
    labels = {dict(k)["exporter"] for (name, k) in decoder.counters.snapshot() if name == "datagrams_total"}
    assert len(labels) == 51 and "other" in labels
    assert decoder.counters.get("datagrams_total") == 500  # still every datagram counted
