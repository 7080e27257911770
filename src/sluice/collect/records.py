"""Decoded records as plain dicts with the conformance corpus's key names.

For display (``sluice decode --raw``) and tests; never on the ingest path.
"""

from __future__ import annotations

import numpy as np

from ..flows.schema import addr_text
from .decoder import DecodeResult
from .ie import HIDDEN_KEYS
from .sflow import SflowSamples

_ADDRESS_KEYS = ("src_addr", "dst_addr")


def _value(key: str, column: np.ndarray, row: int) -> object:
    if key in _ADDRESS_KEYS:
        return addr_text(bytes(column[row]))
    return int(column[row])


def wire_records(result: DecodeResult) -> list[dict[str, object]]:
    """Every NetFlow/IPFIX record of a decode result, in wire order."""
    return [rec for _, rec in _keyed_wire_records(result)]


def all_records(result: DecodeResult) -> list[dict[str, object]]:
    """NetFlow/IPFIX records and sFlow flow samples, in the order of their datagrams."""
    keyed = [(seq >> 36, 0, rec) for seq, rec in _keyed_wire_records(result)]
    if result.sflow_samples is not None:
        datagram = result.sflow_samples.columns["datagram"].tolist()
        keyed += [(d, 1, rec) for d, rec in zip(datagram, sflow_records(result.sflow_samples), strict=True)]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [rec for _, _, rec in keyed]


def _keyed_wire_records(result: DecodeResult) -> list[tuple[int, dict[str, object]]]:
    out = []
    for seq, group, i in result.wire_records():
        rec: dict[str, object] = {"kind": group.kind, "version": group.version}
        if group.version != 5:
            rec["source_id"] = int(group.meta["source_id"][i])
            rec["template_id"] = group.template_id
        for key, col in group.columns.items():
            if key not in HIDDEN_KEYS:
                rec[key] = _value(key, col, i)
        if group.reverse:
            rec["reverse"] = {k: _value(k, c, i) for k, c in group.reverse.items() if k not in HIDDEN_KEYS}
        out.append((seq, rec))
    return out


def sflow_records(samples: SflowSamples | None) -> list[dict[str, object]]:
    """One dict per sFlow flow sample, values as carried (no scaling)."""
    if samples is None:
        return []
    c = samples.columns
    out = []
    for i in range(len(samples)):
        out.append(
            {
                "kind": "sflow_flow_sample",
                "version": 5,
                "agent": addr_text(bytes(c["agent"][i])),
                "sub_agent": int(c["sub_agent"][i]),
                "source_id": int(c["source_id"][i]),
                "sampling_rate": int(c["sampling_rate"][i]),
                "input_if": int(c["input_if"][i]),
                "output_if": int(c["output_if"][i]),
                "frame_length": int(c["frame_length"][i]),
                "src_addr": addr_text(bytes(c["src_addr"][i])),
                "dst_addr": addr_text(bytes(c["dst_addr"][i])),
                "src_port": int(c["src_port"][i]),
                "dst_port": int(c["dst_port"][i]),
                "protocol": int(c["protocol"][i]),
                "tcp_flags": int(c["tcp_flags"][i]),
            }
        )
    return out
