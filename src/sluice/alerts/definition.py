"""Alert definitions (DESIGN.md §4): what a user asks to be told about, validated.

*Trigger an alert when the number of [metric] for any one [entity] exceeds [threshold] over
[interval]* - or, as flood detectors put it, exceeds [threshold] *per second* over [interval]
(``per_second``: the window's total against the rate times the interval) - with a severity,
a prefilter in the filter language, and per-entity exceptions:
addresses/CIDRs, server ports and countries never alert, and CIDRs may carry their own
threshold. A *lower* threshold turns it round for a watched list of entities: *trigger an
alert when the number of [metric] for [entity] falls below [threshold] over [interval]* (a
server that must keep answering, a port, a country's traffic). A *baseline* learns what is
usual for each entity: *trigger an alert when [metric] for any one [entity] exceeds [K] times
its usual value over [interval]*, above a minimum volume.
"""

from __future__ import annotations

import ipaddress
import re
from enum import Enum
from typing import Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from ..query.filter import MAX_LENGTH, PROTOCOL_NAMES, PROTOCOLS, FilterError, Node, parse

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


class Severity(str, Enum):
    INFO = "INFO"
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class ThresholdType(str, Enum):
    UPPER = "upper"  # any one entity exceeds it
    LOWER = "lower"  # a watched entity falls below it
    BASELINE = "baseline"  # any one entity exceeds K times its usual value

    @property
    def word(self) -> str:
        return "Lower" if self is ThresholdType.LOWER else "Upper"


#: a baseline alerts only once it has learned for this long
BASELINE_LEARNING_S = 86_400


class EntityType(str, Enum):
    HOST = "host"
    HOST_PAIR = "host_pair"
    PORT = "port"
    COUNTRY = "country"
    ASN = "asn"

    @property
    def is_endpoint(self) -> bool:
        """Host, country and ASN: every session has two of them (client side, server side)."""
        return self in (EntityType.HOST, EntityType.COUNTRY, EntityType.ASN)


class AlertMetric(str, Enum):
    BITS_SENT = "bits_sent"
    BITS_RECEIVED = "bits_received"
    BITS_TOTAL = "bits_total"
    BYTES_SENT = "bytes_sent"
    BYTES_RECEIVED = "bytes_received"
    BYTES_TOTAL = "bytes_total"
    PACKETS_SENT = "packets_sent"
    PACKETS_RECEIVED = "packets_received"
    PACKETS_TOTAL = "packets_total"
    SESSIONS_INITIATED = "sessions_initiated"
    SESSIONS_RECEIVED = "sessions_received"
    UNIQUE_HOSTS = "unique_hosts"
    UNIQUE_PORTS = "unique_ports"

    @property
    def is_distinct(self) -> bool:
        return self in (AlertMetric.UNIQUE_HOSTS, AlertMetric.UNIQUE_PORTS)


#: the intervals a definition may use, by name, in seconds
INTERVALS: dict[str, int] = {
    "10s": 10,  # short windows (steps of one second) for floods, with a threshold per second
    "30s": 30,
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "6h": 21600,
    "12h": 43200,
    "1d": 86400,
}
INTERVAL_NAMES = {v: k for k, v in INTERVALS.items()}

ENTITY_WORDS = {
    EntityType.HOST: "address",
    EntityType.HOST_PAIR: "host pair",
    EntityType.PORT: "port",
    EntityType.COUNTRY: "country",
    EntityType.ASN: "ASN",
}
_METRIC_WORDS = {
    AlertMetric.BITS_SENT: "bits sent",
    AlertMetric.BITS_RECEIVED: "bits received",
    AlertMetric.BITS_TOTAL: "total bits",
    AlertMetric.BYTES_SENT: "bytes sent",
    AlertMetric.BYTES_RECEIVED: "bytes received",
    AlertMetric.BYTES_TOTAL: "total bytes",
    AlertMetric.PACKETS_SENT: "packets sent",
    AlertMetric.PACKETS_RECEIVED: "packets received",
    AlertMetric.PACKETS_TOTAL: "total packets",
    AlertMetric.SESSIONS_INITIATED: "sessions initiated",
    AlertMetric.SESSIONS_RECEIVED: "sessions received",
    AlertMetric.UNIQUE_HOSTS: "unique hosts",
    AlertMetric.UNIQUE_PORTS: "unique ports",
}

#: combinations that have no meaning, with the reason given to the user
_INVALID = {
    (EntityType.HOST_PAIR, AlertMetric.UNIQUE_HOSTS): "a host pair always has exactly two hosts",
    (EntityType.PORT, AlertMetric.UNIQUE_PORTS): "a port entity is a single port",
}


def metric_words(metric: AlertMetric, entity: EntityType) -> str:
    if not entity.is_endpoint and metric in (AlertMetric.SESSIONS_INITIATED, AlertMetric.SESSIONS_RECEIVED):
        return "sessions"  # a host pair or a port has no side that initiates
    return _METRIC_WORDS[metric]


def alert_message(
    metric: AlertMetric,
    entity: EntityType,
    entity_text: str,
    per_second: bool = False,
    kind: ThresholdType = ThresholdType.UPPER,
    baseline: tuple[int, int] | None = None,
) -> str:
    """``Upper threshold exceeded on <metric> for <entity type> <entity>.`` (``Lower`` for a
    lower threshold; a rate: ``<metric> per second``; a baseline (K, usual) says how it was
    exceeded)"""
    words = metric_words(metric, entity) + (" per second" if per_second else "")
    text = f"{kind.word} threshold exceeded on {words} for {ENTITY_WORDS[entity]} {entity_text}"
    if baseline is not None:
        return f"{text}: more than {baseline[0]} times its usual {baseline[1]}."
    return text + "."


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"watched address {text!r} is not an IP address") from None


def canonical_entity(entity: EntityType, text: str) -> str:
    """A watched entity as the alert records name it: ``10.0.0.1``, ``10.0.0.1 -> 10.0.0.2``,
    ``53/udp``, ``NL``, ``64500``; ValueError saying what a valid one looks like."""
    if not isinstance(text, str) or _CONTROL.search(text) or not text.strip():
        raise ValueError(f"watched {ENTITY_WORDS[entity]} {text!r} is blank or has control characters")
    text = text.strip()
    if entity is EntityType.HOST:
        return _address(text)
    if entity is EntityType.HOST_PAIR:
        parts = [p for p in re.split(r"\s*(?:->|,|\s)\s*", text) if p]
        if len(parts) != 2:
            raise ValueError(f"watched host pair {text!r} is not two addresses (client first): 10.0.0.1 -> 10.0.0.2")
        return f"{_address(parts[0])} -> {_address(parts[1])}"
    if entity is EntityType.PORT:
        number, _, proto = text.lower().partition("/")
        proto_number = PROTOCOLS.get(proto) if not proto.isdigit() else int(proto)
        if not number.isdigit() or int(number) > 65535 or proto_number is None or not 0 <= proto_number <= 255:
            raise ValueError(f"watched port {text!r} is not a port and protocol, like 53/udp or 443/tcp")
        return f"{int(number)}/{PROTOCOL_NAMES.get(proto_number, str(proto_number))}"
    if entity is EntityType.COUNTRY:
        if not re.fullmatch(r"[A-Za-z]{2}", text):
            raise ValueError(f"watched country {text!r} is not a two-letter code like US or NL")
        return text.upper()
    number = text.upper().removeprefix("AS")
    if not number.isdigit() or not 0 < int(number) < 2**32:
        raise ValueError(f"watched ASN {text!r} is not an AS number, like 64500 or AS64500")
    return str(int(number))


def step_seconds(interval_s: int) -> int:
    """Evaluation step (alerting period) of a window: T/60, never finer than one second nor
    coarser than one minute."""
    return max(1, min(interval_s // 60, 60))


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str) or _CONTROL.search(text):
        raise ValueError(f"{what} {text!r} is not an address or CIDR")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an address or CIDR (like 10.0.0.0/8 or 2001:db8::/32)") from None


class ThresholdOverride(BaseModel):
    cidr: str = Field(..., description="addresses (CIDR) that get their own threshold")
    threshold: int = Field(..., ge=0, le=2**62)

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        return str(_network(v, "threshold override"))


class Exceptions(BaseModel):
    """Entities that never alert, and per-CIDR thresholds (see docs/alerts.md)."""

    addresses: list[str] = Field(
        default_factory=list, max_length=1000, description="addresses or CIDRs whose entities never alert"
    )
    ports: list[int] = Field(
        default_factory=list, max_length=1000, description="server ports whose sessions this definition ignores"
    )
    countries: list[str] = Field(
        default_factory=list, max_length=300, description="country codes whose entities never alert"
    )
    thresholds: list[ThresholdOverride] = Field(default_factory=list, max_length=1000)

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [str(_network(a, "excepted address")) for a in v]

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        for p in v:
            if not 0 <= p <= 65535:
                raise ValueError(f"excepted port {p} is not between 0 and 65535")
        return sorted(set(v))

    @field_validator("countries")
    @classmethod
    def _countries(cls, v: list[str]) -> list[str]:
        out = []
        for c in v:
            if not isinstance(c, str) or not re.fullmatch(r"[A-Za-z]{2}", c):
                raise ValueError(f"excepted country {c!r} is not a two-letter code like US or NL")
            out.append(c.upper())
        return sorted(set(out))


class DefinitionIn(BaseModel):
    """An alert definition as a user writes it (API, command line, web page)."""

    title: str = Field(..., min_length=1, max_length=200)
    description: str = Field("", max_length=4000)
    prefilter: str = Field("", max_length=MAX_LENGTH, description="filter language; blank: all sessions")
    metric: AlertMetric
    entity: EntityType
    threshold: int = Field(..., ge=0, le=2**62, description="alert when the metric exceeds this (falls below: lower)")
    threshold_type: ThresholdType = Field(
        ThresholdType.UPPER,
        description="upper: any one entity exceeds the threshold; lower: a watched entity falls below it; "
        "baseline: any one entity exceeds the threshold (K) times its usual value",
    )
    watch: list[str] = Field(
        default_factory=list, max_length=1000, description="lower thresholds: the entities watched"
    )
    min_volume: int = Field(
        0, ge=0, le=2**62, description="baselines: the least window value that may alert (quiet entities do not)"
    )
    baseline_days: int = Field(
        7, ge=1, le=90, description="baselines: how many days the usual value mostly reflects (its time constant)"
    )
    per_second: bool = Field(
        False,
        description="the threshold (and its CIDR overrides) is a rate: the metric per second, "
        "averaged over the interval; alert values are then rates too",
    )
    interval: str = Field("5m", description="window length: " + ", ".join(INTERVALS))
    severity: Severity = Severity.MEDIUM
    enabled: bool = True
    exceptions: Exceptions = Field(default_factory=Exceptions)
    renotify: Optional[str] = Field(
        None,
        description="while an alert keeps triggering, notify again at most this "
        "often (" + ", ".join(INTERVALS) + "); blank: the interval",
    )

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        if _CONTROL.search(v):
            raise ValueError("the title must be one line without control characters")
        if not v.strip():
            raise ValueError("the title must not be blank")
        return v.strip()

    @field_validator("description")
    @classmethod
    def _description(cls, v: str) -> str:
        if _CONTROL_BUT_NEWLINE.search(v):
            raise ValueError("the description must not contain control characters other than line breaks")
        return v

    @field_validator("prefilter")
    @classmethod
    def _prefilter(cls, v: str) -> str:
        if v.strip():
            try:
                parse(v)
            except FilterError as exc:
                raise ValueError(f"prefilter: {exc}") from None
        return v.strip()

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: object) -> str:
        if isinstance(v, int) and not isinstance(v, bool) and v in INTERVAL_NAMES:
            return INTERVAL_NAMES[v]
        if isinstance(v, str) and v.strip().lower() in INTERVALS:
            return v.strip().lower()
        raise ValueError(f"interval {v!r} is not one of {', '.join(INTERVALS)} (or their length in seconds)")

    @field_validator("renotify", mode="before")
    @classmethod
    def _renotify(cls, v: object) -> Optional[str]:
        if v in (None, ""):
            return None
        try:
            return cls._interval(v)
        except ValueError:
            raise ValueError(
                f"renotify {v!r} is not one of {', '.join(INTERVALS)} (or their length in seconds)"
            ) from None

    @model_validator(mode="after")
    def _combination(self) -> DefinitionIn:
        reason = _INVALID.get((self.entity, self.metric))
        if reason:
            raise ValueError(f"metric {self.metric.value} does not apply to entity {self.entity.value}: {reason}")
        if self.exceptions.thresholds and self.entity not in (EntityType.HOST, EntityType.HOST_PAIR):
            raise ValueError("threshold overrides by CIDR apply to host and host_pair alerts only")
        if self.threshold_type is ThresholdType.LOWER:
            if not self.watch:
                raise ValueError(
                    "a lower threshold needs the entities to watch (watch: addresses, ports like 53/udp, "
                    "countries or AS numbers): 'any one' entity below a threshold has no end"
                )
            ex = self.exceptions
            if ex.addresses or ex.countries or ex.thresholds:
                raise ValueError(
                    "a lower threshold applies to its watched entities only: leave out excepted addresses, "
                    "countries and per-CIDR thresholds (excepted server ports still apply)"
                )
            self.watch = list(dict.fromkeys(canonical_entity(self.entity, w) for w in self.watch))
        elif self.watch:
            raise ValueError("watch is for lower thresholds; an upper threshold applies to any one entity")
        if self.threshold_type is ThresholdType.BASELINE:
            if not 1 <= self.threshold <= 1_000_000:
                raise ValueError(
                    f"a baseline's threshold is how many times the usual value: 1 to 1000000, not {self.threshold}"
                )
            if self.min_volume < 1:
                raise ValueError(
                    "a baseline needs min_volume, the least value that may alert (say 10000000 bytes): "
                    "without it quiet entities alert on noise"
                )
            if self.per_second or self.exceptions.thresholds:
                raise ValueError(
                    "a baseline's threshold is a factor of each entity's usual value: "
                    "it has no rate and no per-CIDR thresholds"
                )
        if self.per_second and self.metric.is_distinct:
            raise ValueError(
                f"a threshold per second applies to bits, bytes, packets and sessions, not to {self.metric.value}: "
                "write the threshold as a count over the interval"
            )
        largest = max([self.threshold] + [o.threshold for o in self.exceptions.thresholds])
        if self.per_second and largest * self.interval_s > 2**62:
            raise ValueError(
                f"a threshold of {largest} per second over {self.interval} is out of range (at most 2^62 in all)"
            )
        return self

    def window_threshold(self, threshold: int) -> int:
        """What the window's total is held against: ``threshold`` times the interval for a rate."""
        return threshold * self.interval_s if self.per_second else threshold

    def reported(self, window_value: int) -> int:
        """An alert's value as the user wrote the threshold: a rate is the window's total over
        the interval, rounded up (so that a value above the threshold still reads above it)."""
        return -(-window_value // self.interval_s) if self.per_second else window_value

    @property
    def interval_s(self) -> int:
        return INTERVALS[self.interval]

    @property
    def renotify_s(self) -> Optional[int]:
        return INTERVALS[self.renotify] if self.renotify else None

    def compiled_prefilter(self) -> Optional[Node]:
        return parse(self.prefilter) if self.prefilter else None

    def window_signature(self) -> str:
        """What the window state depends on: change any of it and the state starts afresh."""
        return "|".join(
            [
                self.metric.value,
                self.entity.value,
                self.interval,
                self.prefilter,
                self.exceptions.model_dump_json(exclude={"thresholds"}),
                # a lower threshold's window holds its watched entities only; a baseline's state
                # holds what it learned
                *(
                    [self.threshold_type.value, ",".join(self.watch)]
                    if self.threshold_type is not ThresholdType.UPPER
                    else []
                ),
            ]
        )


class Definition(DefinitionIn):
    """A stored definition: its number (ALERTDEF) and owner."""

    id: int
    user_id: int
    username: str = ""

    @field_validator("prefilter")
    @classmethod
    def _prefilter(cls, v: str) -> str:
        """Stored definitions are taken as saved: one that today's parser refuses (say, saved
        before a limit was set) must still list, edit and delete; the engine sets it aside as
        failed, with the parser's reason, instead of failing every listing."""
        return v.strip()
