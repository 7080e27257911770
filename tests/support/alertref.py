"""A plain-Python reference of the alert semantics (docs/alerts.md), one session at a time.

Deliberately naive: lists, dicts and sets, no numpy, so that the vectorised engine has
something independent to agree with.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass

from sluice.alerts.definition import AlertMetric, Definition, EntityType

# Constants of its own, from the documents (DESIGN.md §4, docs/alerts.md), not imported from the
# code it checks: a change of the code's tables must make the comparison fail.

#: "evaluated in steps of at most T/60, never coarser than one minute" (DESIGN.md §4)
def reference_step_s(interval_s: int) -> int:
    return max(1, min(interval_s // 60, 60))


#: the message's words (DESIGN.md §4, docs/alerts.md)
_ENTITY_WORDS = {"host": "address", "host_pair": "host pair", "port": "port", "country": "country", "asn": "ASN"}
_METRIC_WORDS = {"bits_sent": "bits sent", "bits_received": "bits received", "bits_total": "total bits",
                 "bytes_sent": "bytes sent", "bytes_received": "bytes received", "bytes_total": "total bytes",
                 "packets_sent": "packets sent", "packets_received": "packets received",
                 "packets_total": "total packets", "sessions_initiated": "sessions initiated",
                 "sessions_received": "sessions received", "unique_hosts": "unique hosts",
                 "unique_ports": "unique ports"}
#: how a port entity names its protocol (docs/alerts.md: 53/udp)
_PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 58: "icmp6", 132: "sctp"}


def reference_message(metric: AlertMetric, entity: EntityType, text: str, per_second: bool = False) -> str:
    words = _METRIC_WORDS[metric.value]
    if entity.value in ("host_pair", "port") and metric.value.startswith("sessions_"):
        words = "sessions"  # a pair or a port has no side that initiates
    if per_second:
        words += " per second"
    return f"Upper threshold exceeded on {words} for {_ENTITY_WORDS[entity.value]} {text}."


@dataclass
class Sess:
    session_id: int
    cln: str
    srv: str
    cport: int
    sport: int
    proto: int
    cbytes: int
    sbytes: int
    cpkts: int
    spkts: int
    ccountry: str = "ZZ"
    scountry: str = "ZZ"
    casn: int = 0
    sasn: int = 0
    new: bool = True


def _canon(a: str) -> str:
    return str(ipaddress.ip_address(a))


def entity_rows(kind: EntityType, s: Sess) -> list[dict]:
    """The rows a session gives an entity type: entity text, own addresses/countries, sides."""
    if kind.is_endpoint:
        out = []
        for side in ("c", "s"):
            own, other = (s.cln, s.srv) if side == "c" else (s.srv, s.cln)
            country = s.ccountry if side == "c" else s.scountry
            asn = s.casn if side == "c" else s.sasn
            if kind is EntityType.ASN and asn == 0:
                continue
            entity = {EntityType.HOST: _canon(own), EntityType.COUNTRY: country, EntityType.ASN: str(asn)}[kind]
            sent = (s.cbytes, s.cpkts) if side == "c" else (s.sbytes, s.spkts)
            recv = (s.sbytes, s.spkts) if side == "c" else (s.cbytes, s.cpkts)
            out.append(dict(entity=entity, client=side == "c", own=[own], countries=[country], sent=sent, recv=recv,
                            peer_host=_canon(other), peer_port=(s.proto, s.sport), sport=s.sport, session=s))
        return out
    sent, recv = (s.cbytes, s.cpkts), (s.sbytes, s.spkts)
    if kind is EntityType.HOST_PAIR:
        return [dict(entity=f"{_canon(s.cln)} -> {_canon(s.srv)}", client=None, own=[s.cln, s.srv],
                     countries=[s.ccountry, s.scountry], sent=sent, recv=recv, peer_host=None,
                     peer_port=(s.proto, s.sport), sport=s.sport, session=s)]
    return [dict(entity=f"{s.sport}/{_PROTOCOL_NAMES.get(s.proto, str(s.proto))}", client=None, own=[s.srv],
                 countries=[s.scountry], sent=sent, recv=recv, peer_host=_canon(s.cln), peer_port=None,
                 sport=s.sport, session=s)]


def contribution(metric: AlertMetric, row: dict) -> tuple[bool, object]:
    """(concerns the entity, what it adds: an amount, or a peer for distinct metrics)."""
    s: Sess = row["session"]
    name = metric.value
    if metric is AlertMetric.UNIQUE_HOSTS:
        return True, row["peer_host"]
    if metric is AlertMetric.UNIQUE_PORTS:
        return True, row["peer_port"]
    if name.startswith("sessions"):
        if row["client"] is not None:
            if (metric is AlertMetric.SESSIONS_INITIATED) != row["client"]:
                return False, 0
        return True, int(s.new)
    unit, _, direction = name.partition("_")
    i = 1 if unit == "packets" else 0
    amount = {"sent": row["sent"][i], "received": row["recv"][i], "total": row["sent"][i] + row["recv"][i]}[direction]
    if unit == "bits":
        amount *= 8
    return amount > 0, amount


def _in(addr: str, cidr: str) -> bool:
    a = ipaddress.ip_address(addr)
    n = ipaddress.ip_network(cidr)
    return a.version == n.version and a in n


class Reference:
    def __init__(self, d: Definition, keep=lambda s: True):
        self.d = d
        self.keep = keep  # the prefilter, as a Python predicate over Sess
        self.step_ms = reference_step_s(d.interval_s) * 1000
        self.n = d.interval_s // reference_step_s(d.interval_s)
        self.history: list[tuple[int, dict, object]] = []  # (bucket, row, what it adds)
        # COUNT (docs/alerts.md): (entity, session, period) contributions, and those counted
        self.contributions: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self.counted: set[tuple[str, int, int]] = set()

    def excluded(self, row: dict) -> bool:
        ex = self.d.exceptions
        if row["sport"] in ex.ports:
            return True
        if any(_in(a, c) for a in row["own"] for c in ex.addresses):
            return True
        return any(c in ex.countries for c in row["countries"])

    def threshold(self, row: dict) -> int:
        best, thr = -1, self.d.threshold
        for o in self.d.exceptions.thresholds:
            net = ipaddress.ip_network(o.cidr)
            plen = net.prefixlen + (96 if net.version == 4 else 0)
            if any(_in(a, o.cidr) for a in row["own"]) and plen >= best:
                best, thr = plen, o.threshold
        return thr

    def evaluate(self, sessions: list[Sess], now_ms: int) -> list[tuple]:
        """The events of a batch of sessions arriving at ``now_ms``."""
        bucket = now_ms // self.step_ms
        rows = []
        for s in sessions:
            if not self.keep(s):
                continue
            for row in entity_rows(self.d.entity, s):
                concerns, c = contribution(self.d.metric, row)
                if concerns and not self.excluded(row):
                    rows.append(row)
                    self.history.append((bucket, row, c))
                    self.contributions[row["entity"]].add((s.session_id, bucket))
        oldest = bucket - self.n + 1
        window = defaultdict(list)
        for b, row, c in self.history:
            if b >= oldest:
                window[row["entity"]].append(c)
        events = []
        by_entity = defaultdict(list)
        for row in rows:
            by_entity[row["entity"]].append(row)
        for entity, erows in by_entity.items():
            values = window[entity]
            value = len(set(values)) if self.d.metric.is_distinct else sum(values)
            thr = self.threshold(erows[0])
            if self.d.per_second:  # a rate: the window's total against the rate over the whole interval
                if value <= thr * self.d.interval_s:
                    continue
                value = (value + self.d.interval_s - 1) // self.d.interval_s  # rounded up
            elif value <= thr:
                continue
            # over: every contribution in the window not counted yet counts now
            inc = 0
            for sid, b in self.contributions[entity]:
                key = (entity, sid, b)
                if b >= oldest and key not in self.counted:
                    self.counted.add(key)
                    inc += 1
            if inc:
                events.append((self.d.id, entity, reference_message(self.d.metric, self.d.entity, entity, self.d.per_second),
                               inc, value, thr))
        return sorted(events)
