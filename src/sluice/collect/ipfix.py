"""IPFIX (RFC 7011): message header and template parsing. Records are decoded by ``templates``."""

from __future__ import annotations

import struct

from .templates import TemplateField

HEADER = struct.Struct("!HHIII")  # version, length, export_time, sequence, observation domain
HEADER_LEN = HEADER.size  # 16
TEMPLATE_SET, OPTIONS_SET = 2, 3
MIN_DATA_SET = 256
ENTERPRISE_BIT = 0x8000


class MalformedTemplate(ValueError):
    pass


class Withdrawal:
    """A template withdrawal record (field count 0); ``template_id`` 2/3 withdraws all."""

    def __init__(self, template_id: int):
        self.template_id = template_id


def _fields(body: bytes, pos: int, count: int) -> tuple[tuple[TemplateField, ...], int]:
    fields = []
    end = len(body)
    for _ in range(count):
        if pos + 4 > end:
            raise MalformedTemplate("template_length")
        ie, length = struct.unpack_from("!HH", body, pos)
        pos += 4
        pen = 0
        if ie & ENTERPRISE_BIT:
            if pos + 4 > end:
                raise MalformedTemplate("template_length")
            (pen,) = struct.unpack_from("!I", body, pos)
            pos += 4
            ie &= 0x7FFF
        fields.append(TemplateField(pen, ie, length))
    return tuple(fields), pos


def parse_templates(body: bytes, options: bool) -> list[tuple[int, tuple[TemplateField, ...] | Withdrawal]]:
    """Records of one template set (``options``: an options template set)."""
    out: list[tuple[int, tuple[TemplateField, ...] | Withdrawal]] = []
    pos, end = 0, len(body)
    head = 6 if options else 4
    while end - pos >= 4:
        template_id, count = struct.unpack_from("!HH", body, pos)
        if count == 0:
            out.append((template_id, Withdrawal(template_id)))
            pos += 4
            continue
        if end - pos < head:
            break  # padding
        if template_id < MIN_DATA_SET:
            raise MalformedTemplate("template_id")
        scope_count = struct.unpack_from("!H", body, pos + 4)[0] if options else 0
        if options and (scope_count == 0 or scope_count > count):
            raise MalformedTemplate("scope_count")
        fields, pos = _fields(body, pos + head, count)
        out.append((template_id, fields))
    return out
