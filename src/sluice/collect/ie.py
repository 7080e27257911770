"""Information elements that Sluice interprets, shared by NetFlow v9 and IPFIX.

Each entry maps an IANA element id (NetFlow v9 field type ids are the same numbers up to
127) to the normalised key used throughout Sluice (the key names of the conformance
corpus) and to how its bytes are read. Every other element is skipped by offset, so
unknown and enterprise-specific fields never break decoding.
"""

from __future__ import annotations

from enum import Enum

#: RFC 5103 reverse-direction elements carry this private enterprise number.
REVERSE_PEN = 29305
#: A template field length meaning "variable length" (IPFIX; some v9 vendors too).
VARLEN = 65535


class Kind(Enum):
    UINT = "uint"  # unsigned integer, 1..8 bytes (reduced-size encoding allowed)
    IPV4 = "ipv4"  # 4 bytes
    IPV6 = "ipv6"  # 16 bytes
    TIME_S = "time_s"  # dateTimeSeconds
    TIME_MS = "time_ms"  # dateTimeMilliseconds
    TIME_NTP = "time_ntp"  # dateTimeMicroseconds / Nanoseconds: NTP 64-bit timestamp
    DELTA_US = "delta_us"  # microseconds before the message's export time


#: element id -> (normalised key, kind)
ELEMENTS: dict[int, tuple[str, Kind]] = {
    1: ("bytes", Kind.UINT),
    2: ("packets", Kind.UINT),
    4: ("protocol", Kind.UINT),
    6: ("tcp_flags", Kind.UINT),
    7: ("src_port", Kind.UINT),
    8: ("src_addr", Kind.IPV4),
    10: ("input_snmp", Kind.UINT),
    11: ("dst_port", Kind.UINT),
    12: ("dst_addr", Kind.IPV4),
    14: ("output_snmp", Kind.UINT),
    16: ("src_as", Kind.UINT),
    17: ("dst_as", Kind.UINT),
    21: ("last_switched_ms", Kind.UINT),
    22: ("first_switched_ms", Kind.UINT),
    23: ("out_bytes", Kind.UINT),
    24: ("out_packets", Kind.UINT),
    27: ("src_addr", Kind.IPV6),
    28: ("dst_addr", Kind.IPV6),
    32: ("icmp_type_code", Kind.UINT),  # icmpTypeCodeIPv4: type * 256 + code
    34: ("sampling_interval", Kind.UINT),
    35: ("sampling_algorithm", Kind.UINT),
    48: ("sampler_id", Kind.UINT),
    49: ("sampler_mode", Kind.UINT),
    50: ("sampler_random_interval", Kind.UINT),
    60: ("ip_version", Kind.UINT),
    61: ("direction", Kind.UINT),
    85: ("bytes_total", Kind.UINT),
    86: ("packets_total", Kind.UINT),
    139: ("icmp_type_code", Kind.UINT),  # icmpTypeCodeIPv6
    150: ("flow_start_ms", Kind.TIME_S),
    151: ("flow_end_ms", Kind.TIME_S),
    152: ("flow_start_ms", Kind.TIME_MS),
    153: ("flow_end_ms", Kind.TIME_MS),
    154: ("flow_start_ms", Kind.TIME_NTP),
    155: ("flow_end_ms", Kind.TIME_NTP),
    156: ("flow_start_ms", Kind.TIME_NTP),
    157: ("flow_end_ms", Kind.TIME_NTP),
    158: ("flow_start_ms", Kind.DELTA_US),
    159: ("flow_end_ms", Kind.DELTA_US),
    160: ("system_init_ms", Kind.UINT),
    176: ("icmp_type", Kind.UINT),
    177: ("icmp_code", Kind.UINT),
    178: ("icmp_type", Kind.UINT),  # IPv6
    179: ("icmp_code", Kind.UINT),
    231: ("initiator_bytes", Kind.UINT),
    232: ("responder_bytes", Kind.UINT),
    239: ("biflow_direction", Kind.UINT),
    298: ("initiator_packets", Kind.UINT),
    299: ("responder_packets", Kind.UINT),
    302: ("selector_id", Kind.UINT),
    305: ("sampling_packet_interval", Kind.UINT),
    306: ("sampling_packet_space", Kind.UINT),
}

#: NetFlow v9 options-template scope types (RFC 3954 §6.1) -> normalised key.
V9_SCOPES: dict[int, str] = {
    1: "scope_system",
    2: "scope_interface",
    3: "scope_linecard",
    4: "scope_cache",
    5: "scope_template",
}

#: Keys that are internal state, not shown in decoded records.
HIDDEN_KEYS = frozenset({"system_init_ms", "selector_id"})
