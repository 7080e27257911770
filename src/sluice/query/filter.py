"""The FlowTraq filter language: text -> AST, with precise errors.

Grammar (case-insensitive field names; ``!`` binds tightest, then ``&&``, ``^|``, ``||``)::

    filter     := or
    or         := xor ( "||" xor )*
    xor        := and ( "^|" and )*
    and        := unary ( "&&" unary )*
    unary      := "!" unary | "(" or ")" | comparison
    comparison := FIELD ( "==" | "!=" | ">=" | "<=" | ">" | "<" ) VALUE

Fields and their values (see docs/filters.md):

    SRVIP CLNIP ADDR EXPORTER       an IPv4/IPv6 address or CIDR prefix (== and != only)
    SRVPORT CLNPORT PORT            0..65535
    PROTO                           a protocol name (tcp, udp, icmp, …) or number 0..255
    CLNPKTS SRVPKTS PACKETS TOTPKTS a count
    CLNBYTS SRVBYTS BYTES TOTBYTS   a count
    COUNTRY                         an ISO 3166 alpha-2 code or a Sluice pseudo-code (== and != only)
    ASN                             an AS number, 123 or AS123

``ADDR``, ``PORT``, ``PACKETS``, ``BYTES``, ``COUNTRY`` and ``ASN`` match when either side
(client or server) does; ``TOTPKTS`` / ``TOTBYTS`` are the client + server totals. For an
either-side field, ``F != v`` means ``!(F == v)``: neither side is ``v``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Union


class FilterError(ValueError):
    """A filter that cannot be parsed; says where (0-based ``position``) and what was expected."""

    def __init__(self, text: str, position: int, message: str):
        self.text = text
        self.position = position
        self.message = message
        super().__init__(f"{message} (at position {position + 1})")

    def pointer(self) -> str:
        """The filter with a caret under the problem, for terminals and the web page."""
        return f"{self.text}\n{' ' * self.position}^ {self.message}"


class Kind(Enum):
    ADDRESS = "address"
    PORT = "port"
    PROTOCOL = "protocol"
    COUNT = "count"
    COUNTRY = "country"
    ASN = "asn"


class Side(Enum):
    ONE = "one"  # a single column
    EITHER = "either"  # client or server
    TOTAL = "total"  # client + server


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    side: Side
    columns: tuple[str, ...]


FIELDS: dict[str, Field] = {
    f.name: f
    for f in [
        Field("SRVIP", Kind.ADDRESS, Side.ONE, ("srv_addr",)),
        Field("CLNIP", Kind.ADDRESS, Side.ONE, ("cln_addr",)),
        Field("ADDR", Kind.ADDRESS, Side.EITHER, ("cln_addr", "srv_addr")),
        Field("EXPORTER", Kind.ADDRESS, Side.ONE, ("exporter_addr",)),
        Field("SRVPORT", Kind.PORT, Side.ONE, ("srv_port",)),
        Field("CLNPORT", Kind.PORT, Side.ONE, ("cln_port",)),
        Field("PORT", Kind.PORT, Side.EITHER, ("cln_port", "srv_port")),
        Field("PROTO", Kind.PROTOCOL, Side.ONE, ("protocol",)),
        Field("CLNPKTS", Kind.COUNT, Side.ONE, ("cln_pkts",)),
        Field("SRVPKTS", Kind.COUNT, Side.ONE, ("srv_pkts",)),
        Field("PACKETS", Kind.COUNT, Side.EITHER, ("cln_pkts", "srv_pkts")),
        Field("TOTPKTS", Kind.COUNT, Side.TOTAL, ("cln_pkts", "srv_pkts")),
        Field("CLNBYTS", Kind.COUNT, Side.ONE, ("cln_bytes",)),
        Field("SRVBYTS", Kind.COUNT, Side.ONE, ("srv_bytes",)),
        Field("BYTES", Kind.COUNT, Side.EITHER, ("cln_bytes", "srv_bytes")),
        Field("TOTBYTS", Kind.COUNT, Side.TOTAL, ("cln_bytes", "srv_bytes")),
        Field("COUNTRY", Kind.COUNTRY, Side.EITHER, ("cln_country", "srv_country")),
        Field("ASN", Kind.ASN, Side.EITHER, ("cln_asn", "srv_asn")),
    ]
}

COMPARATORS = ("==", "!=", ">=", "<=", ">", "<")
EQUALITY_ONLY = {Kind.ADDRESS, Kind.COUNTRY}

PROTOCOLS: dict[str, int] = {
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "tcp": 6,
    "egp": 8,
    "udp": 17,
    "ipv6": 41,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmp6": 58,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "eigrp": 88,
    "ospf": 89,
    "pim": 103,
    "vrrp": 112,
    "l2tp": 115,
    "sctp": 132,
    "udplite": 136,
}
PROTOCOL_NAMES = {v: k for k, v in reversed(PROTOCOLS.items())}

#: pseudo country codes for addresses no registry places in a country (ISO 3166 user-assigned)
PSEUDO_COUNTRIES = {
    "XP": "private (RFC 1918, unique local, shared CGN space)",
    "XL": "loopback or link-local",
    "XM": "multicast",
    "XR": "other reserved or special-purpose",
    "ZZ": "unknown: public, but not in the geolocation data",
}

MAX_COUNT = 2**63 - 1


# -- AST ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressRange:
    """An address or prefix as an inclusive range of 16-byte addresses."""

    low: bytes
    high: bytes
    text: str  # as the user wrote it, normalised

    @classmethod
    def of(cls, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> AddressRange:
        """The range of a network, IPv4 as ``::ffff:a.b.c.d`` like every stored address."""
        low, high = net.network_address.packed, net.broadcast_address.packed
        if net.version == 4:
            prefix = b"\x00" * 10 + b"\xff\xff"
            low, high = prefix + low, prefix + high
        shown = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        return cls(low, high, shown)


@dataclass(frozen=True)
class Comparison:
    field: Field
    op: str
    value: Union[int, str, AddressRange]


@dataclass(frozen=True)
class Not:
    operand: Node


# A run of one operator is one node with all its operands (``a && b && c`` is
# ``And((a, b, c))``), so a tree is as deep as its parentheses, never as long as the filter:
# everything that walks it (evaluation, SQL, text, equality) stays far from Python's recursion
# limit. ``^|`` over several operands is true when an odd number of them are.


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Xor:
    operands: tuple[Node, ...]


Node = Union[Comparison, Not, And, Or, Xor]


# -- lexer -------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<op>==|!=|>=|<=|&&|\|\||\^\||[<>!()])
  | (?P<quoted>"[^"]*"|'[^']*')
  | (?P<word>[A-Za-z0-9_.:/\-]+)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # "op", "word", "end"
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FilterError(text, pos, f"unexpected character {text[pos]!r}")
        if match.lastgroup == "quoted":
            tokens.append(Token("word", match.group()[1:-1], pos))
        elif match.lastgroup != "space":
            tokens.append(Token(match.lastgroup or "", match.group(), pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# -- parser ------------------------------------------------------------------------------

#: bounds on what a filter may hold (a filter is user input that every evaluation runs): enough
#: for long lists of hosts or ports, far below what could exhaust the server (docs/filters.md)
MAX_LENGTH = 10_000
MAX_COMPARISONS = 500
MAX_DEPTH = 32  # nested parentheses and "!"


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.comparisons = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def fail(self, token: Token, expected: str) -> FilterError:
        found = "the end of the filter" if token.kind == "end" else repr(token.text)
        return FilterError(self.text, token.position, f"expected {expected}, found {found}")

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise FilterError(self.text, 0, "the filter is empty: expected a comparison such as SRVPORT == 80")
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise self.fail(tok, "&&, || or ^| between comparisons, or the end of the filter")
        return node

    def or_(self) -> Node:
        return self._run("||", Or, self.xor)

    def xor(self) -> Node:
        return self._run("^|", Xor, self.and_)

    def and_(self) -> Node:
        return self._run("&&", And, self.unary)

    def _run(self, symbol: str, kind: type[And] | type[Or] | type[Xor], operand: Callable[[], Node]) -> Node:
        """``operand (symbol operand)*`` as one node (or the single operand)."""
        operands = [operand()]
        while self.peek().text == symbol:
            self.take()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else kind(tuple(operands))

    def unary(self) -> Node:
        tok = self.peek()
        if tok.text not in ("!", "("):
            return self.comparison()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(
                self.text, tok.position, f"the filter nests more than {MAX_DEPTH} levels of '(' and '!': simplify it"
            )
        self.take()
        if tok.text == "!":
            node: Node = Not(self.unary())
        else:
            node = self.or_()
            close = self.peek()
            if close.text != ")":
                raise self.fail(close, f"')' to close the '(' at position {tok.position + 1}")
            self.take()
        self.depth -= 1
        return node

    def comparison(self) -> Comparison:
        tok = self.take()
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise FilterError(
                self.text,
                tok.position,
                f"the filter has more than {MAX_COMPARISONS} comparisons: use prefixes "
                "(ADDR == 10.0.0.0/8) or split it",
            )
        if tok.kind != "word":
            raise self.fail(tok, "a field name (" + ", ".join(FIELDS) + ")")
        field = FIELDS.get(tok.text.upper())
        if field is None:
            raise FilterError(self.text, tok.position, f"unknown field {tok.text!r}; fields are " + ", ".join(FIELDS))
        op = self.take()
        if op.text not in COMPARATORS:
            raise self.fail(op, f"a comparison operator ({' '.join(COMPARATORS)}) after {field.name}")
        if field.kind in EQUALITY_ONLY and op.text not in ("==", "!="):
            raise FilterError(
                self.text, op.position, f"{field.name} compares only with == or != (an {field.kind.value} has no order)"
            )
        value = self.take()
        if value.kind != "word":
            raise self.fail(value, f"a value for {field.name} ({_VALUE_HELP[field.kind]})")
        return Comparison(field, op.text, _value(self.text, field, value))


_VALUE_HELP = {
    Kind.ADDRESS: "an IPv4 or IPv6 address, or a prefix such as 10.0.0.0/8",
    Kind.PORT: "a port number 0-65535",
    Kind.PROTOCOL: "a protocol name such as tcp, udp, icmp, or a number 0-255",
    Kind.COUNT: f"a whole number 0-{MAX_COUNT}",
    Kind.COUNTRY: "a two-letter country code such as US, or a pseudo-code " + ", ".join(PSEUDO_COUNTRIES),
    Kind.ASN: "an AS number such as 64500 or AS64500",
}


def _value(text: str, field: Field, tok: Token) -> int | str | AddressRange:
    raw = tok.text

    def bad(detail: str = "") -> FilterError:
        return FilterError(
            text,
            tok.position,
            f"{raw!r} is not {_VALUE_HELP[field.kind]} for {field.name}" + (f": {detail}" if detail else ""),
        )

    kind = field.kind
    if kind is Kind.ADDRESS:
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if "/" in raw and net.network_address != ipaddress.ip_interface(raw).ip:
            raise bad(f"host bits set; did you mean {net}?")
        return AddressRange.of(net)
    if kind is Kind.COUNTRY:
        code = raw.upper()
        if not re.fullmatch(r"[A-Z]{2}", code):
            raise bad()
        return code
    if kind is Kind.PROTOCOL:
        if raw.lower() in PROTOCOLS:
            return PROTOCOLS[raw.lower()]
        number = _integer(raw)
        if number is None or number > 255:
            raise bad()
        return number
    if kind is Kind.ASN and raw.upper().startswith("AS"):
        raw_number = raw[2:]
    else:
        raw_number = raw
    number = _integer(raw_number)
    limit = {Kind.PORT: 65535, Kind.COUNT: MAX_COUNT, Kind.ASN: 2**32 - 1}[kind]
    if number is None or number > limit:
        raise bad()
    return number


def _integer(raw: str) -> int | None:
    return int(raw) if re.fullmatch(r"[0-9]{1,20}", raw) else None


def parse(text: str) -> Node:
    """Parse a filter; raises :class:`FilterError` (never anything else) on bad input."""
    if not isinstance(text, str):
        raise FilterError(str(text), 0, "a filter must be text")
    if len(text) > MAX_LENGTH:
        raise FilterError(text[:100], 100, f"the filter is longer than {MAX_LENGTH:,} characters")
    return _Parser(text).parse()


# -- back to text ------------------------------------------------------------------------

_PRECEDENCE = {Or: 1, Xor: 2, And: 3}
_SYMBOL = {Or: "||", Xor: "^|", And: "&&"}


def to_text(node: Node, parent: int = 0) -> str:
    """Canonical text of a filter: parse(to_text(n)) == n."""
    if isinstance(node, Comparison):
        v = node.value
        if isinstance(v, AddressRange):
            value = v.text
        elif node.field.kind is Kind.PROTOCOL and isinstance(v, int) and v in PROTOCOL_NAMES:
            value = PROTOCOL_NAMES[v]
        else:
            value = str(v)
        return f"{node.field.name} {node.op} {value}"
    if isinstance(node, Not):
        return "!" + to_text(node.operand, 4)
    level = _PRECEDENCE[type(node)]
    # an operand of the same level was parenthesised (else it would be part of this run)
    text = f" {_SYMBOL[type(node)]} ".join(to_text(operand, level + 1) for operand in node.operands)
    return f"({text})" if level < parent else text
