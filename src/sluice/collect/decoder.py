"""The collector's decoder: a batch of datagrams in, a batch of canonical flows out.

Per datagram and per set, plain Python does the bookkeeping (headers, template sets,
sequence numbers, counters); records are decoded per template for the whole batch at once
by numpy (``templates.decode_sets``, ``netflow5.decode``, ``sflow.decode``). Every datagram
that cannot be decoded, in whole or in part, is counted in ``decode_errors_total`` by reason.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import structlog

from ..counters import Counters
from ..flows.schema import FlowBatch, addr_text
from . import batch_scan, ipfix, netflow5, netflow9, sflow
from .datagrams import Datagram, DatagramBatch
from .normalize import ExporterState, to_flows
from .templates import (
    PendingData,
    PieceKeys,
    Pieces,
    RawRecords,
    SetCollector,
    SetMeta,
    Template,
    TemplateCache,
    TemplateKey,
    decode_records,
    decode_sets,
)

log = structlog.get_logger(__name__)

_SET_HEADER = struct.Struct("!HH")
MAX_PLAUSIBLE_MS = 253_402_300_800_000  # year 10000: beyond it a time field is garbage
#: the versions whose batches ``batch_scan`` walks (all of one version), as their first bytes
SCANNED = {b"\x00\x0a": 10, b"\x00\x09": 9}
#: NetFlow v5's first bytes: a batch of only v5 is read at once (``Decoder._v5_batch``)
V5 = b"\x00\x05"


@dataclass
class DecodeResult:
    flows: FlowBatch
    records: list[RawRecords]  # the records as carried on the wire, per template group
    sflow_samples: sflow.SflowSamples | None = None

    @classmethod
    def concat(cls, results: list[DecodeResult]) -> DecodeResult:
        """Results of datagrams decoded one by one, as one (the flows in datagram order)."""
        samples = [r.sflow_samples for r in results if r.sflow_samples is not None]
        return cls(
            FlowBatch.concat([r.flows for r in results]),
            [g for r in results for g in r.records],
            samples[0] if len(samples) == 1 else None,
        )

    def wire_records(self) -> list[tuple[int, RawRecords, int]]:
        """(wire order key, group, row) for every record, sorted as on the wire."""
        keyed = [(int(g.meta["seq"][i]), g, i) for g in self.records for i in range(len(g))]
        keyed.sort(key=lambda t: t[0])
        return keyed


@dataclass
class DecoderConfig:
    #: sampling rate assumed for an exporter (by address text) that reports none
    sampling_defaults: dict[str, int] = field(default_factory=dict)
    default_sampling_rate: int = 1
    pending_max_age_s: float = 60.0
    pending_max_bytes: int = 8 << 20
    max_templates: int = 65536
    #: exporters (address + domain) whose state and sequence numbers are tracked; and distinct
    #: exporter labels in metrics, beyond which they are counted as exporter="other"
    max_exporters: int = 16384


class Decoder:
    """Stateful decoder for all export protocols; one per collector (templates are shared)."""

    def __init__(self, config: DecoderConfig | None = None, counters: Counters | None = None):
        self.config = config or DecoderConfig()
        self.counters = counters or Counters()
        self.templates = TemplateCache(self.counters, self.config.max_templates)
        self.pending = PendingData(self.counters, self.config.pending_max_bytes, self.config.pending_max_age_s)
        self.exporters: dict[tuple[bytes, int], ExporterState] = {}  # (address, domain) -> state
        self._sequences: dict[tuple[bytes, int, int, str], int] = {}
        self._addr_cache: dict[str, bytes] = {}
        self._parsed_sets: dict[tuple[int, int, bytes], list[tuple[str, object]]] = {}
        self._labels_seen: set[str] = set()
        # what the batch being decoded changed, to undo if it fails (see ``decode``)
        self._sequence_undo: dict[tuple[bytes, int, int, str], int | None] = {}
        self._taken: list[tuple[TemplateKey, list[tuple[bytes, SetMeta]], str]] = []
        batch_scan.warm_up()

    # -- public -----------------------------------------------------------------------------

    def decode(self, datagrams: DatagramBatch | Sequence[Datagram]) -> DecodeResult:
        """Decode a batch. A bug that a datagram provokes costs that datagram, not the batch: on
        any unexpected error the batch is undone (sequence numbers, released pending sets) and
        decoded again one datagram at a time; only the datagrams that fail alone are dropped,
        counted as ``decode_errors_total{reason="internal_error"}``."""
        batch = datagrams if isinstance(datagrams, DatagramBatch) else DatagramBatch.of(datagrams)
        try:
            return self._decode_batch(batch)
        except Exception:
            log.exception("decoder failed on a batch; decoding it datagram by datagram", datagrams=len(batch))
            self._undo()
        results = []
        for dg in batch:
            try:
                results.append(self._decode_batch(DatagramBatch.of([dg])))
            except Exception:
                log.exception("decoder failed on a datagram: dropped", exporter=dg.address, bytes=len(dg.payload))
                self._undo()
                self._error("unknown", "internal_error")
        return DecodeResult.concat(results)

    def _undo(self) -> None:
        """Put back what a failed batch changed that a retry would otherwise see twice or miss."""
        for sequence_key, previous in reversed(self._sequence_undo.items()):
            if previous is None:
                self._sequences.pop(sequence_key, None)
            else:
                self._sequences[sequence_key] = previous
        for template_key, taken, proto in self._taken:
            self.pending.restore(template_key, taken, proto)
        self._sequence_undo, self._taken = {}, []

    def _decode_batch(self, datagrams: DatagramBatch) -> DecodeResult:
        self._sequence_undo, self._taken = {}, []
        now = time.time()
        first = datagrams.common_start()
        taken = None  # a batch of one version read at once, or None: the walk takes it
        if first in SCANNED:
            taken = self._scan_batch(datagrams, SCANNED[first])
        elif first == V5:
            taken = self._v5_batch(datagrams)
        if taken is not None:
            return self._finish(datagrams, *taken, now=now)
        v5: list[tuple[bytes, netflow5.V5Header, bytes, int]] = []
        sflow_in: list[tuple[bytes, bytes, int]] = []
        collector = SetCollector()
        labels: dict[tuple[str, str], int] = {}  # (exporter, protocol) -> label id
        label_of = np.full(len(datagrams), -1, np.int64)  # label id of each datagram

        for index, (data, (address, port), _) in enumerate(datagrams.items()):
            addr = self._addr16(address)
            if len(data) < 4:
                self._error("unknown", "truncated_header")
                continue
            version = (data[0] << 8) | data[1]
            if version == 5:
                proto = "netflow5"
                header, reason, trailing = netflow5.check(data)
                if header is None:
                    self._error(proto, reason or "malformed")
                else:
                    v5.append((data, header, addr, index))
                    self._sequence(
                        addr, header.engine_type << 8 | header.engine_id, proto, header.sequence, header.count
                    )
                    if trailing:
                        self.counters.inc("trailing_bytes_total", trailing, proto=proto)
            elif version == 9:
                proto = "netflow9"
                self._walk_v9(data, addr, port, index, collector, now)
            elif version == 10:
                proto = "ipfix"
                self._walk_ipfix(data, addr, port, index, collector, now)
            elif version == 0 and len(data) >= 4 and data[2] == 0 and data[3] == 5:
                proto = "sflow5"
                sflow_in.append((data, addr, index))
            else:
                self._error("unknown", "unknown_version")
                continue
            label_of[index] = labels.setdefault((address, proto), len(labels))

        groups: list[RawRecords] = []
        if v5:
            groups.append(netflow5.decode(v5))
        groups.extend(decode_sets(tpl, payloads, metas) for tpl, payloads, metas in collector.groups.values())
        return self._finish(datagrams, groups, labels, label_of, now=now, sflow_in=sflow_in)

    def _finish(
        self,
        datagrams: DatagramBatch,
        groups: list[RawRecords],
        labels: dict[tuple[str, str], int],
        label_of: np.ndarray,
        *,
        now: float,
        sflow_in: list[tuple[bytes, bytes, int]] | None = None,
    ) -> DecodeResult:
        """The batch's decoded record groups as flows; the batch counted."""
        # options data (sampling rates, system init time) first: the flows of the same batch use it
        for group in groups:
            if group.kind == "options":
                self._learn_options(group)

        self.pending.expire(now)
        self.counters.set("pending_sets", len(self.pending))
        self.counters.set("templates_active", len(self.templates))

        converted = [to_flows(g, self._state_for) for g in groups if g.kind == "flow"]
        samples = None
        if sflow_in:
            received_ms = [int(datagrams.received[i] * 1000) for _, _, i in sflow_in]
            samples = sflow.decode(sflow_in, self.counters, received_ms)
            converted.append((samples.to_flows(), samples.columns["datagram"]))
        flows = FlowBatch.concat([f for f, _ in converted])
        origin = np.concatenate([d for _, d in converted]) if converted else np.zeros(0, np.int64)
        self._count(labels, label_of, origin)
        return DecodeResult(flows, groups, samples)

    # -- IPFIX and NetFlow v9, a batch at once -----------------------------------------------

    def _scan_batch(
        self, datagrams: DatagramBatch, version: int
    ) -> tuple[list[RawRecords], dict[tuple[str, str], int], np.ndarray] | None:
        """A batch of IPFIX (``version`` 10) or NetFlow v9 messages walked by ``batch_scan``
        instead of one by one: (the record groups, the exporters' labels, each message's
        label), the sequence numbers and counters kept as the walk keeps them. None,
        before anything was changed, when the batch needs the walk: a malformed message, a
        reserved set, a template set that is not a refresh of a template held unchanged (or
        that data waits for), or data whose template is not held, is of variable length, or
        is longer than its set."""
        joined = datagrams.data
        found = batch_scan.scan(joined, datagrams.starts, datagrams.lengths, version)
        if found.status.any():
            return None
        # the exporters (address, port), numbered in order of appearance
        exporter, exporters = datagrams.sender, datagrams.senders
        addr16 = [self._addr16(address) for address, _ in exporters]
        domain = found.domain
        wire = ipfix if version == 10 else netflow9
        is_template = (found.set_id == wire.TEMPLATE_SET) | (found.set_id == wire.OPTIONS_SET)
        if ((found.set_id < wire.MIN_DATA_SET) & ~is_template).any():
            return None
        for i in np.flatnonzero(is_template).tolist():
            d = int(found.set_message[i])
            e = int(exporter[d])
            start = int(found.body_start[i])
            body = joined[start : start + int(found.body_len[i])].tobytes()
            for action, value in self._parsed_template_set(version, int(found.set_id[i]), body):
                if action != "template":
                    return None
                assert isinstance(value, Template)
                template_key = (addr16[e], exporters[e][1], int(domain[d]), value.template_id)
                held = self.templates.get(template_key)
                if held is None or not held.same_layout(value) or self.pending.waiting(template_key):
                    return None  # new, changed, or data waits for it (``_learn`` takes it)
        # the data sets, grouped by template in order of appearance (as ``SetCollector`` does)
        data = np.flatnonzero(found.set_id >= wire.MIN_DATA_SET)
        message = found.set_message[data]
        body_len = found.body_len[data]
        key = (exporter[message] << 48) | (domain[message] << 16) | found.set_id[data]
        _, first, which = np.unique(key, return_index=True, return_inverse=True)
        records = np.zeros(len(data), np.int64)
        plans: list[tuple[Template, np.ndarray]] = []
        for g in np.argsort(first).tolist():
            d, e = int(message[first[g]]), int(exporter[message[first[g]]])
            template = self.templates.get(
                (addr16[e], exporters[e][1], int(domain[d]), int(found.set_id[data[first[g]]]))
            )
            members = np.flatnonzero(which == g)
            if template is None or template.record_length is None or body_len[members].min() < template.min_length:
                return None
            records[members] = body_len[members] // template.record_length
            plans.append((template, members))

        # the batch is taken: from here on the decoder's state changes
        proto = "ipfix" if version == 10 else "netflow9"
        trailing = int(found.trailing.sum())
        if trailing:
            self.counters.inc("trailing_bytes_total", trailing, proto=proto)
        # IPFIX numbers data records, NetFlow v9 export packets
        advance = (
            np.bincount(message, weights=records, minlength=len(datagrams)).astype(np.int64)
            if version == 10
            else np.ones(len(datagrams), np.int64)
        )
        self._sequences_of(addr16, exporter, domain, found.sequence, advance, proto)
        labels, label_of_exporter, exporter_addr = self._labelled(exporters, addr16, proto)
        groups = []
        for template, members in plans:
            assert template.record_length is not None
            counts = records[members]
            sets = data[members]
            of_set = found.set_message[sets]
            keys = PieceKeys.of_arrays(exporter[of_set], domain[of_set], addr16)
            export_ms = found.export_s[of_set] * 1000
            address = exporter_addr[exporter[of_set]]
            uptime = found.uptime_ms[of_set]
            pieces = Pieces(of_set, found.ordinal[sets], domain[of_set], export_ms, uptime, address, keys)
            record_bytes = batch_scan.gather_records(joined, found.body_start[sets], counts * template.record_length)
            groups.append(decode_records(template, record_bytes, counts, pieces))
        return groups, labels, label_of_exporter[exporter]

    # -- NetFlow v5, a batch at once ---------------------------------------------------------

    def _v5_batch(
        self, datagrams: DatagramBatch
    ) -> tuple[list[RawRecords], dict[tuple[str, str], int], np.ndarray] | None:
        """A batch of NetFlow v5 datagrams read at once, as ``_scan_batch`` does IPFIX and v9:
        the headers as one array, the sequence numbers per exporter and engine, the records
        gathered by numpy. None, before anything was changed, if a datagram is not sound: the
        walk then takes the batch and counts what is wrong with each."""
        starts, lengths = datagrams.starts, datagrams.lengths
        if int(lengths.min()) < netflow5.HEADER_LEN:
            return None
        headers = netflow5.read_headers(datagrams.data, starts)
        sound, trailing = netflow5.well_formed(headers, lengths)
        if not sound.all():
            return None
        proto = "netflow5"
        extra = int(trailing.sum())
        if extra:
            self.counters.inc("trailing_bytes_total", extra, proto=proto)
        exporter, exporters = datagrams.sender, datagrams.senders
        addr16 = [self._addr16(address) for address, _ in exporters]
        counts = headers["count"].astype(np.int64)
        engine = (headers["engine_type"].astype(np.int64) << 8) | headers["engine_id"]
        self._sequences_of(addr16, exporter, engine, headers["sequence"].astype(np.int64), counts, proto)
        labels, label_of_exporter, exporter_addr = self._labelled(exporters, addr16, proto)
        group = netflow5.records_of(
            batch_scan.gather_records(datagrams.data, starts + netflow5.HEADER_LEN, counts * netflow5.RECORD_LEN),
            headers,
            exporter_addr[exporter],
            np.arange(len(datagrams), dtype=np.int64),
            PieceKeys.of_arrays(exporter, np.zeros(len(exporter), np.int64), addr16),
        )
        return [group], labels, label_of_exporter[exporter]

    @staticmethod
    def _labelled(
        exporters: list[tuple[str, int]], addr16: list[bytes], proto: str
    ) -> tuple[dict[tuple[str, str], int], np.ndarray, np.ndarray]:
        """A batch's exporters (``addr16``: their addresses as 16 bytes) as a batch read hands
        them on: the metrics labels (one per address and protocol), each exporter's label, and
        each exporter's address as a row of 16 bytes."""
        labels: dict[tuple[str, str], int] = {}
        label_of = np.array([labels.setdefault((address, proto), len(labels)) for address, _ in exporters])
        return labels, label_of, np.frombuffer(b"".join(addr16), np.uint8).reshape(-1, 16)

    def _sequences_of(
        self,
        addr16: list[bytes],
        exporter: np.ndarray,
        domain: np.ndarray,
        sequence: np.ndarray,
        records: np.ndarray,
        proto: str,
    ) -> None:
        """``_sequence`` for a batch of messages at once (``exporter``: each one's index in
        ``addr16``), in their order within each exporter."""
        # exporters of one address (several ports) share their sequence numbers
        address_of = {a: i for i, a in enumerate(dict.fromkeys(addr16))}
        address = np.array([address_of[a] for a in addr16], np.int64)[exporter]
        keys, first, group = np.unique((address << 32) | domain, return_index=True, return_inverse=True)
        for g in np.argsort(first).tolist():
            addr, dom = addr16[int(exporter[first[g]])], int(domain[first[g]])
            messages = np.flatnonzero(group == g)
            seq, advance = sequence[messages], records[messages]
            key = (addr, dom, 0, proto)
            previous = self._sequences.get(key)
            if key not in self._sequence_undo:
                self._sequence_undo[key] = previous
            expected = np.empty(len(seq), np.int64)
            expected[0] = seq[0] if previous is None else previous
            expected[1:] = (seq[:-1] + advance[:-1]) & 0xFFFFFFFF
            off = seq != expected
            if off.any():
                gap = (seq[off] - expected[off]) & 0xFFFFFFFF
                ahead = gap < 1 << 31
                self._count_off_sequence(addr, proto, int(gap[ahead].sum()), int((~ahead).sum()))
            if previous is None:
                _make_room(self._sequences, self.config.max_exporters)
            self._sequences[key] = int((seq[-1] + advance[-1]) & 0xFFFFFFFF)

    # -- NetFlow v9 -------------------------------------------------------------------------

    def _walk_v9(self, data: bytes, addr: bytes, port: int, index: int, collector: SetCollector, now: float) -> None:
        proto = "netflow9"
        if len(data) < netflow9.HEADER_LEN:
            self._error(proto, "truncated_header")
            return
        _, _, uptime, secs, sequence, source_id = netflow9.HEADER.unpack_from(data)
        self._sequence(addr, source_id, proto, sequence, 1)
        exporter = (addr, port)
        templates_get = self.templates.get
        collector_add = collector.add
        set_header = netflow9.SET_HEADER.unpack_from
        pos, ordinal = netflow9.HEADER_LEN, 0
        while len(data) - pos >= 4:
            set_id, length = set_header(data, pos)
            if length < 4:
                self.counters.inc("trailing_bytes_total", len(data) - pos, proto=proto)
                break  # zero fill after the last flowset
            if pos + length > len(data):
                self._error(proto, "set_length")
                break
            body = data[pos + 4 : pos + length]
            pos += length
            ordinal += 1
            if set_id == netflow9.TEMPLATE_SET or set_id == netflow9.OPTIONS_SET:
                self._template_set(9, set_id, body, exporter, source_id, proto, collector, index)
            elif set_id >= netflow9.MIN_DATA_SET:
                meta = SetMeta(index, ordinal, 9, source_id, secs * 1000, uptime, exporter)
                key = (addr, port, source_id, set_id)
                template = templates_get(key)
                if template is not None and len(body) >= template.min_length:
                    collector_add(key, template, body, meta)
                else:
                    self._data_set(exporter, source_id, set_id, body, meta, proto, collector, now)
            else:
                self._error(proto, "reserved_set_id")

    # -- IPFIX ------------------------------------------------------------------------------

    def _walk_ipfix(self, data: bytes, addr: bytes, port: int, index: int, collector: SetCollector, now: float) -> None:
        proto = "ipfix"
        if len(data) < ipfix.HEADER_LEN:
            self._error(proto, "truncated_header")
            return
        _, length, export_s, sequence, domain = ipfix.HEADER.unpack_from(data)
        if length < ipfix.HEADER_LEN or length > len(data):
            self._error(proto, "message_length")
            return
        if length < len(data):
            self.counters.inc("trailing_bytes_total", len(data) - length, proto=proto)
        exporter = (addr, port)
        templates_get = self.templates.get
        collector_add = collector.add
        set_header = _SET_HEADER.unpack_from
        pos, ordinal = ipfix.HEADER_LEN, 0
        # sequence numbers count data records; a set whose record count is not known until it
        # is decoded (variable length, no template yet) makes the next check a resync instead
        records: int | None = 0
        while length - pos >= 4:
            set_id, set_len = set_header(data, pos)
            if set_len < 4 or pos + set_len > length:
                self._error(proto, "set_length")
                break
            body = data[pos + 4 : pos + set_len]
            pos += set_len
            ordinal += 1
            if set_id >= 256:
                meta = SetMeta(index, ordinal, 10, domain, export_s * 1000, 0, exporter)
                key = (addr, port, domain, set_id)
                template = templates_get(key)
                if template is not None and len(body) >= template.min_length:
                    collector_add(key, template, body, meta)
                    if records is not None:
                        records = (
                            None if template.record_length is None else records + len(body) // template.record_length
                        )
                else:
                    self._data_set(exporter, domain, set_id, body, meta, proto, collector, now)
                    records = None
            elif set_id == 2 or set_id == 3:
                self._template_set(10, set_id, body, exporter, domain, proto, collector, index)
            else:
                self._error(proto, "reserved_set_id")
        self._sequence(addr, domain, proto, sequence, records)

    # -- shared -----------------------------------------------------------------------------

    def _template_set(
        self,
        version: int,
        set_id: int,
        body: bytes,
        exporter: tuple[bytes, int],
        domain: int,
        proto: str,
        collector: SetCollector,
        index: int,
    ) -> None:
        """Apply one template / options template set. Exporters repeat the same sets every few
        datagrams, so parsing results are cached by the set's bytes."""
        for action, value in self._parsed_template_set(version, set_id, body):
            if action == "error":
                self._error(proto, value)  # type: ignore[arg-type]
            elif action == "withdraw_all":
                self.templates.withdraw(exporter, domain, None, proto)
            elif action == "withdraw":
                self.templates.withdraw(exporter, domain, value, proto)  # type: ignore[arg-type]
            else:
                self._learn(exporter, domain, value, proto, collector, index)  # type: ignore[arg-type]

    def _parsed_template_set(self, version: int, set_id: int, body: bytes) -> list[tuple[str, object]]:
        """``_parse_template_set``, cached by the set's bytes."""
        cache_key = (version, set_id, body)
        actions = self._parsed_sets.get(cache_key)
        if actions is None:
            actions = _parse_template_set(version, set_id, body)
            if len(self._parsed_sets) >= 4096:
                self._parsed_sets.pop(next(iter(self._parsed_sets)))
            self._parsed_sets[cache_key] = actions
        return actions

    def _learn(
        self,
        exporter: tuple[bytes, int],
        domain: int,
        template: Template,
        proto: str,
        collector: SetCollector,
        index: int,
    ) -> None:
        key: TemplateKey = (exporter[0], exporter[1], domain, template.template_id)
        self.templates.put(key, template, proto)
        if self.pending.waiting(key):
            taken = self.pending.take(key)
            self._taken.append((key, taken, proto))
            for payload, meta in taken:
                # the set arrived in an earlier batch: its datagram index meant that batch. It is
                # counted with the datagram that brought its template (same exporter).
                collector.add(key, template, payload, replace(meta, datagram=index))

    def _data_set(
        self,
        exporter: tuple[bytes, int],
        domain: int,
        set_id: int,
        body: bytes,
        meta: SetMeta,
        proto: str,
        collector: SetCollector,
        now: float,
    ) -> None:
        key = (*exporter, domain, set_id)
        template = self.templates.get(key)
        if template is None:
            self.pending.add(key, body, meta, proto, now)
            return
        if len(body) < template.min_length:
            if any(body):
                self._error(proto, "short_data_set")
            return
        collector.add(key, template, body, meta)

    def _learn_options(self, group: RawRecords) -> None:
        """Keep sampling rates and system init times that options records announce."""
        rate = _sampling_rate(group.columns)
        init = group.columns.get("system_init_ms")
        sampler = group.columns.get("sampler_id", group.columns.get("selector_id"))
        pieces = group.meta["piece"].tolist()
        for i in range(len(group)):  # options records are few: a handful per template refresh
            state = self._state_for(*group.piece_keys[pieces[i]])
            if rate is not None and rate[i] > 0:
                sid = int(sampler[i]) if sampler is not None else None
                state.sampling[sid] = int(rate[i])
            if init is not None and 0 <= int(init[i]) < MAX_PLAUSIBLE_MS:
                state.system_init_ms = int(init[i])

    def _state_for(self, addr: bytes, domain: int) -> ExporterState:
        state = self.exporters.get((addr, domain))
        if state is None:
            _make_room(self.exporters, self.config.max_exporters)
            text = addr_text(addr)
            default = self.config.sampling_defaults.get(text, self.config.default_sampling_rate)
            state = self.exporters[(addr, domain)] = ExporterState(default_sampling=default)
        return state

    def _sequence(self, addr: bytes, domain: int, proto: str, sequence: int, advance: int | None) -> None:
        """Count exporter-side loss from sequence numbers; ``advance`` None: unknown, resync."""
        key = (addr, domain, 0, proto)
        expected = self._sequences.get(key)
        if key not in self._sequence_undo:
            self._sequence_undo[key] = expected
        if expected is not None and sequence != expected:
            gap = (sequence - expected) & 0xFFFFFFFF
            ahead = gap < 1 << 31
            self._count_off_sequence(addr, proto, gap if ahead else 0, 0 if ahead else 1)
        if advance is None:
            self._sequences.pop(key, None)
        else:
            if expected is None:
                _make_room(self._sequences, self.config.max_exporters)
            self._sequences[key] = (sequence + advance) & 0xFFFFFFFF

    def _count_off_sequence(self, addr: bytes, proto: str, lost: int, resets: int) -> None:
        """Messages whose sequence number was not the one expected: ahead of it, ``lost``
        records or packets in between (exporter-side loss); behind it (``resets``), reordered
        or the exporter restarted."""
        label = self._exporter_label(addr_text(addr))
        if lost:
            self.counters.inc("sequence_gaps_total", lost, exporter=label, proto=proto)
        if resets:
            self.counters.inc("sequence_resets_total", resets, exporter=label, proto=proto)

    def _count(self, labels: dict[tuple[str, str], int], label_of: np.ndarray, origin: np.ndarray) -> None:
        """Datagrams and flows per (exporter, protocol), the exporter being the datagram's sender."""
        if not labels:
            return
        known = label_of >= 0
        datagrams = np.bincount(label_of[known], minlength=len(labels))
        flows_per_datagram = np.bincount(origin, minlength=len(label_of))
        flows = np.bincount(label_of[known], weights=flows_per_datagram[known], minlength=len(labels))
        now = time.time()
        for (exporter, proto), i in labels.items():
            label = self._exporter_label(exporter)
            self.counters.inc("datagrams_total", int(datagrams[i]), exporter=label, proto=proto)
            self.counters.set("exporter_last_datagram_seconds", now, exporter=label, proto=proto)
            if flows[i]:
                self.counters.inc("flows_total", int(flows[i]), exporter=label, proto=proto)

    def _exporter_label(self, exporter: str) -> str:
        """The exporter as a metrics label; past ``max_exporters`` distinct ones (a spoofed
        source flood, say), "other", so that the metrics stay bounded."""
        if exporter in self._labels_seen:
            return exporter
        if len(self._labels_seen) >= self.config.max_exporters:
            return "other"
        self._labels_seen.add(exporter)
        return exporter

    def _error(self, proto: str, reason: str) -> None:
        self.counters.inc("decode_errors_total", proto=proto, reason=reason)

    def _addr16(self, text: str) -> bytes:
        cached = self._addr_cache.get(text)
        if cached is None:
            ip = ipaddress.ip_address(text)
            cached = (b"\x00" * 10 + b"\xff\xff" + ip.packed) if ip.version == 4 else ip.packed
            if len(self._addr_cache) < 100_000:
                self._addr_cache[text] = cached
        return cached


def _make_room(table: dict, limit: int) -> None:
    """Forget the oldest entries (dicts keep insertion order) so one more fits under ``limit``."""
    while len(table) >= limit:
        table.pop(next(iter(table)))


def _parse_template_set(version: int, set_id: int, body: bytes) -> list[tuple[str, object]]:
    """What a template set says: ("template", Template), ("withdraw", id), ("withdraw_all", None)
    or ("error", reason), in order."""
    out: list[tuple[str, object]] = []
    if version == 9:
        options = set_id == netflow9.OPTIONS_SET
        try:
            parsed: list = netflow9.parse_options_templates(body) if options else netflow9.parse_templates(body)
        except netflow9.MalformedTemplate as exc:
            return [("error", str(exc))]
    else:
        options = set_id == ipfix.OPTIONS_SET
        try:
            parsed = ipfix.parse_templates(body, options)
        except ipfix.MalformedTemplate as exc:
            return [("error", str(exc))]
    for template_id, fields in parsed:
        if isinstance(fields, ipfix.Withdrawal):
            if template_id in (ipfix.TEMPLATE_SET, ipfix.OPTIONS_SET):
                out.append(("withdraw_all", None))
            elif template_id >= ipfix.MIN_DATA_SET:
                out.append(("withdraw", template_id))
            continue
        if not netflow9.fixed_length_ok(fields):
            out.append(("error", "template_zero_length"))
            continue
        out.append(("template", Template(version, template_id, "options" if options else "flow", fields)))
    return out


def _sampling_rate(columns: dict[str, np.ndarray]) -> np.ndarray | None:
    """Sampling rate ("1 in N") per options record, from whichever elements it carries."""
    for key in ("sampling_interval", "sampler_random_interval"):
        if key in columns:
            return columns[key].astype(np.int64)
    if "sampling_packet_interval" in columns and "sampling_packet_space" in columns:
        interval = columns["sampling_packet_interval"].astype(np.int64)
        space = columns["sampling_packet_space"].astype(np.int64)
        return np.where(interval > 0, (interval + space) // np.maximum(interval, 1), 0)
    return None
