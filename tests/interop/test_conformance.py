"""Real vendor datagrams (../shared/conformance/netflow) against Wireshark's decodes."""

import json

import pytest

from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder
from sluice.collect.records import wire_records

from ..support.env import CONFORMANCE
from ..support.corpus import IGNORED_KEYS

CASES = json.loads((CONFORMANCE / "cases.json").read_text())["cases"]

# Where Sluice deliberately differs from tshark's golden values, and why.
# nf5_invalid01/02: header counts 55582 and 163, but a v5 PDU holds at most 30 records and
#   the bytes after the header are not records (tshark shows garbage such as 3 GB in one
#   packet). Sluice rejects such datagrams and counts them (decode_errors_total{reason=bad_count}).
REJECTED = {"nf5_invalid01", "nf5_invalid02"}
# Datagrams where tshark stopped early (caveats 3 and 4); Sluice walks the whole datagram.
# Expected record counts from the corpus README's own struct-based recount.
FULL_COUNTS = {("nf9_invalid01", 0): 3, ("nf9_h3c", 1): 16, ("nf9_h3c_varstring", 1): 1}


def compare(got: dict, want: dict, where: str) -> None:
    for key, value in want.items():
        if key in IGNORED_KEYS:
            continue
        if key == "reverse":
            compare(got.get("reverse", {}), value, where + " reverse")
            continue
        assert got.get(key) == value, f"{where}: {key} = {got.get(key)!r}, expected {value!r}"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_decodes_like_wireshark(case):
    golden = json.loads((CONFORMANCE / case["golden"]).read_text())
    decoder = Decoder()  # fresh template cache per case
    undecoded_expected = 0
    for i, (datagram, name) in enumerate(zip(golden["datagrams"], case["files"])):
        result = decoder.decode([Datagram((CONFORMANCE / name).read_bytes(), "192.0.2.1", 40000, 0.0)])
        got = wire_records(result)
        where = f"{case['name']}[{i}]"
        undecoded_expected += len(datagram.get("undecoded", []))
        if case["name"] in REJECTED:
            assert got == []
            assert decoder.counters.get("decode_errors_total", reason="bad_count") == 1
            continue
        if (case["name"], i) in FULL_COUNTS:
            assert len(got) == FULL_COUNTS[(case["name"], i)], where
        elif datagram["tshark_complete"]:
            assert len(got) == datagram["record_count"], where
        for n, (g, w) in enumerate(zip(got, datagram["records"])):
            if w.get("tshark_expert") and any(e["severity"] == "Error" for e in w["tshark_expert"]):
                # tshark abandoned this record part-way: compare only what it did show
                pass
            compare(g, w, f"{where} record {n}")
    # data sets without a template are held back and reported, not lost silently
    assert decoder.counters.get("template_misses_total") == undecoded_expected
    assert len(decoder.pending) == undecoded_expected
