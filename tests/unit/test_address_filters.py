"""Address filters over mixed IPv4/IPv6 data covering the whole 128-bit range: the DuckDB
store (sessions, reports, time series) and the in-memory evaluator agree with a reference
written with ``ipaddress`` alone.

Found by the hardening review: once a frame held an address from 8000:: up (the simulator's
fd00:: hosts), every IPv4 filter answered 500 (DuckDB compared the UHUGEINT column as INT128).
"""

import ipaddress

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.flows.schema import SessionBatch
from sluice.query.evaluate import evaluate
from sluice.query.filter import parse
from sluice.query.reports import Direction, Entity, Metric, ReportSpec, SeriesSpec
from sluice.store.base import TimeRange
from sluice.store.duckdb_store import DuckDBStore

T0 = 1_700_000_000_000
# the edges of the address space and of its halves, IPv4-mapped edges, and the simulator's hosts
EDGES = ["::", "::1", "::ffff:0.0.0.0", "0.0.0.0", "10.0.0.0", "10.255.255.255", "10.1.0.5", "255.255.255.255",
         "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "8000::", "8000::1", "fd00::1", "fd00:5::77", "fe80::1",
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db8::1"]


def _random_addresses(rng: np.random.Generator, n: int) -> list[ipaddress._BaseAddress]:
    out: list[ipaddress._BaseAddress] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(ipaddress.ip_address(EDGES[int(rng.integers(len(EDGES)))]))
        elif kind == 1:
            out.append(ipaddress.IPv4Address(int(rng.integers(0, 2**32))))
        else:  # anywhere in the 128-bit space, upper half included
            out.append(ipaddress.IPv6Address(int.from_bytes(rng.bytes(16), "big")))
    return out


def _packed16(ip: ipaddress._BaseAddress) -> bytes:
    return (b"\x00" * 10 + b"\xff\xff" + ip.packed) if ip.version == 4 else ip.packed


def _column(ips: list) -> np.ndarray:
    return np.frombuffer(b"".join(_packed16(ip) for ip in ips), np.uint8).reshape(-1, 16)


N = 400
_rng = np.random.default_rng(20261202)
CLN = _random_addresses(_rng, N)
SRV = _random_addresses(_rng, N)
EXP = _random_addresses(_rng, N)
BATCH = SessionBatch.build(
    N, session_id=np.arange(N, dtype=np.uint64), start_ms=T0 + np.arange(N) * 1000, end_ms=T0 + np.arange(N) * 1000 + 500,
    exporter_addr=_column(EXP), cln_addr=_column(CLN), srv_addr=_column(SRV), protocol=6,
    cln_port=40000, srv_port=443, cln_bytes=np.arange(1, N + 1, dtype=np.uint64), srv_bytes=7, cln_pkts=1, srv_pkts=1,
    cln_country=b"ZZ", srv_country=b"ZZ", sampling_rate=1)
FRAME = (T0, T0 + N * 1000 + 1000)


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def store(request, tmp_path_factory):
    """The data in either store backend (ClickHouse: the test run's two-shard cluster)."""
    if request.param == "duckdb":
        s = DuckDBStore(tmp_path_factory.mktemp("addr") / "sessions.duckdb")
    else:
        import os

        from sluice.store.clickhouse_store import ClickHouseStore

        from ..support.clickhouse import CLUSTER

        s = ClickHouseStore(request.getfixturevalue("clickhouse").addresses, CLUSTER, database=f"addr{os.getpid()}")
    s.append(BATCH)
    s.flush()
    yield s
    s.close()


def _contains(net: ipaddress._BaseNetwork, ip: ipaddress._BaseAddress) -> bool:
    if ip.version == 6 and ip.ipv4_mapped is not None:  # one representation: ::ffff:a.b.c.d is a.b.c.d
        ip = ip.ipv4_mapped
    if net.version == 4:
        return ip.version == 4 and ip in net
    if ip.version == 4:
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed) in net
    return ip in net


@st.composite
def address_filters(draw):
    """A filter on one address field: an address or prefix anywhere, often one of the data's."""
    if draw(st.booleans()):
        ip = draw(st.sampled_from(CLN + SRV + EXP))
    elif draw(st.booleans()):
        ip = ipaddress.IPv4Address(draw(st.integers(0, 2**32 - 1)))
    else:
        ip = ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))
    bits = 32 if ip.version == 4 else 128
    prefix = draw(st.sampled_from([0, 1, 8, bits // 2, bits - 1, bits, draw(st.integers(0, bits))]))
    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    field = draw(st.sampled_from(["CLNIP", "SRVIP", "ADDR", "EXPORTER"]))
    op = draw(st.sampled_from(["==", "!="]))
    text = f"{field} {op} {net.network_address if prefix == bits else net}"
    return text, field, op, net


def _expected(field: str, op: str, net) -> list[int]:
    rows = []
    for i in range(N):
        if field == "CLNIP":
            hit = _contains(net, CLN[i])
        elif field == "SRVIP":
            hit = _contains(net, SRV[i])
        elif field == "EXPORTER":
            hit = _contains(net, EXP[i])
        else:
            hit = _contains(net, CLN[i]) or _contains(net, SRV[i])
        if hit != (op == "!="):
            rows.append(i)
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address_filters())
def test_address_filters_over_the_whole_range_agree_with_a_reference(store, case):
    text, field, op, net = case
    want = _expected(field, op, net)
    where = parse(text)
    got = store.sessions(TimeRange(*FRAME), where, limit=10 * N)
    assert sorted(got.column("session_id").to_pylist()) == want, text
    assert np.flatnonzero(evaluate(where, BATCH)).tolist() == want, text
    series = store.timeseries(SeriesSpec(Metric.BYTES, *FRAME, where=where))
    assert sum(series.column("value").to_pylist()) == sum(i + 1 + 7 for i in want), text
    report = store.report(ReportSpec(Entity.PORT, Metric.SESSIONS, Direction.EITHER, *FRAME, where=where))
    assert sum(report.column("value").to_pylist()) == len(want), text


@pytest.mark.parametrize("text", ["CLNIP == 10.0.0.0/8", "ADDR == 10.1.0.5", "SRVIP != 0.0.0.0/0", "ADDR == fd00::/8"])
def test_ipv4_filters_answer_over_the_upper_half_of_the_ipv6_space(store, text):
    """The review's exact queries, on data that holds fd00:: and ffff:: addresses."""
    assert any(ip.version == 6 and int(ip) >= 2**127 for ip in CLN + SRV)
    where = parse(text)
    net = ipaddress.ip_network(text.split()[-1])
    want = _expected(text.split()[0], text.split()[1], net)
    assert want, "the reference finds rows: the check is not vacuous"
    got = store.sessions(TimeRange(*FRAME), where, limit=10 * N)
    assert sorted(got.column("session_id").to_pylist()) == want
    for entity in (Entity.HOST, Entity.HOST_PAIR, Entity.EXPORTER):
        store.report(ReportSpec(entity, Metric.BYTES, Direction.EITHER, *FRAME, where=where))
