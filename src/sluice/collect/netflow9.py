"""NetFlow v9 (RFC 3954): header and flowset walk. Records are decoded by ``templates``."""

from __future__ import annotations

import struct

from .ie import VARLEN
from .templates import TemplateField

HEADER = struct.Struct("!HHIIII")  # version, count, sys_uptime, unix_secs, sequence, source_id
HEADER_LEN = HEADER.size  # 20
SET_HEADER = struct.Struct("!HH")
FIELD = struct.Struct("!HH")
TEMPLATE_SET, OPTIONS_SET = 0, 1
MIN_DATA_SET = 256


class MalformedTemplate(ValueError):
    pass


def parse_templates(body: bytes) -> list[tuple[int, tuple[TemplateField, ...]]]:
    """Data templates of one template flowset: [(template id, fields)]."""
    out = []
    pos, end = 0, len(body)
    while end - pos >= 4:
        template_id, count = SET_HEADER.unpack_from(body, pos)
        pos += 4
        if template_id < MIN_DATA_SET:
            raise MalformedTemplate("template_id")
        if count == 0 or pos + 4 * count > end:
            raise MalformedTemplate("template_length")
        fields = tuple(
            TemplateField(0, t, ln) for t, ln in (FIELD.unpack_from(body, pos + 4 * i) for i in range(count))
        )
        pos += 4 * count
        out.append((template_id, fields))
    return out


def parse_options_templates(body: bytes) -> list[tuple[int, tuple[TemplateField, ...]]]:
    """Options templates of one options flowset; scope fields come first, marked ``scope``."""
    out = []
    pos, end = 0, len(body)
    while end - pos >= 6:
        template_id, scope_len, option_len = struct.unpack_from("!HHH", body, pos)
        pos += 6
        if template_id < MIN_DATA_SET:
            break  # padding
        if scope_len % 4 or option_len % 4 or pos + scope_len + option_len > end:
            raise MalformedTemplate("options_template_length")
        scopes = [FIELD.unpack_from(body, pos + i) for i in range(0, scope_len, 4)]
        options = [FIELD.unpack_from(body, pos + scope_len + i) for i in range(0, option_len, 4)]
        pos += scope_len + option_len
        if not scopes and not options:
            raise MalformedTemplate("options_template_empty")
        fields = tuple(TemplateField(0, t, ln, scope=True) for t, ln in scopes) + tuple(
            TemplateField(0, t, ln) for t, ln in options
        )
        out.append((template_id, fields))
    return out


def fixed_length_ok(fields: tuple[TemplateField, ...]) -> bool:
    """A template whose records take no bytes would describe endless records."""
    return any(f.length for f in fields) or any(f.length == VARLEN for f in fields)
