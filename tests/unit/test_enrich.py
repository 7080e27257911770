"""Country and ASN enrichment from MMDB files (written here with mmdb-writer, read with
maxminddb), pseudo-codes for special ranges, reload on change, and the embedded default."""

import os
import time

import numpy as np
import pytest
from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

from sluice.flows.enrich import DEFAULT_COUNTRY_MMDB, Enricher
from sluice.flows.schema import SessionBatch, addr_bytes

from ..support.env import IN_CI


def write_mmdb(path, entries, kind="country"):
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="test")
    for prefixes, value in entries:
        record = {"country": {"iso_code": value}} if kind == "country" else {"autonomous_system_number": MmdbU32(value)}
        writer.insert_network(IPSet(prefixes), record)
    writer.to_db_file(str(path))


def addrs(*texts):
    return np.array([list(addr_bytes(t)) for t in texts], np.uint8)


@pytest.fixture
def geo(tmp_path):
    country = tmp_path / "country.mmdb"
    asn = tmp_path / "asn.mmdb"
    write_mmdb(country, [(["8.8.8.0/24", "2001:4860::/32"], "US"), (["1.0.16.0/20"], "JP"),
                         (["2a00:1450:4000::/37"], "IE"), (["10.0.0.0/8"], "DE")])
    write_mmdb(asn, [(["8.8.8.0/24", "2001:4860::/32"], 15169), (["1.0.16.0/20"], 2519)], kind="asn")
    return country, asn, tmp_path


def test_countries_and_pseudo_codes(geo):
    country, asn, tmp = geo
    e = Enricher(country, asn, cache_dir=tmp / "cache")
    got = e.countries(addrs("8.8.8.8", "1.0.16.1", "2001:4860::8888", "2a00:1450:4001::1", "9.9.9.9",
                            "10.1.2.3", "192.168.1.1", "fd00::1", "127.0.0.1", "fe80::1", "239.1.1.1", "ff02::1",
                            "192.0.2.1", "2001:db8::1", "0.0.0.0"))
    assert [c.decode() for c in got] == ["US", "JP", "US", "IE", "ZZ",
                                         # private ranges get XP even where the data says otherwise
                                         "XP", "XP", "XP", "XL", "XL", "XM", "XM", "XR", "XR", "XR"]


def test_asn_from_database_else_from_exporter(geo):
    country, asn, tmp = geo
    e = Enricher(country, asn, cache_dir=tmp / "cache")
    got = e.asns(addrs("8.8.8.8", "1.0.16.1", "9.9.9.9"), np.array([1, 2, 64500], np.uint32))
    assert got.tolist() == [15169, 2519, 64500]
    assert Enricher(country, None).asns(addrs("8.8.8.8"), np.array([7], np.uint32)).tolist() == [7]


def test_sessions_are_enriched_on_both_sides(geo):
    country, asn, tmp = geo
    s = SessionBatch.build(2, cln_addr=addrs("10.0.0.1", "2001:4860::1"), srv_addr=addrs("8.8.8.8", "1.0.16.1"))
    out = Enricher(country, asn, cache_dir=tmp / "cache")(s)
    assert out["cln_country"].tolist() == [b"XP", b"US"]
    assert out["srv_country"].tolist() == [b"US", b"JP"]
    assert out["srv_asn"].tolist() == [15169, 2519]


def test_reloaded_when_the_file_changes_without_restart(geo):
    country, asn, tmp = geo
    e = Enricher(country, None, cache_dir=tmp / "cache", check_every_s=0)
    assert e.countries(addrs("9.9.9.9")).tolist() == [b"ZZ"]
    write_mmdb(country, [(["9.9.9.0/24"], "CH")])
    os.utime(country, (time.time() + 5, time.time() + 5))  # a visibly newer file
    e.refresh()
    assert e.countries(addrs("9.9.9.9", "8.8.8.8")).tolist() == [b"CH", b"ZZ"]


def test_a_broken_file_keeps_the_last_good_data(geo):
    country, asn, tmp = geo
    e = Enricher(country, None, cache_dir=tmp / "cache", check_every_s=0)
    country.write_bytes(b"not an mmdb file")
    e.refresh()
    assert e.country.error and "cannot use" in e.country.error
    assert e.countries(addrs("8.8.8.8")).tolist() == [b"US"]
    missing = Enricher(tmp / "nope.mmdb", None)
    assert "cannot read" in missing.country.error
    assert missing.countries(addrs("8.8.8.8", "10.0.0.1")).tolist() == [b"ZZ", b"XP"]


def test_cache_gives_the_same_answers(geo):
    country, _, tmp = geo
    sample = addrs("8.8.8.8", "1.0.16.1", "2a00:1450:4001::1", "9.9.9.9")
    first = Enricher(country, None).countries(sample)
    assert list(country.parent.glob(f".{country.name}.country-*.npz"))
    assert Enricher(country, None).countries(sample).tolist() == first.tolist()


def test_embedded_default_country_data_works_offline():
    if not DEFAULT_COUNTRY_MMDB.exists():
        message = f"{DEFAULT_COUNTRY_MMDB} missing: run `make geodata`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    e = Enricher()
    got = e.countries(addrs("8.8.8.8", "1.0.16.1", "2001:4860::8888", "10.0.0.1"))
    assert got.tolist() == [b"US", b"JP", b"US", b"XP"]


def _plain_search(starts: np.ndarray, ends: np.ndarray, values: np.ndarray, keys: np.ndarray, default: int) -> np.ndarray:
    """The reference: the last range starting at or before each key, if it reaches the key."""
    idx = np.searchsorted(starts, keys, side="right") - 1
    safe = np.maximum(idx, 0)
    hit = (idx >= 0) & (keys <= ends[safe]) if len(starts) else np.zeros(len(keys), bool)
    return np.where(hit, values[safe] if len(starts) else default, default)


def _random_ranges(rng: np.random.Generator, trial: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = int(rng.integers(1, 3000))
    top = 1 << bits
    cuts = np.unique(rng.integers(0, top, 2 * n, dtype=np.uint64))
    if trial % 3 == 0:  # few, wide ranges: many /16s share one
        cuts = np.unique(rng.integers(0, top, 8, dtype=np.uint64))
    starts, ends = cuts[0::2][: len(cuts) // 2], cuts[1::2][: len(cuts) // 2]
    keep = rng.random(len(starts)) < 0.8  # leave gaps
    starts, ends = starts[keep], ends[keep]
    return starts, ends, rng.integers(1, 1000, len(starts)).astype(np.uint32)


def _probes(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray, top: int) -> np.ndarray:
    """Keys at and around every range's ends, random ones, and the extremes."""
    edges = np.concatenate([starts, ends])
    around = np.concatenate([edges - np.uint64(1), edges, edges + np.uint64(1)])  # wraps at the extremes: still keys
    probes = np.concatenate([around, rng.integers(0, top, 5000, dtype=np.uint64), np.array([0, top - 1], np.uint64)])
    return probes if top == 1 << 64 else probes % np.uint64(top)


def test_lookups_agree_with_a_plain_search():
    """The compiled pass over the rows (IPv4 through the /16 index, IPv6 on the upper 64 bits,
    both families mixed in one batch) gives the answers of a search over every range, for
    random tables (ranges of every size, gaps, ranges across /16 boundaries) and keys at and
    around every range's ends, 0 and the largest key."""
    from sluice.flows.enrich import RangeTable

    rng = np.random.default_rng(11)
    for trial in range(30):
        s4, e4, v4 = _random_ranges(rng, trial, 32)
        s6, e6, v6 = _random_ranges(rng, trial + 1, 64)
        table = RangeTable(s4, e4, v4, s6, e6, v6)
        p4, p6 = _probes(rng, s4, e4, 1 << 32), _probes(rng, s6, e6, 1 << 64)
        p6 = p6[p6 != 0]  # an upper half of 0 is an IPv4-mapped address's
        addr16 = np.zeros((len(p4) + len(p6), 16), np.uint8)
        addr16[: len(p4), 10:12] = 0xFF
        addr16[: len(p4), 12:] = p4.astype(">u4").view(np.uint8).reshape(-1, 4)
        addr16[len(p4) :, :8] = p6.astype(">u8").view(np.uint8).reshape(-1, 8)
        addr16[len(p4) :, 8:] = rng.integers(0, 256, (len(p6), 8))
        order = rng.permutation(len(addr16))  # the families interleaved
        expected = np.concatenate([_plain_search(s4, e4, v4, p4, 0), _plain_search(s6, e6, v6, p6, 0)])
        assert np.array_equal(table.lookup(addr16[order], 0), expected[order]), trial
        # answers known already (special-purpose addresses' codes) are kept, the others searched
        known = np.where(rng.random(len(order)) < 0.3, rng.integers(1000, 2000, len(order)), 0).astype(np.uint32)
        got = table.lookup(addr16[order], 0, known=known)
        assert np.array_equal(got, np.where(known != 0, known, expected[order])), trial
    # an empty table: every address gets the default
    empty = RangeTable(*(np.empty(0, np.uint64),) * 2, np.empty(0, "S2"), *(np.empty(0, np.uint64),) * 2, np.empty(0, "S2"))
    assert empty.lookup(np.zeros((3, 16), np.uint8), b"ZZ").tolist() == [b"ZZ"] * 3
