"""The conformance corpus (shared/conformance/netflow): cases, golden decodes, what to compare."""

import json

from .env import CONFORMANCE

#: keys of the golden decodes that are tshark's presentation, not the record
IGNORED_KEYS = {"extra", "frame", "notes", "tshark_expert"}


def golden_case(name: str) -> tuple[list[bytes], list[dict]]:
    case = next(c for c in json.loads((CONFORMANCE / "cases.json").read_text())["cases"] if c["name"] == name)
    golden = json.loads((CONFORMANCE / case["golden"]).read_text())
    datagrams = [(CONFORMANCE / f).read_bytes() for f in case["files"]]
    records = [r for d in golden["datagrams"] for r in d["records"]]
    return datagrams, records
