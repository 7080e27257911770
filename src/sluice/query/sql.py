"""Filter AST -> a parameterised SQL condition over the sessions table.

Only column names, operators and ``?`` placeholders are written into the SQL text; every
value the user typed travels as a parameter, so no filter can change the statement. Two
dialects: DuckDB's (the embedded store) and ClickHouse's (18.16 and later: no 128-bit
integers, no lambdas); addresses travel as 16-byte big-endian strings in both.
"""

from __future__ import annotations

from enum import Enum

from .filter import AddressRange, And, Comparison, Node, Not, Side, Xor


class Dialect(Enum):
    DUCKDB = "duckdb"
    CLICKHOUSE = "clickhouse"


_SQL_OP = {"==": "=", "!=": "<>", ">=": ">=", "<=": "<=", ">": ">", "<": "<"}


def compile_filter(node: Node, dialect: Dialect = Dialect.DUCKDB) -> tuple[str, list[object]]:
    """SQL boolean expression and its parameters, in order."""
    params: list[object] = []
    return _compile(node, params, dialect), params


def _compile(node: Node, params: list[object], dialect: Dialect) -> str:
    if isinstance(node, Comparison):
        return _comparison(node, params, dialect)
    if isinstance(node, Not):
        return f"(NOT {_compile(node.operand, params, dialect)})"
    operands = [_compile(operand, params, dialect) for operand in node.operands]
    if isinstance(node, Xor):  # true when an odd number are; one flat list, however many operands
        if dialect is Dialect.CLICKHOUSE:
            return "(((" + " + ".join(f"toUInt8({o})" for o in operands) + ") % 2) = 1)"
        return "list_reduce([" + ", ".join(operands) + "], lambda a, b: a <> b)"
    return "(" + (" AND " if isinstance(node, And) else " OR ").join(operands) + ")"


def _comparison(c: Comparison, params: list[object], dialect: Dialect) -> str:
    field, op, value = c.field, c.op, c.value
    negate = op == "!="
    if field.side is Side.TOTAL:
        a, b = field.columns
        if dialect is Dialect.CLICKHOUSE:
            # no 128-bit integers: the sign of a + b - v, computed so that nothing overflows
            params.extend([value, value, value])
            # (UInt64 - UInt64 is Int64 there: toUInt64 takes the difference back, modulo 2^64)
            return f"(multiIf({a} > ?, 1, {b} > toUInt64(? - {a}), 1, {b} = toUInt64(? - {a}), 0, -1) {_SQL_OP[op]} 0)"
        params.append(value)
        # HUGEINT: two 64-bit counters cannot overflow their sum
        return f"((CAST({a} AS HUGEINT) + {b}) {_SQL_OP[op]} ?)"
    if isinstance(value, AddressRange):
        parts = []
        for column in field.columns:
            params.extend([value.low, value.high])
            parts.append(f"({column} BETWEEN ? AND ?)")
    else:
        sql_op = "=" if negate else _SQL_OP[op]
        parts = []
        for column in field.columns:
            params.append(value)
            parts.append(f"({column} {sql_op} ?)")
    either = parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"
    if negate:  # != : neither side is the value (for one column: simply not equal)
        return f"(NOT {either})"
    return either
