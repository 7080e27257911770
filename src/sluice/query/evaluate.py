"""Filter AST -> boolean mask over a batch of sessions, vectorised with numpy.

The same semantics as the SQL compiler (``sql.py``), for filtering sessions in memory:
alert prefilters on the ingest path, where nothing is stored yet.
"""

from __future__ import annotations

import operator

import numpy as np

from ..flows.schema import SessionBatch, address_words
from .filter import AddressRange, And, Comparison, Node, Not, Or, Side, Xor

_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_U64_MAX = np.uint64(2**64 - 1)


def evaluate(node: Node, sessions: SessionBatch) -> np.ndarray:
    """Boolean mask of the sessions the filter selects."""
    if isinstance(node, Comparison):
        return _comparison(node, sessions)
    if isinstance(node, Not):
        return ~evaluate(node.operand, sessions)
    combine = {And: np.logical_and, Or: np.logical_or, Xor: np.logical_xor}[type(node)]
    result = evaluate(node.operands[0], sessions)
    for operand in node.operands[1:]:
        combine(result, evaluate(operand, sessions), out=result)
    return result


def in_range(column: np.ndarray, r: AddressRange) -> np.ndarray:
    """Rows whose 16-byte address lies in [low, high], compared as big-endian 128-bit numbers."""
    hi, lo = address_words(column)
    l_hi, l_lo = int.from_bytes(r.low[:8], "big"), int.from_bytes(r.low[8:], "big")
    h_hi, h_lo = int.from_bytes(r.high[:8], "big"), int.from_bytes(r.high[8:], "big")
    above_low = (hi > l_hi) | ((hi == l_hi) & (lo >= l_lo))
    below_high = (hi < h_hi) | ((hi == h_hi) & (lo <= h_lo))
    return above_low & below_high


def _comparison(c: Comparison, s: SessionBatch) -> np.ndarray:
    field, op, value = c.field, c.op, c.value
    if field.side is Side.TOTAL:
        a = s[field.columns[0]].astype(np.uint64)
        b = s[field.columns[1]].astype(np.uint64)
        overflow = a > _U64_MAX - b  # the true sum is >= 2**64, above any filter value
        total = a + np.where(overflow, np.uint64(0), b)
        assert isinstance(value, int)
        result = _OPS[op](total, np.uint64(value))
        return np.where(overflow, op in (">", ">=", "!="), result)
    negate = op == "!="
    if isinstance(value, AddressRange):
        hits = [in_range(s[col], value) for col in field.columns]
    elif isinstance(value, str):
        code = value.encode("ascii")
        hits = [s[col] == code for col in field.columns]
    else:
        cmp = _OPS["==" if negate else op]
        hits = [cmp(s[col].astype(np.uint64), np.uint64(value)) for col in field.columns]
    either = hits[0] if len(hits) == 1 else hits[0] | hits[1]
    return ~either if negate else either
