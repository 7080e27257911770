"""The filter language: parsing, errors, and the same selection three ways - compiled SQL in
DuckDB, the numpy evaluator, and a plain row-by-row Python reference written here."""

import ipaddress
import re

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.flows.schema import SessionBatch, addr_bytes
from sluice.query.evaluate import evaluate
from sluice.query.filter import FIELDS, MAX_COMPARISONS, MAX_DEPTH, FilterError, parse, to_text
from sluice.query.sql import compile_filter

# -- parsing and errors ----------------------------------------------------------------------


@pytest.mark.parametrize("text, canonical", [
    ("SRVPORT == 80", "SRVPORT == 80"),
    ("srvport==80&&proto==tcp", "SRVPORT == 80 && PROTO == tcp"),
    ("ADDR == 10.0.0.0/8 || CLNIP != 2001:db8::/32", "ADDR == 10.0.0.0/8 || CLNIP != 2001:db8::/32"),
    ("!(PORT == 22 ^| PORT == 23)", "!(PORT == 22 ^| PORT == 23)"),
    ("a", None),
])
def test_parse_and_canonical_text(text, canonical):
    if canonical is None:
        with pytest.raises(FilterError):
            parse(text)
        return
    node = parse(text)
    assert to_text(node) == canonical
    assert parse(to_text(node)) == node


def test_precedence_not_and_xor_or():
    # ! binds tightest, then &&, then ^|, then ||
    node = parse("PORT == 1 || PORT == 2 ^| PORT == 3 && !PORT == 4")
    assert to_text(node) == "PORT == 1 || PORT == 2 ^| PORT == 3 && !PORT == 4"
    assert type(node).__name__ == "Or" and type(node.operands[1]).__name__ == "Xor"
    assert type(node.operands[1].operands[1]).__name__ == "And"
    assert type(node.operands[1].operands[1].operands[1]).__name__ == "Not"


@pytest.mark.parametrize("text, position, message", [
    ("", 1, "the filter is empty"),
    ("SRVPORT 80", 9, "expected a comparison operator (== != >= <= > <) after SRVPORT, found '80'"),
    ("SRVPORT == ", 12, "expected a value for SRVPORT (a port number 0-65535), found the end of the filter"),
    ("SRVPORT == 70000", 12, "'70000' is not a port number 0-65535 for SRVPORT"),
    ("PORTS == 80", 1, "unknown field 'PORTS'; fields are SRVIP, CLNIP, ADDR"),
    ("ADDR > 10.0.0.1", 6, "ADDR compares only with == or != (an address has no order)"),
    ("ADDR == 10.0.0.300", 9, "'10.0.0.300' is not an IPv4 or IPv6 address"),
    ("ADDR == 10.0.0.1/8", 9, "host bits set; did you mean 10.0.0.0/8?"),
    ("(PORT == 80", 12, "expected ')' to close the '(' at position 1, found the end of the filter"),
    ("PORT == 80 PORT == 81", 12, "expected &&, || or ^| between comparisons"),
    ("PORT == 80 && ", 15, "expected a field name"),
    ("COUNTRY == USA", 12, "'USA' is not a two-letter country code"),
    ("PROTO == bogus", 10, "'bogus' is not a protocol name"),
    ("PORT == 80 ; DROP TABLE sessions", 12, "unexpected character ';'"),
    ('COUNTRY == "US\' OR 1=1 --"', 12, "is not a two-letter country code"),
])
def test_errors_say_where_and_what_was_expected(text, position, message):
    with pytest.raises(FilterError) as err:
        parse(text)
    assert err.value.position + 1 == position
    assert message in str(err.value)
    assert err.value.pointer().splitlines()[1].index("^") == position - 1


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SRVPOTADCLNIXBY=!<>&|^()' \"0123456789./:abcdef")), max_size=60))
def test_any_text_parses_or_raises_filter_error(text):
    try:
        node = parse(text)
    except FilterError:
        return
    assert parse(to_text(node)) == node


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(FilterError):
        parse("(" * 5000 + "PORT == 1" + ")" * 5000)
    with pytest.raises(FilterError):
        parse("!" * 20000 + "PORT == 1")


# -- random sessions and filters ----------------------------------------------------------

ADDRESSES = ["10.0.0.1", "10.0.0.200", "10.1.2.3", "192.168.1.1", "8.8.8.8", "2001:db8::1", "2001:db8:1::5",
             "::1", "0.0.0.0", "255.255.255.255"]
PREFIXES = ADDRESSES + ["10.0.0.0/8", "10.0.0.0/24", "0.0.0.0/0", "2001:db8::/32", "::/0", "192.168.0.0/16",
                        "10.0.0.128/25", "::ffff:10.0.0.0/104"]
PORTS = [0, 22, 53, 80, 443, 1024, 8080, 65535]
PROTOS = [1, 6, 17, 58, 132]
COUNTS = [0, 1, 99, 100, 101, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
COUNTRIES = ["US", "DE", "XP", "ZZ"]
ASNS = [0, 15169, 64500, 2**32 - 1]


@st.composite
def sessions(draw, n=40):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def pick(pool, dtype):
        return np.array([pool[i] for i in rng.integers(0, len(pool), n)], dtype)

    def addrs():
        return np.array([list(addr_bytes(ADDRESSES[i])) for i in rng.integers(0, len(ADDRESSES), n)], np.uint8)

    return SessionBatch.build(
        n, session_id=np.arange(n), cln_addr=addrs(), srv_addr=addrs(), exporter_addr=addrs(),
        cln_port=pick(PORTS, np.uint16), srv_port=pick(PORTS, np.uint16), protocol=pick(PROTOS, np.uint8),
        cln_bytes=pick(COUNTS, np.uint64), srv_bytes=pick(COUNTS, np.uint64),
        cln_pkts=pick(COUNTS, np.uint64), srv_pkts=pick(COUNTS, np.uint64),
        cln_country=pick([c.encode() for c in COUNTRIES], "S2"), srv_country=pick([c.encode() for c in COUNTRIES], "S2"),
        cln_asn=pick(ASNS, np.uint32), srv_asn=pick(ASNS, np.uint32),
    )


def _value_for(field):
    kind = FIELDS[field].kind.value
    return {
        "address": st.sampled_from(PREFIXES),
        "port": st.sampled_from(PORTS + [1, 65534]),
        "protocol": st.sampled_from(["tcp", "udp", "icmp", "58", "132", "0", "255"]),
        "count": st.sampled_from([c for c in COUNTS if c < 2**63] + [2, 98, 2**32 + 1]),
        "country": st.sampled_from(COUNTRIES + ["FR"]),
        "asn": st.sampled_from(["0", "AS15169", "64500", "4294967295", "1"]),
    }[kind]


@st.composite
def comparison_text(draw):
    field = draw(st.sampled_from(sorted(FIELDS)))
    ops = ["==", "!="] if FIELDS[field].kind.value in ("address", "country") else ["==", "!=", ">=", "<=", ">", "<"]
    return f"{field} {draw(st.sampled_from(ops))} {draw(_value_for(field))}"


filters = st.recursive(
    comparison_text(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["&&", "||", "^|"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        inner.map(lambda t: f"!({t})"),
    ),
    max_leaves=8,
)


# -- an independent reference: one session at a time, plain Python -------------------------

#: what each field means, written from docs/filters.md (not the parser's table): (side, columns)
REFERENCE_FIELDS = {
    "SRVIP": ("one", ("srv_addr",)), "CLNIP": ("one", ("cln_addr",)), "ADDR": ("either", ("cln_addr", "srv_addr")),
    "EXPORTER": ("one", ("exporter_addr",)),
    "SRVPORT": ("one", ("srv_port",)), "CLNPORT": ("one", ("cln_port",)), "PORT": ("either", ("cln_port", "srv_port")),
    "PROTO": ("one", ("protocol",)),
    "CLNPKTS": ("one", ("cln_pkts",)), "SRVPKTS": ("one", ("srv_pkts",)),
    "PACKETS": ("either", ("cln_pkts", "srv_pkts")), "TOTPKTS": ("total", ("cln_pkts", "srv_pkts")),
    "CLNBYTS": ("one", ("cln_bytes",)), "SRVBYTS": ("one", ("srv_bytes",)),
    "BYTES": ("either", ("cln_bytes", "srv_bytes")), "TOTBYTS": ("total", ("cln_bytes", "srv_bytes")),
    "COUNTRY": ("either", ("cln_country", "srv_country")), "ASN": ("either", ("cln_asn", "srv_asn")),
}


def test_the_reference_knows_every_field():
    assert set(REFERENCE_FIELDS) == set(FIELDS)


def _reference(text: str, row: dict) -> bool:
    """Evaluate by rewriting the canonical filter into a Python expression over one row."""
    node = parse(text)
    return _ref(node, row)


def _ref(node, row) -> bool:
    name = type(node).__name__
    if name == "Not":
        return not _ref(node.operand, row)
    if name in ("And", "Or", "Xor"):
        values = [_ref(operand, row) for operand in node.operands]
        return {"And": all(values), "Or": any(values), "Xor": sum(values) % 2 == 1}[name]
    op, value = node.op, node.value
    side, columns = REFERENCE_FIELDS[node.field.name]
    ops = {"==": lambda x, y: x == y, "!=": lambda x, y: x != y, ">=": lambda x, y: x >= y,
           "<=": lambda x, y: x <= y, ">": lambda x, y: x > y, "<": lambda x, y: x < y}
    if side == "total":
        return ops[op](row[columns[0]] + row[columns[1]], value)  # Python ints: exact
    if hasattr(value, "low"):
        net = ipaddress.ip_network(value.text, strict=False)

        def test(col):
            addr = ipaddress.ip_address(bytes(row[col]))
            if addr.ipv4_mapped is not None and net.version == 4:
                addr = addr.ipv4_mapped
            return addr.version == net.version and addr in net
    else:
        def test(col):
            return ops["==" if op == "!=" else op](row[col], value)
    hit = any(test(col) for col in columns)
    return not hit if op == "!=" else hit


def _rows(batch: SessionBatch) -> list[dict]:
    rows = []
    for i in range(len(batch)):
        row = {}
        for name, col in batch.columns.items():
            v = col[i]
            row[name] = v.decode() if isinstance(v, bytes) else (bytes(v) if col.ndim == 2 else int(v))
        rows.append(row)
    return rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=sessions(), text=filters)
def test_sql_numpy_and_reference_select_the_same_sessions(batch, text):
    node = parse(text)
    assert parse(to_text(node)) == node
    mask = evaluate(node, batch)
    rows = _rows(batch)
    want = {r["session_id"] for r in rows if _reference(text, r)}
    assert set(batch["session_id"][mask].tolist()) == want
    sql, params = compile_filter(node)
    # values never reach SQL as text: no digits, quotes or value words in the statement
    assert re.search(r"[0-9'\"]", sql) is None, sql
    assert set(re.findall(r"[A-Za-z_]+", sql)) <= {
        "NOT", "AND", "OR", "BETWEEN", "CAST", "AS", "HUGEINT", "list_reduce", "lambda", "a", "b",  # ^| as a fold
        *(c for f in FIELDS.values() for c in f.columns)}
    con = duckdb.connect()
    con.register("sessions", batch.to_arrow())
    got = {r[0] for r in con.execute(f"SELECT session_id FROM sessions WHERE {sql}", params).fetchall()}
    assert got == want


def test_hostile_values_are_rejected_or_parameterised():
    for text in ['COUNTRY == "US; DROP TABLE x"', "EXPORTER == '1.2.3.4' OR 1=1", "PORT == 80--", "ASN == AS1;"]:
        with pytest.raises(FilterError):
            parse(text)
    sql, params = compile_filter(parse('COUNTRY == "us"'))
    assert params == ["US", "US"] and "US" not in sql


# -- bounds: a filter is user input that every evaluation runs ------------------------------

def test_a_filter_of_too_many_comparisons_is_refused_with_the_limit():
    # the hardening review's prefilter: 1,110 terms, which then broke every alert evaluation
    text = "&&".join(["PORT>=0"] * 1110)
    assert len(text) < 10_000
    with pytest.raises(FilterError) as info:
        parse(text)
    assert f"more than {MAX_COMPARISONS} comparisons" in info.value.message
    assert info.value.position == len("&&".join(["PORT>=0"] * MAX_COMPARISONS)) + len("&&")


@pytest.mark.parametrize("symbol", ["&&", "||", "^|"])
def test_the_longest_allowed_filter_works_everywhere(symbol):
    """MAX_COMPARISONS terms: text, equality, numpy and SQL all work (no recursion on length)."""
    port_op = "!=" if symbol == "&&" else "=="
    terms = [f"SRVPORT {port_op} {p}" for p in range(MAX_COMPARISONS - 3)] + ["CLNPORT == 2", "CLNPORT > 1", "PROTO == tcp"]
    text = f" {symbol} ".join(terms)
    node = parse(text)
    assert parse(to_text(node)) == node and hash(node) == hash(parse(text))
    rng = np.random.default_rng(11)
    n = 300
    batch = SessionBatch.build(n, session_id=np.arange(n, dtype=np.uint64), srv_port=rng.integers(0, 1000, n),
                               cln_port=rng.integers(0, 3, n), protocol=rng.choice([6, 17], n))
    rows = _rows(batch)
    want = {r["session_id"] for r in rows if _reference(text, r)}
    assert 0 < len(want) < n, "the filter selects some rows and not others"
    assert set(batch["session_id"][evaluate(node, batch)].tolist()) == want
    sql, params = compile_filter(node)
    con = duckdb.connect()
    con.register("sessions", batch.to_arrow())
    assert {r[0] for r in con.execute(f"SELECT session_id FROM sessions WHERE {sql}", params).fetchall()} == want


def test_nesting_is_bounded():
    for opener in ("(", "!"):
        closer = ")" if opener == "(" else ""
        ok = opener * MAX_DEPTH + "PORT == 1" + closer * MAX_DEPTH
        parse(ok)
        with pytest.raises(FilterError) as info:
            parse(opener * (MAX_DEPTH + 1) + "PORT == 1" + closer * (MAX_DEPTH + 1))
        assert f"more than {MAX_DEPTH} levels" in info.value.message and info.value.position == MAX_DEPTH
    with pytest.raises(FilterError, match="longer than 10,000 characters"):
        parse("PORT == 1 " + " " * 10_000)


@pytest.fixture(scope="module")
def clickhouse_store(clickhouse):
    """A store in the test run's two-shard ClickHouse cluster, for the filter examples."""
    import os

    from sluice.store.clickhouse_store import ClickHouseStore

    from ..support.clickhouse import CLUSTER

    store = ClickHouseStore(clickhouse.addresses, CLUSTER, database=f"filters{os.getpid()}")
    yield store
    store.close()


_slots = iter(range(1, 10**6))


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(batch=sessions(), text=filters)
def test_clickhouse_sql_selects_the_same_sessions(clickhouse_store, batch, text):
    """The filter in ClickHouse's dialect (no 128-bit integers: sums of two counters compared
    without overflow; ^| as a count of true operands) selects what the reference does, through
    the store and the cluster's Distributed table. Each example has a second of its own."""
    from sluice.store.base import TimeRange

    start = 1_700_000_000_000 + next(_slots) * 1000
    batch = SessionBatch({**batch.columns, "start_ms": np.full(len(batch), start, np.int64),
                          "end_ms": np.full(len(batch), start, np.int64)})
    clickhouse_store.append(batch)
    clickhouse_store.flush()
    want = {r["session_id"] for r in _rows(batch) if _reference(text, r)}
    got = clickhouse_store.sessions(TimeRange(start, start + 1), parse(text), limit=10**6)
    assert set(got.column("session_id").to_pylist()) == want, text
