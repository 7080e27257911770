"""Country and ASN of each side of a session, from MMDB files, looked up vectorised.

MMDB files (MaxMind GeoLite2 / GeoIP2, IPinfo, DB-IP, ip-location-db: anything
``maxminddb`` reads) are walked once into sorted range arrays: IPv4 ranges on 32-bit keys,
IPv6 ranges on the first 64 bits (prefixes longer than /64 are widened to their /64, a
granularity no country or AS allocation goes below in practice). A lookup is then one
compiled pass over a batch's addresses: a binary search each (IPv4: among the few ranges
that can hold the address's /16, which an index finds in one read). The arrays are cached
beside the data directory (``.npz``, keyed by the file's size and modification time), and
the files are re-read when they change, without a restart.

Special-purpose addresses never get a country from the data: they get a pseudo-code
(XP private, XL loopback / link-local, XM multicast, XR other reserved; ZZ when a public
address is not in the data). See docs/filters.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import structlog
from numpy.typing import DTypeLike

from ..compiled import njit
from .schema import SessionBatch, big_endian

log = structlog.get_logger(__name__)

#: a network as ``ipaddress`` gives it, or its text
NetworkLike = Union[str, ipaddress.IPv4Network, ipaddress.IPv6Network]

UNKNOWN = b"ZZ"

#: (prefix, pseudo-code), most specific first where they overlap
SPECIAL_RANGES: list[tuple[str, bytes]] = [
    ("10.0.0.0/8", b"XP"),
    ("172.16.0.0/12", b"XP"),
    ("192.168.0.0/16", b"XP"),
    ("100.64.0.0/10", b"XP"),
    ("fc00::/7", b"XP"),
    ("127.0.0.0/8", b"XL"),
    ("169.254.0.0/16", b"XL"),
    ("::1/128", b"XL"),
    ("fe80::/10", b"XL"),
    ("224.0.0.0/4", b"XM"),
    ("ff00::/8", b"XM"),
    ("0.0.0.0/8", b"XR"),
    ("192.0.0.0/24", b"XR"),
    ("192.0.2.0/24", b"XR"),
    ("198.18.0.0/15", b"XR"),
    ("198.51.100.0/24", b"XR"),
    ("203.0.113.0/24", b"XR"),
    ("240.0.0.0/4", b"XR"),
    ("::/128", b"XR"),
    ("2001:db8::/32", b"XR"),
    ("100::/64", b"XR"),
    ("2001::/23", b"XR"),
]

#: where ``make`` puts the embedded default country data (ip-location-db, CC0)
DEFAULT_COUNTRY_MMDB = Path(sys.prefix) / "share" / "sluice" / "geo-whois-asn-country.mmdb"


@dataclass
class RangeTable:
    """Sorted, non-overlapping ranges -> values, for IPv4 (32-bit) and IPv6 (upper 64 bits)."""

    v4_start: np.ndarray
    v4_end: np.ndarray
    v4_value: np.ndarray
    v6_start: np.ndarray
    v6_end: np.ndarray
    v6_value: np.ndarray
    # derived: per /16 of IPv4, the first and one past the last range that can hold its addresses
    v4_lo: np.ndarray = field(init=False, repr=False)
    v4_hi: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        prefixes = np.arange(1 << 16, dtype=np.uint64) << np.uint64(16)
        self.v4_lo = np.maximum(np.searchsorted(self.v4_start, prefixes, side="right") - 1, 0).astype(np.int64)
        self.v4_hi = np.searchsorted(self.v4_start, prefixes + np.uint64(1 << 16), side="left").astype(np.int64)
        # the values as unsigned integers of their width (country codes: 2 bytes), which the
        # compiled lookup handles like any number
        codes = np.dtype(f"u{self.v4_value.dtype.itemsize}")
        self._v4_codes = self.v4_value.view(codes)
        self._v6_codes = self.v6_value.astype(self.v4_value.dtype).view(codes)
        self.lookup(np.zeros((1, 16), np.uint8), np.zeros(1, self.v4_value.dtype)[0])  # compiled now

    @classmethod
    def from_networks(cls, networks: Sequence[tuple[NetworkLike, object]], dtype: DTypeLike) -> RangeTable:
        """From (network, value) pairs; networks as ``ipaddress`` objects or text."""
        v4: list[tuple[int, int, object]] = []
        v6: list[tuple[int, int, object]] = []
        for network, value in networks:  # building the table, once: not the hot path
            net = (
                network
                if isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                else ipaddress.ip_network(network, strict=False)
            )
            if net.version == 4:
                v4.append((int(net.network_address), int(net.broadcast_address), value))
            elif net.network_address.ipv4_mapped is None:
                v6.append((int(net.network_address) >> 64, int(net.broadcast_address) >> 64, value))
        return cls(*_flatten(v4, dtype), *_flatten(v6, dtype))

    def lookup(self, addr16: np.ndarray, default: object, known: np.ndarray | None = None) -> np.ndarray:
        """The value of the range holding each 16-byte address (IPv4 as ``::ffff:a.b.c.d``),
        ``default`` where none does. ``known``: answers already found (of this table's type),
        kept and not searched for where they are not zero (empty)."""
        codes = self._v4_codes.dtype
        fallback = np.asarray(default, self.v4_value.dtype).reshape(1).view(codes)[0]
        preset = np.zeros(0, codes) if known is None else np.ascontiguousarray(known).view(codes)
        found = _lookup_rows(
            _address_words(addr16), self.v4_start, self.v4_end, self.v4_lo, self.v4_hi, self._v4_codes,
            self.v6_start, self.v6_end, self._v6_codes, fallback, preset,
        )  # fmt: skip
        return found.view(self.v4_value.dtype)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # session workers may prepare it at once
        np.savez(tmp, **{k: getattr(self, k) for k in _TABLE_ARRAYS})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> RangeTable:
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: z[k] for k in _TABLE_ARRAYS})


def _flatten(entries: list[tuple[int, int, object]], dtype: DTypeLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort ranges; where they overlap (a /64-widened IPv6 prefix), the later start wins."""
    entries.sort(key=lambda e: (e[0], -e[1]))
    starts = np.array([e[0] for e in entries], np.uint64)
    ends = np.array([e[1] for e in entries], np.uint64)
    values = np.array([e[2] for e in entries], dtype)
    if len(starts) > 1:  # clip each range's end to just before the next range starts
        ends[:-1] = np.minimum(ends[:-1], np.maximum(starts[1:], np.uint64(1)) - np.uint64(1))
    return starts, ends, values


_TABLE_ARRAYS = ("v4_start", "v4_end", "v4_value", "v6_start", "v6_end", "v6_value")


@njit(cache=True, nogil=True, inline="always")
def _last_start(starts: np.ndarray, a: int | np.int64, b: int | np.int64, key: np.uint64) -> np.int64:
    """The last of ``starts[a:b]`` at or before ``key`` (its index; ``a - 1`` if none)."""
    while a < b:
        m = (a + b) >> 1
        if starts[m] <= key:
            a = m + 1
        else:
            b = m
    return np.int64(a - 1)


def _address_words(addr16: np.ndarray) -> np.ndarray:
    """16-byte addresses as two native 64-bit words each (a view where it can be)."""
    return np.ascontiguousarray(addr16, np.uint8).view(np.uint64).reshape(-1, 2)


_LOW32 = np.uint64(0xFFFFFFFF)
#: bytes 8-11 of an IPv4-mapped address (00 00 ff ff) as the low half of a little-endian word
_MAPPED = np.uint64(0xFFFF0000)


@njit(cache=True, nogil=True)
def _lookup_rows(
    words: np.ndarray,
    v4_start: np.ndarray,
    v4_end: np.ndarray,
    v4_lo: np.ndarray,
    v4_hi: np.ndarray,
    v4_value: np.ndarray,
    v6_start: np.ndarray,
    v6_end: np.ndarray,
    v6_value: np.ndarray,
    default: np.generic,
    known: np.ndarray,
) -> np.ndarray:
    """Per address (two little-endian words, ``_address_words``): ``known`` where it is given
    and not zero, else the value of the range holding it, else ``default``. One pass over the
    rows (as numpy passes, splitting the families and their keys cost more than the search).
    IPv4 keys are searched among the ranges that can hold their /16 (``v4_lo``, ``v4_hi``),
    IPv6 keys (the upper 64 bits) among all."""
    n = words.shape[0]
    out = np.empty(n, v4_value.dtype)
    preset = known.shape[0] == n
    for i in range(n):
        if preset and known[i] != 0:
            out[i] = known[i]
            continue
        high, low = words[i, 0], words[i, 1]
        if high == 0 and (low & _LOW32) == _MAPPED:
            key = big_endian(low >> np.uint64(32), 4)
            p = key >> np.uint64(16)
            r = _last_start(v4_start, v4_lo[p], v4_hi[p], key)
            hit = r >= 0 and v4_start[r] <= key and key <= v4_end[r]
            out[i] = v4_value[r] if hit else default
        else:
            key = big_endian(high, 8)
            r = _last_start(v6_start, 0, v6_start.shape[0], key)
            hit = r >= 0 and v6_start[r] <= key and key <= v6_end[r]
            out[i] = v6_value[r] if hit else default
    return out


SPECIAL = RangeTable.from_networks([(p, c) for p, c in reversed(SPECIAL_RANGES)], "S2")


# -- reading MMDB files ----------------------------------------------------------------------


def _country(record: object) -> bytes | None:
    if not isinstance(record, dict):
        return None
    for path in (("country", "iso_code"), ("registered_country", "iso_code"), ("country_code",), ("country",)):
        value: object = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and len(value) == 2 and value.isascii() and value.isalpha():
            return value.upper().encode("ascii")
    return None


def _asn(record: object) -> int | None:
    if not isinstance(record, dict):
        return None
    value = record.get("autonomous_system_number", record.get("asn"))
    if isinstance(value, str) and value.upper().startswith("AS"):
        value = value[2:]
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 2**32 else None


def read_mmdb(path: Path, kind: str) -> RangeTable:
    """A country (``kind="country"``) or ASN (``"asn"``) table from an MMDB file."""
    import maxminddb

    pick, dtype = (_country, "S2") if kind == "country" else (_asn, np.uint32)
    networks = []
    with maxminddb.open_database(str(path)) as reader:
        for network, record in reader:
            value = pick(record)
            if value is not None:
                networks.append((str(network), value))
    if not networks:
        raise ValueError(
            f"{path} holds no {kind} data that Sluice understands "
            f"(expected country iso_code / country_code, or autonomous_system_number / asn)"
        )
    return RangeTable.from_networks(networks, dtype)


class MmdbSource:
    """One MMDB file as a range table, reloaded when the file changes."""

    def __init__(self, path: Path, kind: str, cache_dir: Path | None):
        self.path, self.kind, self.cache_dir = Path(path), kind, cache_dir
        self.table: RangeTable | None = None
        self.signature: tuple[int, int] | None = None
        self.error: str | None = None

    def refresh(self) -> bool:
        """(Re)load if the file changed; True when a new table is in place."""
        try:
            st = self.path.stat()
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror}"
            return False
        signature = (st.st_size, st.st_mtime_ns)
        if signature == self.signature:
            return False
        # the cache sits beside the file where that is writable (so an installed default is
        # prepared once for every data directory), else in the data directory's cache
        digest = hashlib.sha1(f"{self.path.resolve()}|{signature}|{self.kind}".encode()).hexdigest()[:16]
        cache_dir = self.path.parent if os.access(self.path.parent, os.W_OK) else self.cache_dir
        cache = cache_dir / f".{self.path.name}.{self.kind}-{digest}.npz" if cache_dir is not None else None
        try:
            if cache is not None and cache.exists():
                table = RangeTable.load(cache)
            else:
                started = time.monotonic()
                table = read_mmdb(self.path, self.kind)
                log.info(
                    "loaded geo data",
                    path=str(self.path),
                    kind=self.kind,
                    ranges=len(table.v4_start) + len(table.v6_start),
                    seconds=round(time.monotonic() - started, 1),
                )
                if cache is not None:
                    try:
                        cache.parent.mkdir(parents=True, exist_ok=True)
                        table.save(cache)
                    except OSError as exc:
                        log.warning("cannot cache geo data", path=str(cache), error=str(exc))
        except Exception as exc:  # a broken file must not take enrichment (or the server) down
            self.error = f"cannot use {self.path} as {self.kind} data: {exc}"
            log.warning("geo data not loaded", path=str(self.path), error=str(exc))
            return False
        self.table, self.signature, self.error = table, signature, None
        return True


def main() -> None:  # pragma: no cover - used by the Makefile
    """``python -m sluice.flows.enrich FILE...``: prepare the lookup cache of MMDB files."""
    for name in sys.argv[1:]:
        source = MmdbSource(Path(name), "country", None)
        if not source.refresh():
            raise SystemExit(source.error or f"cannot prepare {name}")


class Enricher:
    """Fills ``cln_country`` / ``srv_country`` (and ASNs, when an ASN database is configured)."""

    def __init__(
        self,
        country_mmdb: Path | None = None,
        asn_mmdb: Path | None = None,
        cache_dir: Path | None = None,
        check_every_s: float = 30.0,
    ):
        if country_mmdb is None and DEFAULT_COUNTRY_MMDB.exists():
            country_mmdb = DEFAULT_COUNTRY_MMDB
        self.country = MmdbSource(country_mmdb, "country", cache_dir) if country_mmdb else None
        self.asn = MmdbSource(asn_mmdb, "asn", cache_dir) if asn_mmdb else None
        self.check_every_s = check_every_s
        self._checked = 0.0
        self._lock = threading.Lock()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.check_every_s:
            return
        with self._lock:
            self._checked = now
            for source in (self.country, self.asn):
                if source is not None:
                    source.refresh()

    def countries(self, addr16: np.ndarray) -> np.ndarray:
        special = SPECIAL.lookup(addr16, b"")
        if self.country is None or self.country.table is None:
            codes = special.view(np.uint16)  # compared as numbers: ten times faster than as bytes
            return np.where(codes != 0, codes, np.frombuffer(UNKNOWN, np.uint16)[0]).view("S2")
        # a special-purpose address keeps its pseudo-code: the data is not searched for it
        return self.country.table.lookup(addr16, UNKNOWN, known=special)

    def asns(self, addr16: np.ndarray, reported: np.ndarray) -> np.ndarray:
        """ASN from the ASN database where it knows the address, else what the exporter sent."""
        if self.asn is None or self.asn.table is None:
            return reported
        found = self.asn.table.lookup(addr16, 0)
        return np.where(found != 0, found, reported).astype(np.uint32)

    def __call__(self, sessions: SessionBatch) -> SessionBatch:
        self.refresh()
        c = dict(sessions.columns)
        c["cln_country"] = self.countries(sessions["cln_addr"])
        c["srv_country"] = self.countries(sessions["srv_addr"])
        c["cln_asn"] = self.asns(sessions["cln_addr"], sessions["cln_asn"])
        c["srv_asn"] = self.asns(sessions["srv_addr"], sessions["srv_asn"])
        return SessionBatch(c)


if __name__ == "__main__":  # pragma: no cover
    main()
