"""Shaping a batch of sessions into entity rows: what every alert definition evaluates.

Endpoint entities (host, country, ASN) get two rows per session (client side, server side),
host pairs and ports one. Keys are 64-bit integers (addresses folded, pairs ordered), so
that the engine's ``KeyIndex`` can give them dense ids; per-row values, roles and peers come
from column arithmetic, never from a Python loop over sessions.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ..compiled import njit
from ..flows.schema import SessionBatch, addr_bytes, addr_text, big_endian
from ..query.filter import PROTOCOL_NAMES, PROTOCOLS
from .definition import AlertMetric, EntityType
from .keyindex import mix64_one, ordered_pair_key


def address_keys(addr16: np.ndarray) -> np.ndarray:
    """One 64-bit key per 16-byte address; IPv4 addresses map to themselves (exact): the
    lower 64 bits of the address (big-endian) xor ``mix64`` of the upper."""
    return _address_keys(np.ascontiguousarray(addr16, np.uint8))


@njit(cache=True, nogil=True)
def _address_keys(addr16: np.ndarray) -> np.ndarray:
    # one compiled pass: numpy's halves, byte swaps and the hash's five passes took 7.7 ns an
    # address, this 2.2 (131,072 addresses); every session's two are keyed for host alerts
    words = addr16.view(np.uint64)
    out = np.empty(addr16.shape[0], np.uint64)
    for i in range(addr16.shape[0]):
        out[i] = big_endian(words[i, 1], 8) ^ mix64_one(big_endian(words[i, 0], 8))
    return out


def watched_keys(kind: EntityType, texts: list[str]) -> np.ndarray:
    """The keys of entities given as their canonical text (``definition.canonical_entity``),
    the same as ``EntityRows`` gives their rows."""

    def addresses(values: list[str]) -> np.ndarray:
        return address_keys(np.frombuffer(b"".join(addr_bytes(v) for v in values), np.uint8).reshape(-1, 16))

    if not texts:
        return np.empty(0, np.uint64)
    if kind is EntityType.HOST:
        return addresses(texts)
    if kind is EntityType.HOST_PAIR:
        pairs = [t.split(" -> ") for t in texts]
        return ordered_pair_key(addresses([a for a, _ in pairs]), addresses([b for _, b in pairs]))
    if kind is EntityType.PORT:
        out = []
        for t in texts:
            port, _, proto = t.partition("/")
            out.append((PROTOCOLS.get(proto, int(proto) if proto.isdigit() else 0) << 16) | int(port))
        return np.array(out, np.uint64)
    if kind is EntityType.COUNTRY:
        return np.array([t.encode() for t in texts], "S2").view(">u2").astype(np.uint64)
    return np.array([int(t) for t in texts], np.uint64)


class BatchKeys:
    """Per-batch values several entity types share, computed once and only when needed."""

    def __init__(self, sessions: SessionBatch):
        self.sessions = sessions

    @cached_property
    def cln(self) -> np.ndarray:
        return address_keys(self.sessions["cln_addr"])

    @cached_property
    def srv(self) -> np.ndarray:
        return address_keys(self.sessions["srv_addr"])

    @cached_property
    def port(self) -> np.ndarray:
        sessions = self.sessions
        return (sessions["protocol"].astype(np.uint64) << np.uint64(16)) | sessions["srv_port"].astype(np.uint64)


class EntityRows:
    """A batch of sessions as rows of one entity type: keys, sides and values. Endpoint
    types have rows ``0..n-1`` for the client sides and ``n..2n-1`` for the server sides."""

    def __init__(self, kind: EntityType, sessions: SessionBatch, new: np.ndarray, shared: BatchKeys):
        self.kind = kind
        self.sessions = sessions
        self.shared = shared
        n = len(sessions)
        self.n_sessions = n
        self.new_session = new
        self.valid: np.ndarray | None = None  # None: every row
        if kind.is_endpoint:
            if kind is EntityType.HOST:
                self.keys = np.concatenate([shared.cln, shared.srv])
            elif kind is EntityType.COUNTRY:
                self.keys = (
                    np.concatenate([sessions["cln_country"], sessions["srv_country"]]).view(">u2").astype(np.uint64)
                )
            else:
                asn = np.concatenate([sessions["cln_asn"], sessions["srv_asn"]])
                self.keys = asn.astype(np.uint64)
                self.valid = asn != 0  # sessions without an AS number do not count for ASN alerts
        else:
            self.keys = ordered_pair_key(shared.cln, shared.srv) if kind is EntityType.HOST_PAIR else shared.port
        # set by the engine: each row's dense entity id; the batch's distinct ids (``uniq``),
        # each row's position among them (``inv``) and each one's first row (``first``)
        self.ids = self.uniq = self.inv = self.first = np.empty(0, np.int64)
        self._cache: dict[str, np.ndarray] = {}

    @cached_property
    def is_client(self) -> np.ndarray | None:
        """Per row, whether it is a client side; None for host pairs and ports (one row each)."""
        if not self.kind.is_endpoint:
            return None
        out = np.zeros(2 * self.n_sessions, bool)
        out[: self.n_sessions] = True
        return out

    @cached_property
    def every_row(self) -> np.ndarray:
        """True for every row: what the compiled passes take for "no rows left out"."""
        return np.ones(len(self.keys), bool)

    @cached_property
    def same_entity(self) -> tuple[np.ndarray, bool]:
        """Endpoint types, once ``ids`` are set: per session, whether both ends are one entity
        (two hosts of one country), and whether any session is so."""
        n = self.n_sessions
        same = self.ids[:n] == self.ids[n:]
        return same, bool(same.any())

    @cached_property
    def own_addr(self) -> np.ndarray:
        return np.concatenate([self.sessions["cln_addr"], self.sessions["srv_addr"]])

    @cached_property
    def own_country(self) -> np.ndarray:
        return np.concatenate([self.sessions["cln_country"], self.sessions["srv_country"]])

    def session_col(self, name: str) -> np.ndarray:
        col = self.sessions[name]
        return np.concatenate([col, col]) if self.kind.is_endpoint else col

    def _sides(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(own, other) per row; for host pairs and ports: (client side, server side). Made
        once per batch: several metrics (bytes sent, received, bits ...) read the same."""
        key = "sides:" + what
        if key not in self._cache:
            client_side = self.sessions[f"cln_{what}"].astype(np.int64)
            server_side = self.sessions[f"srv_{what}"].astype(np.int64)
            if self.kind.is_endpoint:
                own = np.concatenate([client_side, server_side])
                self._cache[key], self._cache[key + ":other"] = (
                    own,
                    np.concatenate([own[len(client_side) :], own[: len(client_side)]]),
                )
            else:
                self._cache[key], self._cache[key + ":other"] = client_side, server_side
        return self._cache[key], self._cache[key + ":other"]

    def values(self, metric: AlertMetric) -> np.ndarray:
        """What each row adds to ``metric``."""
        if metric.value in self._cache:
            return self._cache[metric.value]
        name = metric.value
        if name.startswith("sessions"):
            out = self.session_col_of(self.new_session).astype(np.int64)
        else:
            unit, _, direction = name.partition("_")
            own, other = self._sides("pkts" if unit == "packets" else "bytes")
            out = own if direction == "sent" else other if direction == "received" else own + other
            if unit == "bits":
                out = out * 8
        self._cache[metric.value] = out
        return out

    def session_col_of(self, per_session: np.ndarray) -> np.ndarray:
        return np.concatenate([per_session, per_session]) if self.kind.is_endpoint else per_session

    def role(self, metric: AlertMetric) -> np.ndarray:
        """Rows that concern the entity for this metric (those a COUNT may count)."""
        key = "role:" + metric.value
        if key not in self._cache:
            self._cache[key] = self._role(metric)
        return self._cache[key]

    def _role(self, metric: AlertMetric) -> np.ndarray:
        if metric is AlertMetric.SESSIONS_INITIATED and self.is_client is not None:
            out = self.is_client
        elif metric is AlertMetric.SESSIONS_RECEIVED and self.is_client is not None:
            out = ~self.is_client
        elif metric.is_distinct or metric.value.startswith("sessions"):
            out = np.ones(len(self.keys), bool)
        else:
            out = self.values(metric) > 0
        return out if self.valid is None else out & self.valid

    def peers(self, metric: AlertMetric) -> np.ndarray:
        """Each row's peer key for a distinct metric (unique hosts: the other side's address)."""
        key = "peers:" + metric.value
        if key not in self._cache:
            sh = self.shared
            if metric is AlertMetric.UNIQUE_HOSTS:
                self._cache[key] = np.concatenate([sh.srv, sh.cln]) if self.kind.is_endpoint else sh.cln
            else:
                self._cache[key] = self.session_col_of(sh.port)
        return self._cache[key]

    def own_addresses(self) -> list[np.ndarray]:
        sessions = self.sessions
        if self.kind.is_endpoint:
            return [self.own_addr]
        if self.kind is EntityType.HOST_PAIR:
            return [sessions["cln_addr"], sessions["srv_addr"]]
        return [sessions["srv_addr"]]

    def own_countries(self) -> list[np.ndarray]:
        sessions = self.sessions
        if self.kind.is_endpoint:
            return [self.own_country]
        if self.kind is EntityType.HOST_PAIR:
            return [sessions["cln_country"], sessions["srv_country"]]
        return [sessions["srv_country"]]

    def text(self, row: int) -> str:
        """The entity of one row as text (used once per alerting entity)."""
        sessions = self.sessions
        session = row % self.n_sessions  # an endpoint type's server side is row n + its session
        if self.kind is EntityType.HOST:
            return addr_text(bytes(self.own_addr[row]))
        if self.kind is EntityType.COUNTRY:
            return self.own_country[row].decode("ascii", "replace")
        if self.kind is EntityType.ASN:
            return str(int(self.keys[row]))
        if self.kind is EntityType.HOST_PAIR:
            client, server = sessions["cln_addr"][session], sessions["srv_addr"][session]
            return f"{addr_text(bytes(client))} -> {addr_text(bytes(server))}"
        proto = int(sessions["protocol"][session])
        return f"{int(sessions['srv_port'][session])}/{PROTOCOL_NAMES.get(proto, str(proto))}"
