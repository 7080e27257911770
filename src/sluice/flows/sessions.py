"""Session assembly: flows (one direction each) -> sessions (client and server), vectorised.

A bounded in-memory connection tracker folds the two directions of a conversation, and the
repeated updates an exporter sends for a long one (its active timeout), into one session
with a stable ``session_id``. For every batch of flows it returns one *delta* row per session
the batch touched: the bytes and packets each side sent in that batch, the time span they
cover, and the session's fixed client/server orientation. Summing a session's rows gives its
totals; alerts see traffic as it arrives, without waiting for the session to end.

Orientation is decided once, when a session is first seen, from the flows of that batch:

1. TCP: a flow with SYN and without ACK (a connection attempt) was sent by the client;
2. ICMP: the sender of an echo / timestamp / information / router-solicitation request is the
   client, the sender of the reply the server;
3. the lower port is the server (a well-known port, < 1024, against any other is always the
   lower one, so "well-known or else lower" is one rule);
4. equal ports (or none): the sender of the earliest flow is the client.

The key of a conversation is (protocol, the two endpoints in a canonical order), plus the
exporter unless ``dedupe_exporters`` is on: then the first exporter to report a conversation
owns it and other exporters' reports of it are dropped (counted), so that a conversation
crossing two routers is counted once. For ICMP the key has no ports (a request and its reply
carry different type/codes); the session's server port holds the request's type * 256 + code.

A session ends when no flow updated it for ``idle_timeout_s`` (set this above your
exporters' active timeout, or long conversations split), or ``active_timeout_s`` after it
began (the next flow starts a new session). At most ``max_sessions`` are tracked; beyond
that the least recently updated are forgotten early (``sessions_evicted``), down to 90 % of
the bound at once, so that a busy network's stream of new conversations pays for one pass
over the table per tenth of it rather than one per batch.

Keys are 64-bit hashes; two conversations would be confused only on a hash collision
(probability about n^2 / 2^65 for n live sessions: 3e-8 for a million).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import session_table as table
from .schema import Arrivals, FlowBatch, SessionBatch
from .session_table import SYN

# ICMP (type) and ICMPv6 types whose sender is the client, and their replies
ICMP_REQUESTS = np.array([8, 13, 15, 10, 17, 128, 133, 135], np.int64)
ICMP_REPLIES = np.array([0, 14, 16, 9, 18, 129, 134, 136], np.int64)


@dataclass
class TrackerStats:
    sessions_started: int = 0
    sessions_ended_idle: int = 0
    sessions_ended_active: int = 0
    sessions_evicted: int = 0
    flows_deduplicated: int = 0


#: the session columns that ``table.session_fields`` gathers from the rows, in its order
_FIXED_FIELDS = (
    "session_id", "exporter_addr", "protocol", "cln_addr", "srv_addr", "cln_port", "srv_port", "input_if", "output_if",
    "cln_asn", "srv_asn",
)  # fmt: skip


@dataclass
class _State:
    """Live sessions in fixed rows (``live`` marks them), their index, and the free rows."""

    cols: dict[str, np.ndarray] = field(default_factory=dict)
    index_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    index_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    free: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: per row, -1 or its slot in the batch being worked on (the kernels reset it after use)
    slot_of_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: the kernels' counters (``session_table.LIVE`` …)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(table.COUNTERS, np.int64))

    @property
    def cap(self) -> int:
        """Rows allocated, live or free."""
        return len(self.free)


_STATE_COLUMNS = {
    "key": np.uint64,
    "live": np.bool_,
    "session_id": np.uint64,
    "started_ms": np.int64,
    "updated_ms": np.int64,
    "exporter": (np.uint8, 16),
    "cln_addr": (np.uint8, 16),
    "srv_addr": (np.uint8, 16),
    "cln_port": np.uint16,
    "srv_port": np.uint16,
    "protocol": np.uint8,
    "input_if": np.uint32,
    "output_if": np.uint32,
    "cln_asn": np.uint32,
    "srv_asn": np.uint32,
    # whether canonical endpoint A (the lower address, port) is the client: with a flow's
    # a_is_src it tells the flow's direction without comparing 16-byte addresses
    "a_client": np.bool_,
    "exporter_key": np.uint64,  # the exporter address as one integer, for the dedupe check
}


def conversation_keys(flows: FlowBatch, with_exporter: bool) -> tuple[np.ndarray, np.ndarray]:
    """(key, whether the source is canonical endpoint A) per flow: both directions of a
    conversation share a key; ``with_exporter`` makes each exporter's reports a key of their own."""
    return table.conversation_keys(
        flows["src_addr"],
        flows["dst_addr"],
        flows["src_port"],
        flows["dst_port"],
        flows["protocol"],
        flows["exporter_addr"],
        with_exporter,
    )


#: how often ``update`` runs a full expiry pass (the maintenance round runs one too)
EXPIRE_EVERY_MS = 1000
#: a tracker past ``max_sessions`` forgets the least recently updated down to this share of it
EVICT_TO = 0.9
#: an eviction's hint (``table.evict_oldest``) is this share of the age the last one reached
EVICT_HINT_SHARE = 0.95
#: the index is kept at most this full (linear probing stays short below one half)
MAX_INDEX_LOAD = 0.5
#: flows of a batch the tracker has room for from the start, beyond its bound (a larger
#: batch grows the table)
PREALLOCATED_BATCH = 65_536


#: session ids: the node's number in the top 8 bits, then milliseconds since 2020 (41 bits,
#: until 2089) shifted by ``_ID_COUNTER_BITS``: a tracker counts up from the time it starts.
_ID_EPOCH_MS = 1_577_836_800_000
_ID_COUNTER_BITS = 15
NODE_ID_BITS = 8


def first_session_id(node_id: int = 0, step: int = 1) -> int:
    """Where a tracker started now counts its session ids from. Unique across restarts while
    the ids it hands out do not outrun the clock (32 million a second on average), and across
    the servers sharing a store by their ``node_id``. A multiple of ``step``: trackers sharing
    one node's id space (session workers) each take ids of their own residue modulo ``step``,
    also when one of them starts again later."""
    import time

    if not 0 <= node_id < 1 << NODE_ID_BITS:
        raise ValueError(f"node id {node_id}: use 0 to {(1 << NODE_ID_BITS) - 1}")
    counter = (int(time.time() * 1000) - _ID_EPOCH_MS) << _ID_COUNTER_BITS
    counter = -(-counter // step) * step
    return (node_id << (64 - NODE_ID_BITS)) + counter


class SessionTracker:
    def __init__(
        self,
        idle_timeout_s: float = 120.0,
        active_timeout_s: float = 3600.0,
        max_sessions: int = 1_000_000,
        dedupe_exporters: bool = True,
        first_id: int | None = None,
        id_step: int = 1,
    ):
        self.idle_ms = int(idle_timeout_s * 1000)
        self.active_ms = int(active_timeout_s * 1000)
        self.max_sessions = max_sessions
        self.dedupe = dedupe_exporters
        self._state = _State()
        self._ages = table.age_histogram(self.idle_ms)  # eviction's scratch
        self._evict_hint_age = -1  # ``table.evict_oldest``'s: none before the first eviction
        # room for the bound and a batch from the start: growing a table of a million
        # sessions stalls a batch for a fifth of a second, long enough to overflow a socket
        # buffer. (Rows are zeroed lazily by the kernel and become resident as they fill.)
        self._grow(max(1024, self._full_rows + min(max_sessions, PREALLOCATED_BATCH)))
        self._next_id = first_session_id() if first_id is None else first_id
        # several trackers (session workers) share one id space: worker i of n starts at
        # base + i and steps by n
        self._id_step = id_step
        self._started = 0
        self._last_expire_ms = -EXPIRE_EVERY_MS

    def __len__(self) -> int:
        return int(self._state.counts[table.LIVE])

    @staticmethod
    def warm_up() -> None:
        """Compile (or load from numba's cache) every loop now, rather than on the first
        batch, while flows wait in the socket buffer."""
        scratch = SessionTracker(max_sessions=1, first_id=1)
        for now_ms in (0, 10_000_000):  # the second batch finds, times out and evicts
            scratch.update(FlowBatch.build(2, src_port=np.array([1, 2]), protocol=6, tcp_flags=SYN), now_ms)

    @property
    def stats(self) -> TrackerStats:
        counts = self._state.counts
        return TrackerStats(
            sessions_started=self._started,
            sessions_ended_idle=int(counts[table.ENDED_IDLE]),
            sessions_ended_active=int(counts[table.ENDED_ACTIVE]),
            sessions_evicted=int(counts[table.EVICTED]),
            flows_deduplicated=int(counts[table.DEDUPLICATED]),
        )

    def memory_bytes(self) -> int:
        st = self._state
        arrays = [*st.cols.values(), st.index_keys, st.index_rows, st.free, st.slot_of_row]
        return sum(a.nbytes for a in arrays)

    # -- the public step ---------------------------------------------------------------------

    def update(self, flows: FlowBatch, now_ms: int) -> SessionBatch:
        """Fold a batch of flows in; return one delta row per session it touched."""
        return self.track(flows, now_ms)[0]

    def track(
        self, flows: FlowBatch, now_ms: int, slot_step: int = 1, slot_offset: int = 0
    ) -> tuple[SessionBatch, Arrivals]:
        """``update``, and how each row arrived (``Arrivals``): the sessions it started, each
        session's row in the tracker (as ``row * slot_step + slot_offset``: several trackers
        give their sessions distinct slots) and ``now_ms``."""
        first_new = self._next_id
        # a full expiry pass costs time in proportion to the live sessions: once a second is
        # enough to free memory; sessions this batch touches are checked exactly below
        if not self._last_expire_ms <= now_ms < self._last_expire_ms + EXPIRE_EVERY_MS:
            self.expire(now_ms)
        if not len(flows):
            return SessionBatch.empty(), Arrivals.empty()
        self._make_room(len(flows))
        st, c = self._state, self._state.cols
        keys, a_is_src = conversation_keys(flows, with_exporter=not self.dedupe)
        rows, started = table.assign(
            keys,
            table.exporter_keys(flows["exporter_addr"]),
            now_ms,
            self.idle_ms,
            self.active_ms,
            self.dedupe,
            st.index_keys,
            st.index_rows,
            c["key"],
            c["started_ms"],
            c["updated_ms"],
            c["exporter_key"],
            c["live"],
            st.free,
            st.counts,
        )
        if len(started):
            self._start(flows, rows, started, a_is_src)
        out, touched = self._deltas(flows, rows, a_is_src)
        self._enforce_capacity(now_ms)
        # ids are handed out in increasing order: those from ``first_new`` on are the
        # sessions this batch started
        new = out["session_id"] >= np.uint64(first_new)
        slots = touched * slot_step + slot_offset
        return out, Arrivals(new, slots, np.full(len(out), now_ms, np.int64))

    def expire(self, now_ms: int) -> None:
        """Forget sessions idle for longer than the idle timeout, or older than the active one."""
        st, c = self._state, self._state.cols
        self._last_expire_ms = now_ms
        table.expire(
            now_ms,
            self.idle_ms,
            self.active_ms,
            st.index_keys,
            st.index_rows,
            c["key"],
            c["started_ms"],
            c["updated_ms"],
            c["live"],
            st.free,
            st.counts,
        )

    # -- internals -------------------------------------------------------------------------

    def _start(self, flows: FlowBatch, rows: np.ndarray, started: np.ndarray, a_is_src: np.ndarray) -> None:
        """Fill the rows of the sessions this batch started; orientation from its flows."""
        st, c = self._state, self._state.cols
        table.orient(
            rows,
            started,
            a_is_src,
            flows["src_addr"],
            flows["dst_addr"],
            flows["src_port"],
            flows["dst_port"],
            flows["protocol"],
            flows["tcp_flags"],
            flows["time_start_ms"],
            ICMP_REQUESTS,
            ICMP_REPLIES,
            st.slot_of_row,
            c["a_client"],
            c["cln_addr"],
            c["srv_addr"],
            c["cln_port"],
            c["srv_port"],
            flows["exporter_addr"],
            flows["input_if"],
            flows["output_if"],
            flows["src_as"],
            flows["dst_as"],
            np.uint64(self._next_id),
            np.uint64(self._id_step),
            c["session_id"],
            c["exporter"],
            c["protocol"],
            c["input_if"],
            c["output_if"],
            c["cln_asn"],
            c["srv_asn"],
        )
        k = len(started)
        self._next_id += k * self._id_step
        self._started += k

    def _deltas(self, flows: FlowBatch, rows: np.ndarray, a_is_src: np.ndarray) -> tuple[SessionBatch, np.ndarray]:
        """One row per touched session: what each side sent in this batch; and each one's
        row in the tracker."""
        c = self._state.cols
        touched, start, end, cln_bytes, srv_bytes, cln_pkts, srv_pkts, flags, sampling = table.deltas(
            rows,
            a_is_src,
            c["a_client"],
            flows["time_start_ms"],
            flows["time_end_ms"],
            flows["bytes"],
            flows["packets"],
            flows["tcp_flags"],
            flows["sampling_rate"],
            self._state.slot_of_row,
        )
        if not len(touched):
            return SessionBatch.empty(), touched.astype(np.int64)
        fixed = table.session_fields(
            touched, c["session_id"], c["exporter"], c["protocol"], c["cln_addr"], c["srv_addr"], c["cln_port"],
            c["srv_port"], c["input_if"], c["output_if"], c["cln_asn"], c["srv_asn"],
        )  # fmt: skip
        return SessionBatch.build(
            len(touched),
            start_ms=start,
            end_ms=end,
            cln_bytes=cln_bytes,
            srv_bytes=srv_bytes,
            cln_pkts=cln_pkts,
            srv_pkts=srv_pkts,
            tcp_flags=flags,
            sampling_rate=sampling,
            **dict(zip(_FIXED_FIELDS, fixed, strict=True)),
            cln_country=b"ZZ",
            srv_country=b"ZZ",
        ), touched.astype(np.int64)

    @property
    def _full_rows(self) -> int:
        """Rows a tracker at its bound may need (eviction lets it pass the bound a little)."""
        return int(self.max_sessions * 1.1)

    def _make_room(self, flows: int) -> None:
        """A free row for every flow of the batch (each may start a session), and an index
        that stays at most half full with all of them."""
        st = self._state
        live = len(self)
        if st.cap - live < flows:
            # doubling, but not far past the bound: a full tracker needs max_sessions + a batch
            self._grow(max(live + flows, min(st.cap * 2, self._full_rows + flows)))
        if live + flows > MAX_INDEX_LOAD * len(st.index_keys):
            size = 1 << int(np.ceil(np.log2((live + flows) / MAX_INDEX_LOAD + 1)))
            st.index_keys = np.zeros(size, np.uint64)
            st.index_rows = np.zeros(size, np.int64)
            table.reindex(st.index_keys, st.index_rows, st.cols["key"], st.cols["live"])

    def _grow(self, cap: int) -> None:
        st = self._state
        old_cap, live = st.cap, len(self)
        cols = {}
        for name, spec in _STATE_COLUMNS.items():
            dtype, width = spec if isinstance(spec, tuple) else (spec, None)
            arr = np.zeros((cap, width) if width else cap, dtype)
            if name in st.cols:
                arr[:old_cap] = st.cols[name]
            cols[name] = arr
        free = np.empty(cap, np.int64)
        n_free = old_cap - live
        free[:n_free] = st.free[:n_free]
        free[n_free : n_free + cap - old_cap] = np.arange(cap - 1, old_cap - 1, -1)  # low rows on top
        slot_of_row = np.full(cap, -1, np.int64)
        st.cols, st.free, st.slot_of_row = cols, free, slot_of_row
        if not len(st.index_keys):
            # written now, not lazily: first touches at random slots would fault a page each
            # (the first batch of new conversations took 0.18 s)
            size = 1 << int(np.ceil(np.log2(cap / MAX_INDEX_LOAD + 1)))
            st.index_keys = np.full(size, 0, np.uint64)
            st.index_rows = np.full(size, 0, np.int64)

    def _enforce_capacity(self, now_ms: int) -> None:
        live = len(self)
        if live <= self.max_sessions:
            return
        # forget the least recently updated sessions, down to EVICT_TO of the bound: one pass
        # over the table then serves many batches of new conversations, instead of every one
        st, c = self._state, self._state.cols
        over = live - int(self.max_sessions * EVICT_TO)
        age = table.evict_oldest(
            over, now_ms, self._ages, st.index_keys, st.index_rows, c["key"], c["updated_ms"], c["live"], st.free,
            st.counts, self._evict_hint_age,
        )  # fmt: skip
        # the next eviction's hint: traffic at a steady rate forgets sessions of about the
        # same age each time; a little less, so that the newest to go is still listed
        self._evict_hint_age = int(age * EVICT_HINT_SHARE) if age >= 0 else -1
