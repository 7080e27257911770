"""Records as carried on the wire -> canonical flows (DESIGN.md §3), vectorised.

- Addresses become 16-byte; ports, protocol, flags, interfaces and AS numbers are copied.
- Counters: ``bytes`` (IE 1) else ``bytes_total`` (IE 85) else ``initiator_bytes`` (IE 231)
  else ``out_bytes`` (IE 23); likewise for packets.
- Biflow records (RFC 5103 reverse elements, or NSEL responder counters) become two flows,
  the second with addresses and ports swapped, so the session stage sees both directions.
- ICMP type and code go into the destination port (type * 256 + code), the NetFlow v5
  convention, when a record carries them in their own elements (IE 32/139, 176-179).
- Times become absolute Unix milliseconds: NetFlow uptime-relative times against the header
  (32-bit wrap-around safe), IPFIX uptime-relative times against systemInitTimeMilliseconds
  from options data, absolute IPFIX times as they are; no time at all -> the export time.
- Counts are multiplied by the sampling rate: the record's own samplingInterval, else the
  rate its sampler id announced in options data, else the exporter's announced rate, else the
  v5 header's, else the configured per-exporter default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..flows.schema import IPFIX, NETFLOW5, NETFLOW9, FlowBatch
from .templates import RawRecords

_PROTO = {5: NETFLOW5, 9: NETFLOW9, 10: IPFIX}
_BYTES_KEYS = ("bytes", "bytes_total", "initiator_bytes", "out_bytes")
_PACKETS_KEYS = ("packets", "packets_total", "initiator_packets", "out_packets")


@dataclass
class ExporterState:
    """What an exporter (address + source id / domain) told us in options data."""

    default_sampling: int = 1
    sampling: dict[int | None, int] = field(default_factory=dict)  # sampler id (None: all) -> rate
    system_init_ms: int | None = None


StateLookup = Callable[[bytes, int], ExporterState]


def _first(columns: dict[str, np.ndarray], keys: tuple[str, ...], n: int) -> np.ndarray:
    for key in keys:
        if key in columns:
            return columns[key]
    return np.zeros(n, np.uint64)


def _signed32(x: np.ndarray) -> np.ndarray:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _times(group: RawRecords, state: StateLookup) -> tuple[np.ndarray, np.ndarray]:
    c, meta = group.columns, group.meta
    export_ms = meta["export_ms"]
    n = len(group)
    start = end = None
    if "flow_start_ms" in c:
        start = c["flow_start_ms"].astype(np.int64)
    if "flow_end_ms" in c:
        end = c["flow_end_ms"].astype(np.int64)
    if start is None or end is None:
        if group.version in (5, 9):
            if start is None and "first_switched_ms" in c:
                start = export_ms + _signed32(c["first_switched_ms"].astype(np.int64) - meta["sys_uptime_ms"])
            if end is None and "last_switched_ms" in c:
                end = export_ms + _signed32(c["last_switched_ms"].astype(np.int64) - meta["sys_uptime_ms"])
        elif "first_switched_ms" in c or "last_switched_ms" in c:
            init = _system_init(group, state)
            known = init >= 0
            if start is None and "first_switched_ms" in c:
                start = np.where(known, init + c["first_switched_ms"].astype(np.int64), export_ms)
            if end is None and "last_switched_ms" in c:
                end = np.where(known, init + c["last_switched_ms"].astype(np.int64), export_ms)
    if start is None and end is None:
        start = end = export_ms.copy()
    elif start is None:
        start = end
    elif end is None:
        end = start
    assert start is not None and end is not None and len(start) == n
    return start, end


def _piece_states(group: RawRecords, state: StateLookup) -> tuple[list[ExporterState], np.ndarray]:
    """The exporter state of every piece: distinct states, and each piece's index into them."""
    keys = group.piece_keys
    return [state(*key) for key in keys.distinct], keys.index


def _system_init(group: RawRecords, state: StateLookup) -> np.ndarray:
    """systemInitTimeMilliseconds of each record's exporter, -1 where unknown."""
    states, which = _piece_states(group, state)
    init = np.array([-1 if s.system_init_ms is None else s.system_init_ms for s in states], np.int64)
    return init[which][group.meta["piece"]]


def _sampling(group: RawRecords, state: StateLookup) -> np.ndarray:
    c, meta = group.columns, group.meta
    n = len(group)
    rate = np.zeros(n, np.int64)
    if "sampling_interval" in c:
        rate = c["sampling_interval"].astype(np.int64)
    if "v5_sampling" in meta:
        rate = np.where(rate > 0, rate, meta["v5_sampling"])
    need = rate <= 0
    if not need.any():
        return rate
    states, which = _piece_states(group, state)
    record_state = which[meta["piece"]]
    sampler = c.get("sampler_id", c.get("selector_id"))
    if sampler is None:  # one rate per exporter (domain)
        per_state = np.array([s.sampling.get(None, s.default_sampling) for s in states], np.int64)
        rate[need] = per_state[record_state[need]]
    else:  # one rate per (exporter, sampler id): few distinct pairs
        key = (record_state[need] << 32) | (sampler[need].astype(np.int64) & 0xFFFFFFFF)
        uniq, inverse = np.unique(key, return_inverse=True)
        looked = np.empty(len(uniq), np.int64)
        for j, k in enumerate(uniq.tolist()):
            s = states[k >> 32]
            looked[j] = s.sampling.get(k & 0xFFFFFFFF, s.sampling.get(None, s.default_sampling))
        rate[need] = looked[inverse.reshape(-1)]
    return np.clip(rate, 1, 0xFFFFFFFF)


def _icmp_in_port(c: dict[str, np.ndarray], n: int) -> np.ndarray:
    port = c.get("dst_port", np.zeros(n, np.uint64)).astype(np.uint64)
    if "icmp_type_code" in c:
        code = c["icmp_type_code"]
    elif "icmp_type" in c:
        code = (c["icmp_type"] << np.uint64(8)) | c.get("icmp_code", np.zeros(n, np.uint64))
    else:
        return port
    icmp = np.isin(c.get("protocol", np.zeros(n, np.uint64)), (1, 58)) & (port == 0)
    return np.where(icmp, code, port).astype(np.uint64)


def to_flows(group: RawRecords, state: StateLookup) -> tuple[FlowBatch, np.ndarray]:
    """Canonical flows of one group of flow records (v5, or one v9/IPFIX template), and the
    index of the datagram each flow came from."""
    c = group.columns
    n = len(group)
    start, end = _times(group, state)
    rate = _sampling(group, state)
    src = c.get("src_addr", np.zeros((n, 16), np.uint8))
    dst = c.get("dst_addr", np.zeros((n, 16), np.uint8))
    common = dict(
        time_start_ms=start,
        time_end_ms=end,
        export_proto=_PROTO[group.version],
        exporter_addr=group.meta["exporter"],
        source_id=group.meta["source_id"],
        protocol=c.get("protocol", 0),
        tcp_flags=c.get("tcp_flags", 0),
        sampling_rate=rate,
    )
    dst_port = _icmp_in_port(c, n)
    bytes_ = _first(c, _BYTES_KEYS, n).astype(np.uint64)
    packets = _first(c, _PACKETS_KEYS, n).astype(np.uint64)
    urate = rate.astype(np.uint64)
    forward = FlowBatch.build(
        n,
        src_addr=src,
        dst_addr=dst,
        src_port=c.get("src_port", 0),
        dst_port=dst_port,
        input_if=c.get("input_snmp", 0),
        output_if=c.get("output_snmp", 0),
        src_as=c.get("src_as", 0),
        dst_as=c.get("dst_as", 0),
        bytes=bytes_ * urate,
        packets=packets * urate,
        **common,  # type: ignore[arg-type]
    )
    rev_bytes: np.ndarray | None = None
    rev_packets: np.ndarray | None = None
    if group.reverse:
        rev_bytes = _first(group.reverse, _BYTES_KEYS, n)
        rev_packets = _first(group.reverse, _PACKETS_KEYS, n)
    elif "responder_bytes" in c or "responder_packets" in c:
        rev_bytes = c.get("responder_bytes", np.zeros(n, np.uint64))
        rev_packets = c.get("responder_packets", np.zeros(n, np.uint64))
    datagram = group.datagram
    if rev_bytes is None or rev_packets is None:
        return forward, datagram
    has = (rev_bytes > 0) | (rev_packets > 0)
    if not has.any():
        return forward, datagram
    sel = np.flatnonzero(has)
    mirrored = FlowBatch.build(
        len(sel),
        src_addr=dst[sel],
        dst_addr=src[sel],
        src_port=dst_port[sel],
        dst_port=np.asarray(c.get("src_port", np.zeros(n, np.uint64)))[sel],
        input_if=np.asarray(c.get("output_snmp", np.zeros(n, np.uint64)))[sel],
        output_if=np.asarray(c.get("input_snmp", np.zeros(n, np.uint64)))[sel],
        src_as=np.asarray(c.get("dst_as", np.zeros(n, np.uint64)))[sel],
        dst_as=np.asarray(c.get("src_as", np.zeros(n, np.uint64)))[sel],
        bytes=rev_bytes[sel].astype(np.uint64) * urate[sel],
        packets=rev_packets[sel].astype(np.uint64) * urate[sel],
        **{k: (v[sel] if isinstance(v, np.ndarray) else v) for k, v in common.items()},  # type: ignore[arg-type]
    )
    # tcp flags of the reverse direction are not carried separately; keep the union
    return FlowBatch.concat([forward, mirrored]), np.concatenate([datagram, datagram[sel]])
