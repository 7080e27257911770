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

from .schema import FlowBatch, SessionBatch, address_words

SYN, ACK = 0x02, 0x10
ICMP_PROTOCOLS = (1, 58)
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


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread 64-bit hash step (numpy uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class _State:
    """Live sessions, one row each (dense), plus a sorted index of their keys."""

    cap: int = 0
    n: int = 0
    cols: dict[str, np.ndarray] = field(default_factory=dict)
    sorted_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    sorted_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


_STATE_COLUMNS = {
    "key": np.uint64,
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


def _exporter_keys(addr16: np.ndarray) -> np.ndarray:
    """One integer per exporter address (IPv4 exactly; IPv6 folded, collisions negligible)."""
    hi, lo = address_words(addr16)
    return lo ^ (hi * np.uint64(0x9E3779B97F4A7C15))


#: how often ``update`` runs a full expiry pass (the maintenance round runs one too)
EXPIRE_EVERY_MS = 1000
#: a tracker past ``max_sessions`` forgets the least recently updated down to this share of it
EVICT_TO = 0.9


class SessionTracker:
    def __init__(
        self,
        idle_timeout_s: float = 120.0,
        active_timeout_s: float = 3600.0,
        max_sessions: int = 1_000_000,
        dedupe_exporters: bool = True,
        first_id: int | None = None,
    ):
        self.idle_ms = int(idle_timeout_s * 1000)
        self.active_ms = int(active_timeout_s * 1000)
        self.max_sessions = max_sessions
        self.dedupe = dedupe_exporters
        self.stats = TrackerStats()
        self._state = _State()
        self._grow(1024)
        # ids unique across restarts as long as the clock moves on: start at now << 22
        if first_id is None:
            import time

            first_id = int(time.time() * 1000) << 22
        self._next_id = first_id
        self._last_expire_ms = -EXPIRE_EVERY_MS

    def __len__(self) -> int:
        return self._state.n

    @property
    def next_session_id(self) -> int:
        """Ids are handed out in increasing order: rows with an id at or above this value,
        read before an update, are sessions that update started."""
        return self._next_id

    def memory_bytes(self) -> int:
        st = self._state
        return sum(c.nbytes for c in st.cols.values()) + st.sorted_keys.nbytes + st.sorted_rows.nbytes

    # -- the public step ---------------------------------------------------------------------

    def update(self, flows: FlowBatch, now_ms: int) -> SessionBatch:
        """Fold a batch of flows in; return one delta row per session it touched."""
        # a full expiry pass costs time in proportion to the live sessions: once a second is
        # enough to free memory; sessions this batch touches are checked exactly below
        if not self._last_expire_ms <= now_ms < self._last_expire_ms + EXPIRE_EVERY_MS:
            self.expire(now_ms)
        if not len(flows):
            return SessionBatch.empty()
        keys, a_is_src, icmp = self._keys(flows)
        rows = self._find_or_add(keys, flows, a_is_src, icmp, now_ms)
        if self.dedupe:
            same = self._state.cols["exporter_key"][rows] == _exporter_keys(flows["exporter_addr"])
            dropped = int((~same).sum())
            if dropped:
                self.stats.flows_deduplicated += dropped
                keep = np.flatnonzero(same)
                flows, rows, a_is_src = flows.take(keep), rows[keep], a_is_src[keep]
                if not len(flows):
                    return SessionBatch.empty()
        out = self._deltas(flows, rows, a_is_src)
        self._state.cols["updated_ms"][rows] = now_ms
        self._enforce_capacity()
        return out

    def expire(self, now_ms: int) -> None:
        """Forget sessions idle for longer than the idle timeout, or older than the active one."""
        st = self._state
        self._last_expire_ms = now_ms
        if not st.n:
            return
        updated = st.cols["updated_ms"][: st.n]
        started = st.cols["started_ms"][: st.n]
        idle = now_ms - updated > self.idle_ms
        old = (now_ms - started > self.active_ms) & ~idle
        if idle.any() or old.any():
            self.stats.sessions_ended_idle += int(idle.sum())
            self.stats.sessions_ended_active += int(old.sum())
            self._compact(~(idle | old))

    # -- internals -------------------------------------------------------------------------

    def _keys(self, flows: FlowBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        proto = flows["protocol"].astype(np.uint64)
        icmp = np.isin(flows["protocol"], ICMP_PROTOCOLS)
        sport = np.where(icmp, 0, flows["src_port"]).astype(np.uint64)
        dport = np.where(icmp, 0, flows["dst_port"]).astype(np.uint64)
        s_hi, s_lo = address_words(flows["src_addr"])
        d_hi, d_lo = address_words(flows["dst_addr"])
        # canonical endpoint order: A = the lower (address, port)
        a_is_src = (s_hi < d_hi) | ((s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sport <= dport))))
        a_hi, a_lo, a_port = (
            np.where(a_is_src, s_hi, d_hi),
            np.where(a_is_src, s_lo, d_lo),
            np.where(a_is_src, sport, dport),
        )
        b_hi, b_lo, b_port = (
            np.where(a_is_src, d_hi, s_hi),
            np.where(a_is_src, d_lo, s_lo),
            np.where(a_is_src, dport, sport),
        )
        h = _mix(a_hi ^ np.uint64(0x9E3779B97F4A7C15))
        for word in (a_lo, b_hi, b_lo, (a_port << np.uint64(24)) | (b_port << np.uint64(8)) | proto):
            h = _mix(h ^ word)
        if not self.dedupe:
            e_hi, e_lo = address_words(flows["exporter_addr"])
            h = _mix(_mix(h ^ e_hi) ^ e_lo)
        h[h == 0] = 1  # 0 never names a session
        return h, a_is_src, icmp

    def _find_or_add(
        self, keys: np.ndarray, flows: FlowBatch, a_is_src: np.ndarray, icmp: np.ndarray, now_ms: int
    ) -> np.ndarray:
        """The state row of each flow's session, starting sessions for new keys."""
        st = self._state
        uniq, inverse = np.unique(keys, return_inverse=True)
        inverse = inverse.reshape(-1)
        row_of_uniq = np.empty(len(uniq), np.int64)
        found = np.zeros(len(uniq), bool)
        if len(st.sorted_keys):
            pos = np.minimum(np.searchsorted(st.sorted_keys, uniq), len(st.sorted_keys) - 1)
            found = st.sorted_keys[pos] == uniq
            row_of_uniq[found] = st.sorted_rows[pos[found]]
            # a session found here may have timed out since the last expiry pass: end it
            # first, so that this flow starts a new one, exactly as with a pass per batch
            r = row_of_uniq[found]
            stale = (now_ms - st.cols["updated_ms"][r] > self.idle_ms) | (
                now_ms - st.cols["started_ms"][r] > self.active_ms
            )
            if stale.any():
                self.expire(now_ms)
                return self._find_or_add(keys, flows, a_is_src, icmp, now_ms)
        new = np.flatnonzero(~found)
        if len(new):
            row_of_uniq[new] = self._add(uniq[new], new, inverse, flows, a_is_src, icmp, now_ms)
        return row_of_uniq[inverse]

    def _add(
        self,
        new_keys: np.ndarray,
        new_uniq: np.ndarray,
        inverse: np.ndarray,
        flows: FlowBatch,
        a_is_src: np.ndarray,
        icmp: np.ndarray,
        now_ms: int,
    ) -> np.ndarray:
        """Start sessions for keys not seen before; orientation from this batch's flows."""
        st = self._state
        k = len(new_keys)
        # which unique key each flow belongs to, restricted to the new ones
        slot_of_uniq = np.full(int(inverse.max()) + 1, -1, np.int64)
        slot_of_uniq[new_uniq] = np.arange(k)
        slot = slot_of_uniq[inverse]
        mine = np.flatnonzero(slot >= 0)
        slot_m = slot[mine]
        flags = flows["tcp_flags"][mine].astype(np.int64)
        proto = flows["protocol"][mine]
        start = flows["time_start_ms"][mine]
        src_is_a = a_is_src[mine]

        # evidence per new session that side A (or B) is the client: votes +1 for A, -1 for B
        def vote(mask: np.ndarray, src_is_client: np.ndarray) -> np.ndarray:
            sign = np.where(src_is_client == src_is_a, 1, -1)  # src is client and src is A -> A
            v = np.zeros(k, np.int64)
            np.add.at(v, slot_m[mask], sign[mask])
            return v

        syn_only = (proto == 6) & ((flags & SYN) != 0) & ((flags & ACK) == 0)
        syn_vote = vote(syn_only, np.ones(len(mine), bool))
        icmp_type = flows["dst_port"][mine].astype(np.int64) >> 8
        is_icmp = icmp[mine]
        req = is_icmp & np.isin(icmp_type, ICMP_REQUESTS)
        rep = is_icmp & np.isin(icmp_type, ICMP_REPLIES)
        icmp_vote = vote(req | rep, req)
        # earliest flow of each new session (ties: wire order)
        order = np.lexsort((np.arange(len(mine)), start, slot_m))
        first_of_slot = order[np.concatenate([[True], slot_m[order][1:] != slot_m[order][:-1]])]
        earliest_src_is_a = np.empty(k, bool)
        earliest_src_is_a[slot_m[first_of_slot]] = src_is_a[first_of_slot]
        sel = mine[first_of_slot]  # one representative flow per new session
        src_port = np.where(icmp[sel], 0, flows["src_port"][sel]).astype(np.int64)
        dst_port = np.where(icmp[sel], 0, flows["dst_port"][sel]).astype(np.int64)
        a_port = np.where(a_is_src[sel], src_port, dst_port)
        b_port = np.where(a_is_src[sel], dst_port, src_port)
        # the lower port is the server's (a well-known port, < 1024, is always the lower one)
        port_says_a_client = a_port > b_port
        ports_decide = a_port != b_port
        a_client = np.where(
            syn_vote != 0,
            syn_vote > 0,
            np.where(icmp_vote != 0, icmp_vote > 0, np.where(ports_decide, port_says_a_client, earliest_src_is_a)),
        )
        rep_src_is_client = a_client == a_is_src[sel]
        rep_src, rep_dst = flows["src_addr"][sel], flows["dst_addr"][sel]
        cln_addr = np.where(rep_src_is_client[:, None], rep_src, rep_dst)
        srv_addr = np.where(rep_src_is_client[:, None], rep_dst, rep_src)
        cln_port = np.where(rep_src_is_client, src_port, dst_port)
        srv_port = np.where(rep_src_is_client, dst_port, src_port)
        # ICMP: the server "port" is the request's type/code, when a request was seen
        req_code = np.zeros(k, np.int64)
        if req.any():
            np.maximum.at(req_code, slot_m[req], flows["dst_port"][mine][req].astype(np.int64))
        srv_port = np.where(icmp[sel], req_code, srv_port)

        rows = self._reserve(k)
        c = st.cols
        c["key"][rows] = new_keys
        c["session_id"][rows] = self._next_id + np.arange(k, dtype=np.uint64)
        self._next_id += k
        c["started_ms"][rows] = now_ms
        c["updated_ms"][rows] = now_ms
        c["exporter"][rows] = flows["exporter_addr"][sel]
        c["exporter_key"][rows] = _exporter_keys(flows["exporter_addr"][sel])
        c["a_client"][rows] = a_client
        c["cln_addr"][rows] = cln_addr
        c["srv_addr"][rows] = srv_addr
        c["cln_port"][rows] = cln_port
        c["srv_port"][rows] = srv_port
        c["protocol"][rows] = flows["protocol"][sel]
        c["input_if"][rows] = flows["input_if"][sel]
        c["output_if"][rows] = flows["output_if"][sel]
        # AS numbers as the exporter reported them (an ASN database may refine them later)
        c["cln_asn"][rows] = np.where(rep_src_is_client, flows["src_as"][sel], flows["dst_as"][sel])
        c["srv_asn"][rows] = np.where(rep_src_is_client, flows["dst_as"][sel], flows["src_as"][sel])
        self.stats.sessions_started += k
        # keep the key index sorted
        order_new = np.argsort(new_keys)
        at = np.searchsorted(st.sorted_keys, new_keys[order_new])
        st.sorted_keys = np.insert(st.sorted_keys, at, new_keys[order_new])
        st.sorted_rows = np.insert(st.sorted_rows, at, rows[order_new])
        return rows

    def _deltas(self, flows: FlowBatch, rows: np.ndarray, a_is_src: np.ndarray) -> SessionBatch:
        """One row per touched session: what each side sent in this batch."""
        c = self._state.cols
        src_is_client = a_is_src == c["a_client"][rows]
        order = np.argsort(rows, kind="stable")
        r = rows[order]
        starts = np.flatnonzero(np.concatenate([[True], r[1:] != r[:-1]]))
        touched = r[starts]

        def per_session(values: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
            return ufunc.reduceat(values[order], starts)

        zero = np.uint64(0)
        b = flows["bytes"].astype(np.uint64)
        p = flows["packets"].astype(np.uint64)
        cl = src_is_client
        n = len(touched)
        return SessionBatch.build(
            n,
            session_id=c["session_id"][touched],
            start_ms=per_session(flows["time_start_ms"], np.minimum),
            end_ms=per_session(flows["time_end_ms"], np.maximum),
            exporter_addr=c["exporter"][touched],
            protocol=c["protocol"][touched],
            cln_addr=c["cln_addr"][touched],
            srv_addr=c["srv_addr"][touched],
            cln_port=c["cln_port"][touched],
            srv_port=c["srv_port"][touched],
            cln_bytes=per_session(np.where(cl, b, zero), np.add),
            srv_bytes=per_session(np.where(cl, zero, b), np.add),
            cln_pkts=per_session(np.where(cl, p, zero), np.add),
            srv_pkts=per_session(np.where(cl, zero, p), np.add),
            tcp_flags=per_session(flows["tcp_flags"].astype(np.uint16), np.bitwise_or),
            input_if=c["input_if"][touched],
            output_if=c["output_if"][touched],
            cln_asn=c["cln_asn"][touched],
            srv_asn=c["srv_asn"][touched],
            sampling_rate=per_session(flows["sampling_rate"].astype(np.uint32), np.maximum),
            cln_country=b"ZZ",
            srv_country=b"ZZ",
        )

    def _reserve(self, k: int) -> np.ndarray:
        st = self._state
        if st.n + k > st.cap:
            self._grow(max(st.cap * 2, st.n + k))
        rows = np.arange(st.n, st.n + k)
        st.n += k
        return rows

    def _grow(self, cap: int) -> None:
        st = self._state
        cols = {}
        for name, spec in _STATE_COLUMNS.items():
            dtype, width = spec if isinstance(spec, tuple) else (spec, None)
            arr = np.zeros((cap, width) if width else cap, dtype)
            if name in st.cols:
                arr[: st.n] = st.cols[name][: st.n]
            cols[name] = arr
        st.cols, st.cap = cols, cap

    def _compact(self, keep: np.ndarray) -> None:
        """Keep the rows where ``keep`` is true. The key index stays sorted without a sort:
        the removed rows' entries are dropped and the others renumbered."""
        st = self._state
        idx = np.flatnonzero(keep)
        for col in st.cols.values():
            col[: len(idx)] = col[idx]
        st.n = len(idx)
        new_row = np.cumsum(keep) - 1  # where each kept row moved to
        live = keep[st.sorted_rows]
        st.sorted_keys = st.sorted_keys[live]
        st.sorted_rows = new_row[st.sorted_rows[live]]

    def _enforce_capacity(self) -> None:
        st = self._state
        if st.n <= self.max_sessions:
            return
        # forget the least recently updated sessions, down to EVICT_TO of the bound: one pass
        # over the table then serves many batches of new conversations, instead of every one
        over = st.n - int(self.max_sessions * EVICT_TO)
        updated = st.cols["updated_ms"][: st.n]
        victims = np.argpartition(updated, over - 1)[:over]
        keep = np.ones(st.n, bool)
        keep[victims] = False
        self.stats.sessions_evicted += over
        self._compact(keep)
