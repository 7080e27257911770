"""The shared NetFlow v9 / IPFIX template machinery, on hand-made datagrams."""

import struct

import numpy as np

from sluice.collect.datagrams import Datagram
from sluice.collect.decoder import Decoder, DecoderConfig
from sluice.collect.records import wire_records
from sluice.flows.schema import addr_text

from ..support.wirebuild import (
    EXPORT_S,
    data_set,
    ip4,
    ip6,
    ipfix_message,
    ipfix_options_template_set,
    ipfix_template_set,
    ipfix_withdrawal_set,
    v9_message,
    v9_options_template_set,
    v9_template_set,
    varlen,
)

# a small IPv4 template: src, dst, sport, dport, proto, bytes(8), packets(4)
BASIC = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 4)]


def basic_record(src="10.0.0.1", dst="10.0.0.2", sport=1000, dport=80, proto=6, nbytes=500, packets=5) -> bytes:
    return ip4(src) + ip4(dst) + struct.pack("!HHBQI", sport, dport, proto, nbytes, packets)


def feed(decoder, *payloads, address="192.0.2.1", port=9999, when=float(EXPORT_S)):
    return decoder.decode([Datagram(p, address, port, when) for p in payloads])


def test_data_before_template_is_held_then_decoded():
    d = Decoder()
    early = ipfix_message([data_set(300, [basic_record(nbytes=111), basic_record(nbytes=222)])])
    first = feed(d, early)
    assert len(first.flows) == 0
    assert d.counters.get("template_misses_total") == 1
    assert len(d.pending) == 1
    second = feed(d, ipfix_message([ipfix_template_set([(300, BASIC)])], sequence=2))
    assert sorted(second.flows["bytes"].tolist()) == [111, 222]
    assert len(d.pending) == 0


def test_data_whose_template_never_comes_is_counted_when_it_expires():
    d = Decoder(DecoderConfig(pending_max_age_s=0.0))
    feed(d, ipfix_message([data_set(300, [basic_record()])]))
    feed(d, ipfix_message([], sequence=1))  # a later batch runs the expiry
    assert len(d.pending) == 0
    assert d.counters.get("decode_errors_total", reason="template_missing") == 1


def test_pending_buffer_is_bounded_in_bytes():
    d = Decoder(DecoderConfig(pending_max_bytes=1000))
    for i in range(50):
        feed(d, ipfix_message([data_set(300 + i, [basic_record()] * 4)], sequence=i))
    assert d.pending._bytes <= 1000
    assert d.counters.get("decode_errors_total", reason="pending_overflow") > 0


def test_template_withdrawal_and_withdraw_all():
    d = Decoder()
    feed(d, ipfix_message([ipfix_template_set([(300, BASIC), (301, BASIC)])]))
    feed(d, ipfix_message([ipfix_withdrawal_set(300)]))
    r = feed(d, ipfix_message([data_set(300, [basic_record()]), data_set(301, [basic_record()])]))
    assert len(r.flows) == 1  # 301 still known, 300 withdrawn
    feed(d, ipfix_message([ipfix_withdrawal_set(2)]))  # all templates of this domain
    r = feed(d, ipfix_message([data_set(301, [basic_record()])]))
    assert len(r.flows) == 0
    assert d.counters.get("templates_withdrawn_total") == 2


def test_redefined_template_decodes_each_set_with_the_layout_in_force():
    d = Decoder()
    other = [(12, 4), (8, 4), (1, 4)]  # same id, different layout: dst first, 4-byte bytes
    r = feed(
        d,
        ipfix_message([ipfix_template_set([(300, BASIC)]), data_set(300, [basic_record(nbytes=7)])]),
        ipfix_message([ipfix_template_set([(300, other)]),
                       data_set(300, [ip4("10.9.9.9") + ip4("10.8.8.8") + struct.pack("!I", 9)])], sequence=1),
    )
    got = sorted((addr_text(bytes(s)), int(b)) for s, b in zip(r.flows["src_addr"], r.flows["bytes"]))
    assert got == [("10.0.0.1", 7), ("10.8.8.8", 9)]
    assert d.counters.get("templates_redefined_total") == 1


def test_templates_are_kept_per_exporter_and_domain():
    d = Decoder()
    feed(d, ipfix_message([ipfix_template_set([(300, BASIC)])], domain=1))
    r = feed(d, ipfix_message([data_set(300, [basic_record()])], domain=2))
    assert len(r.flows) == 0  # other observation domain: no template
    r = feed(d, ipfix_message([data_set(300, [basic_record()])], domain=1), address="192.0.2.99")
    assert len(r.flows) == 0  # other exporter
    r = feed(d, ipfix_message([data_set(300, [basic_record()])], domain=1))
    assert len(r.flows) == 1


def test_variable_length_and_enterprise_fields_are_skipped_safely():
    # src, enterprise 4-byte field, interfaceName (varlen), dst, enterprise varlen field, bytes
    fields = [(8, 4), (100, 4, 9999), (82, 65535), (12, 4), (200, 65535, 9999), (1, 4)]
    d = Decoder()
    records = []
    for i, name in enumerate([b"", b"eth0", b"x" * 300, b"y" * 254, b"z" * 255]):
        records.append(ip4(f"10.0.0.{i + 1}") + b"\xde\xad\xbe\xef" + varlen(name) + ip4(f"10.1.0.{i + 1}")
                       + varlen(b"vendor" * i) + struct.pack("!I", 1000 + i))
    msg1 = ipfix_message([ipfix_template_set([(400, fields)]), data_set(400, records[:3])])
    msg2 = ipfix_message([data_set(400, records[3:]), data_set(400, records[:1])], sequence=3)
    r = feed(d, msg1, msg2)
    got = [(rec["src_addr"], rec["dst_addr"], rec["bytes"]) for rec in wire_records(r)]
    want = [(f"10.0.0.{i + 1}", f"10.1.0.{i + 1}", 1000 + i) for i in [0, 1, 2, 3, 4, 0]]
    assert got == want
    assert d.counters.get("decode_errors_total") == 0


def test_set_padding_is_not_decoded_as_records():
    d = Decoder()
    # 21-byte records padded to a multiple of 8: 3 bytes of padding must not become a record
    r = feed(d, ipfix_message([ipfix_template_set([(300, BASIC)]),
                               data_set(300, [basic_record()] * 3, pad_to=8)]))
    assert len(r.flows) == 3


def test_many_sets_in_one_datagram_keep_wire_order():
    d = Decoder()
    v6 = [(27, 16), (28, 16), (1, 4)]
    r = feed(d, ipfix_message([
        ipfix_template_set([(300, BASIC), (301, v6)]),
        data_set(300, [basic_record(nbytes=1)]),
        data_set(301, [ip6("2001:db8::1") + ip6("2001:db8::2") + struct.pack("!I", 2)]),
        data_set(300, [basic_record(nbytes=3), basic_record(nbytes=4)]),
    ]))
    assert [rec["bytes"] for rec in wire_records(r)] == [1, 2, 3, 4]
    assert addr_text(bytes(r.flows["src_addr"][r.flows["bytes"] == 2][0])) == "2001:db8::1"


def test_ipfix_sampling_from_options_scales_counts_and_keeps_rate():
    d = Decoder()
    # options: scope selectorId (302) -> samplingPacketInterval 1, samplingPacketSpace 99 (1 in 100)
    opt = ipfix_options_template_set(500, [(302, 4)], [(305, 4), (306, 4)])
    template = BASIC + [(302, 4)]
    r = feed(d, ipfix_message([
        ipfix_template_set([(300, template)]), opt,
        data_set(500, [struct.pack("!III", 7, 1, 99)]),
        data_set(300, [basic_record(nbytes=10, packets=1) + struct.pack("!I", 7)]),
    ]))
    assert r.flows["sampling_rate"].tolist() == [100]
    assert r.flows["bytes"].tolist() == [1000]
    assert r.flows["packets"].tolist() == [100]


def test_v9_sampler_table_and_exporter_default():
    d = Decoder(DecoderConfig(sampling_defaults={"192.0.2.7": 10}))
    # v9 options: scope system; FLOW_SAMPLER_ID (48, 1 byte), SAMPLING_INTERVAL (34, 4 bytes)
    r = feed(d, v9_message([
        v9_template_set([(300, BASIC + [(48, 1)])]),
        v9_options_template_set(301, [(1, 4)], [(48, 1), (34, 4)]),
        data_set(301, [struct.pack("!IBI", 0, 3, 64)]),
        data_set(300, [basic_record(nbytes=5, packets=1) + b"\x03"]),
    ]))
    assert r.flows["sampling_rate"].tolist() == [64]
    assert r.flows["bytes"].tolist() == [320]
    # an exporter that announces nothing gets its configured default
    r = feed(d, v9_message([v9_template_set([(300, BASIC)]), data_set(300, [basic_record(nbytes=5)])]),
             address="192.0.2.7")
    assert r.flows["sampling_rate"].tolist() == [10]
    assert r.flows["bytes"].tolist() == [50]


def test_ipfix_time_variants():
    export_ms = EXPORT_S * 1000
    start_ms, end_ms = export_ms - 5_250, export_ms - 1_125
    ntp = 2_208_988_800

    def ntp_stamp(ms: int, nano: bool) -> bytes:
        seconds, rest = divmod(ms, 1000)
        fraction = (rest << 32) // 1000 + 1  # +1: a fraction just above the ms boundary
        return struct.pack("!II", seconds + ntp, fraction)

    cases = {
        "seconds": ([(150, 4), (151, 4)], struct.pack("!II", start_ms // 1000, end_ms // 1000),
                    (start_ms // 1000 * 1000, end_ms // 1000 * 1000)),
        "milliseconds": ([(152, 8), (153, 8)], struct.pack("!QQ", start_ms, end_ms), (start_ms, end_ms)),
        "microseconds": ([(154, 8), (155, 8)], ntp_stamp(start_ms, False) + ntp_stamp(end_ms, False),
                         (start_ms, end_ms)),
        "nanoseconds": ([(156, 8), (157, 8)], ntp_stamp(start_ms, True) + ntp_stamp(end_ms, True),
                        (start_ms, end_ms)),
        "delta": ([(158, 4), (159, 4)], struct.pack("!II", 5_250_000, 1_125_000), (start_ms, end_ms)),
    }
    for name, (fields, body, want) in cases.items():
        d = Decoder()
        r = feed(d, ipfix_message([ipfix_template_set([(300, BASIC + fields)]),
                                   data_set(300, [basic_record() + body])]))
        got = (int(r.flows["time_start_ms"][0]), int(r.flows["time_end_ms"][0]))
        assert got == want, name


def test_ipfix_uptime_times_use_system_init_time_from_options():
    d = Decoder()
    init_ms = EXPORT_S * 1000 - 3_600_000
    r = feed(d, ipfix_message([
        ipfix_options_template_set(500, [(149, 4)], [(160, 8)]),
        data_set(500, [struct.pack("!IQ", 1, init_ms)]),
        ipfix_template_set([(300, BASIC + [(22, 4), (21, 4)])]),
        data_set(300, [basic_record() + struct.pack("!II", 1_000, 2_000)]),
    ]))
    assert r.flows["time_start_ms"].tolist() == [init_ms + 1_000]
    assert r.flows["time_end_ms"].tolist() == [init_ms + 2_000]


def test_v9_uptime_relative_times_survive_wraparound():
    d = Decoder()
    uptime = 5_000  # the exporter's uptime counter wrapped 5 s ago
    first = (uptime - 8_000) & 0xFFFFFFFF  # 8 s before export, from before the wrap
    r = feed(d, v9_message([v9_template_set([(300, BASIC + [(22, 4), (21, 4)])]),
                            data_set(300, [basic_record() + struct.pack("!II", first, uptime - 1_000)])],
                           uptime_ms=uptime))
    assert r.flows["time_start_ms"].tolist() == [EXPORT_S * 1000 - 8_000]
    assert r.flows["time_end_ms"].tolist() == [EXPORT_S * 1000 - 1_000]


def test_sequence_gaps_are_counted_as_exporter_loss():
    d = Decoder()
    tpl = v9_template_set([(300, BASIC)])
    feed(d, v9_message([tpl], sequence=10), v9_message([tpl], sequence=11), v9_message([tpl], sequence=15))
    assert d.counters.get("sequence_gaps_total", proto="netflow9") == 3
    d = Decoder()
    # IPFIX sequence numbers count data records: 2 records, then the next message should say 2
    feed(d, ipfix_message([ipfix_template_set([(300, BASIC)]), data_set(300, [basic_record()] * 2)], sequence=0),
         ipfix_message([data_set(300, [basic_record()])], sequence=2),
         ipfix_message([data_set(300, [basic_record()])], sequence=10))
    assert d.counters.get("sequence_gaps_total", proto="ipfix") == 7


def test_malformed_templates_are_counted_not_raised():
    d = Decoder()
    huge = struct.pack("!HH", 300, 5000) + struct.pack("!HH", 8, 4)  # 5000 fields claimed, 1 present
    zero = struct.pack("!HH", 301, 1) + struct.pack("!HH", 8, 0)  # records of zero bytes
    feed(d,
         ipfix_message([struct.pack("!HH", 2, 4 + len(huge)) + huge]),
         ipfix_message([struct.pack("!HH", 2, 4 + len(zero)) + zero]),
         v9_message([struct.pack("!HH", 0, 200) + b"\0" * 8]),  # set length beyond the datagram
         b"\x00\x0a\x00\x10",  # truncated IPFIX header
         struct.pack("!HHIII", 10, 60000, 0, 0, 0))  # IPFIX length beyond the datagram
    errors = {dict(labels)["reason"]: v for (name, labels), v in d.counters.snapshot().items()
              if name == "decode_errors_total"}
    assert errors == {"template_length": 1, "template_zero_length": 1, "set_length": 1,
                      "truncated_header": 1, "message_length": 1}
    assert len(d.templates) == 0


def test_canonical_flow_has_every_field():
    d = Decoder()
    fields = BASIC + [(6, 1), (10, 4), (14, 4), (16, 4), (17, 4), (152, 8), (153, 8)]
    body = basic_record(nbytes=900, packets=3) + struct.pack("!BIIIIQQ", 0x12, 3, 4, 65001, 65002,
                                                             EXPORT_S * 1000 - 10, EXPORT_S * 1000 - 5)
    r = feed(d, ipfix_message([ipfix_template_set([(300, fields)]), data_set(300, [body])], domain=42))
    (rec,) = r.flows.to_records()
    assert rec == {
        "time_start_ms": EXPORT_S * 1000 - 10, "time_end_ms": EXPORT_S * 1000 - 5, "export_proto": "ipfix",
        "exporter_addr": "192.0.2.1", "source_id": 42, "input_if": 3, "output_if": 4,
        "src_addr": "10.0.0.1", "dst_addr": "10.0.0.2", "src_port": 1000, "dst_port": 80, "protocol": 6,
        "tcp_flags": 0x12, "bytes": 900, "packets": 3, "src_as": 65001, "dst_as": 65002, "sampling_rate": 1,
    }
    arrow = r.flows.to_arrow()
    assert arrow.num_rows == 1 and arrow.schema.field("src_addr").type.byte_width == 16
    assert np.asarray(arrow.column("bytes")).tolist() == [900]


def test_absurd_system_init_time_is_ignored_not_fatal():
    # found by fuzzing: a uint64 systemInitTimeMilliseconds beyond int64 crashed the decoder
    d = Decoder()
    r = feed(d, ipfix_message([
        ipfix_options_template_set(500, [(149, 4)], [(160, 8)]),
        data_set(500, [struct.pack("!IQ", 1, 2**64 - 1)]),
        ipfix_template_set([(300, BASIC + [(22, 4), (21, 4)])]),
        data_set(300, [basic_record() + struct.pack("!II", 1_000, 2_000)]),
    ]))
    assert r.flows["time_start_ms"].tolist() == [EXPORT_S * 1000]  # unknown init time: export time


def _v5_datagrams(count: int, first_port: int) -> list[bytes]:
    """``count`` NetFlow v5 datagrams of 3 flows each, told apart by their client ports."""
    from sluice.flows.schema import FlowBatch, addr_bytes
    from sluice.simulate.encode import NetflowV5Encoder

    n = 3 * count
    end = EXPORT_S * 1000 - 1000
    flows = FlowBatch.build(n, src_addr=np.frombuffer(addr_bytes("10.9.9.9") * n, np.uint8).reshape(n, 16),
                            dst_addr=np.frombuffer(addr_bytes("10.8.8.8") * n, np.uint8).reshape(n, 16),
                            src_port=np.arange(first_port, first_port + n), dst_port=80, protocol=6, bytes=100,
                            packets=1, time_start_ms=end - 10, time_end_ms=end, sampling_rate=1)
    return NetflowV5Encoder().encode(flows, EXPORT_S * 1000, per_datagram=3)


def test_data_held_in_a_larger_batch_is_released_in_a_smaller_one():
    # found by the hardening review: a data set held at datagram 11 of one batch and released
    # by a later batch of 2 datagrams raised IndexError, which lost the whole second batch
    d = Decoder()
    v5 = [Datagram(p, "192.0.2.50", 2055, float(EXPORT_S)) for p in _v5_datagrams(13, 1000)]
    early = Datagram(ipfix_message([data_set(300, [basic_record(nbytes=111), basic_record(nbytes=222)])], sequence=0),
                     "192.0.2.1", 9999, float(EXPORT_S))
    first = d.decode(v5[:11] + [early])
    assert len(first.flows) == 33 and len(d.pending) == 1
    template = Datagram(ipfix_message([ipfix_template_set([(300, BASIC)])], sequence=2), "192.0.2.1", 9999,
                        float(EXPORT_S))
    second = d.decode([template, v5[11]])
    assert d.counters.get("decode_errors_total", reason="internal_error") == 0
    assert sorted(second.flows["bytes"].tolist()) == [100, 100, 100, 111, 222]
    # the released records count for their exporter, with the datagram that brought the template
    assert d.counters.get("flows_total", exporter="192.0.2.1", proto="ipfix") == 2
    assert d.counters.get("flows_total", exporter="192.0.2.50", proto="netflow5") == 36


def test_a_datagram_that_breaks_the_decoder_costs_only_itself(monkeypatch):
    """Whatever bug a datagram provokes, the other datagrams of its batch (other exporters'
    included) are decoded, sequence numbers are not counted twice, and held data is not lost."""
    import sluice.collect.decoder as decoder_module

    d = Decoder()
    early = ipfix_message([data_set(300, [basic_record(nbytes=111)])], sequence=0)
    feed(d, early)  # held for its template
    v5 = _v5_datagrams(3, 2000)
    poison = v5[1]
    real_records = decoder_module.netflow5.records_of

    def records_of(body, *args):  # a stand-in for any decoder bug, triggered by one datagram's bytes
        if poison[24:] in body.tobytes():
            raise IndexError("a bug provoked by this datagram")
        return real_records(body, *args)

    # on the v5 walk's path and on the batch's alike
    monkeypatch.setattr(decoder_module.netflow5, "records_of", records_of)
    batch = [Datagram(v5[0], "192.0.2.50", 2055, float(EXPORT_S)),
             Datagram(ipfix_message([ipfix_template_set([(300, BASIC)])], sequence=1), "192.0.2.1", 9999,
                      float(EXPORT_S)),
             Datagram(poison, "192.0.2.50", 2055, float(EXPORT_S)),
             Datagram(v5[2], "192.0.2.50", 2055, float(EXPORT_S))]
    result = d.decode(batch)
    assert d.counters.get("decode_errors_total", reason="internal_error") == 1
    assert sorted(result.flows["src_port"].tolist()) == [1000, 2000, 2001, 2002, 2006, 2007, 2008]
    assert sorted(result.flows["bytes"].tolist()) == [100] * 6 + [111]  # the held IPFIX record too
    # the lost datagram is a real gap of 3 flows; nothing is counted twice
    assert d.counters.get("sequence_gaps_total", proto="netflow5") == 3
    assert d.counters.get("sequence_resets_total") == 0
    assert d.counters.get("sequence_gaps_total", proto="ipfix") == 0
