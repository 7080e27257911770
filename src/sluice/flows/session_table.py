"""The session tracker's table: live sessions in fixed rows, found by an open-addressing hash.

The per-flow work of the tracker (find a conversation's session, start it if new, decide its
orientation, add the flow to the batch's delta row) is a loop with a branch per flow, which
numpy can only express as sorts and many passes over the batch. These loops are compiled
with numba instead: one pass over a batch, no sort, no temporary per column.

- **Rows** hold one live session each; ended sessions return their row to a free list, so no
  row ever moves (nothing to renumber, no compaction).
- **The index** maps a session key (a well-mixed 64-bit hash, 0 meaning empty) to its row:
  linear probing at a load of at most one half; deletion shifts the following entries back
  instead of leaving tombstones, so probe lengths stay short however many sessions churn.

The kernels keep the loop and nothing else; ``sessions.SessionTracker`` owns the rules.
"""

from __future__ import annotations

import numpy as np

from ..compiled import njit
from ..prefetch import AHEAD, prefetch

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_EIGHT = np.uint64(8)

SYN, ACK = 0x02, 0x10

#: the tracker's counters: slots of one int64 array that the kernels update in place
LIVE, ENDED_IDLE, ENDED_ACTIVE, EVICTED, DEDUPLICATED = range(5)
COUNTERS = 5


@njit(cache=True, nogil=True, inline="always")
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64 finaliser: a well-spread 64-bit hash step (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True, inline="always")
def _word(addr: np.ndarray, i: int, first: int) -> np.uint64:
    """Eight bytes of a 16-byte address as one big-endian integer."""
    w = _ZERO
    for b in range(first, first + 8):
        w = (w << _EIGHT) | np.uint64(addr[i, b])
    return w


@njit(cache=True, nogil=True)
def exporter_keys(exporter: np.ndarray) -> np.ndarray:
    """One integer per exporter address (IPv4 exactly; IPv6 folded, collisions negligible)."""
    n = exporter.shape[0]
    out = np.empty(n, np.uint64)
    for i in range(n):
        out[i] = _word(exporter, i, 8) ^ (_word(exporter, i, 0) * GOLDEN)
    return out


@njit(cache=True, nogil=True)
def conversation_keys(
    src: np.ndarray,
    dst: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    protocol: np.ndarray,
    exporter: np.ndarray,
    with_exporter: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(key, whether the source is canonical endpoint A) per flow.

    A is the lower (address, port) of the two endpoints, so both directions of a conversation
    get the same key; ICMP keys have no ports (a request and its reply differ in type/code).
    """
    n = src.shape[0]
    keys = np.empty(n, np.uint64)
    a_is_src = np.empty(n, np.bool_)
    for i in range(n):
        p = protocol[i]
        icmp = p == 1 or p == 58
        sp = _ZERO if icmp else np.uint64(src_port[i])
        dp = _ZERO if icmp else np.uint64(dst_port[i])
        s_hi, s_lo = _word(src, i, 0), _word(src, i, 8)
        d_hi, d_lo = _word(dst, i, 0), _word(dst, i, 8)
        a_src = s_hi < d_hi or (s_hi == d_hi and (s_lo < d_lo or (s_lo == d_lo and sp <= dp)))
        if a_src:
            a_hi, a_lo, a_port, b_hi, b_lo, b_port = s_hi, s_lo, sp, d_hi, d_lo, dp
        else:
            a_hi, a_lo, a_port, b_hi, b_lo, b_port = d_hi, d_lo, dp, s_hi, s_lo, sp
        h = mix64(a_hi ^ GOLDEN)
        h = mix64(h ^ a_lo)
        h = mix64(h ^ b_hi)
        h = mix64(h ^ b_lo)
        h = mix64(h ^ ((a_port << np.uint64(24)) | (b_port << _EIGHT) | np.uint64(p)))
        if with_exporter:
            h = mix64(mix64(h ^ _word(exporter, i, 0)) ^ _word(exporter, i, 8))
        keys[i] = h if h != _ZERO else _ONE  # 0 marks an empty index slot
        a_is_src[i] = a_src
    return keys, a_is_src


# -- the index ------------------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _home(index_keys: np.ndarray, key: np.uint64) -> np.int64:
    """The slot where ``key``'s probe starts."""
    return np.int64(key & np.uint64(index_keys.shape[0] - 1))


@njit(cache=True, nogil=True, inline="always")
def _fetch_home(index_keys: np.ndarray, index_rows: np.ndarray, key: np.uint64) -> None:
    """Start loading ``key``'s home slot (of both arrays) into the caches: probing a large
    index is a cache miss per key, so the loops ask for the key ``AHEAD`` of the current one."""
    home = _home(index_keys, key)
    prefetch(index_keys, home)
    prefetch(index_rows, home)


@njit(cache=True, nogil=True, inline="always")
def _slot(index_keys: np.ndarray, key: np.uint64) -> np.int64:
    """The slot holding ``key``, or the empty slot where it would go."""
    mask = index_keys.shape[0] - 1
    s = _home(index_keys, key)
    while index_keys[s] != key and index_keys[s] != _ZERO:
        s = (s + 1) & mask
    return s


@njit(cache=True, nogil=True, inline="always")
def home_between(hole: int | np.int64, j: int | np.int64, home: int | np.int64) -> bool | np.bool_:
    """Whether ``home`` lies cyclically in (hole, j]: then the entry at slot ``j`` must stay,
    when deletion shifts entries back into the ``hole`` (linear probing without tombstones)."""
    return (hole < j and hole < home <= j) or (hole > j and (home > hole or home <= j))


@njit(cache=True, nogil=True)
def _unindex(index_keys: np.ndarray, index_rows: np.ndarray, key: np.uint64) -> None:
    """Remove ``key``, shifting back the entries after it that probed past its slot."""
    mask = index_keys.shape[0] - 1
    hole = _slot(index_keys, key)
    if index_keys[hole] == _ZERO:
        return
    j = hole
    while True:
        j = (j + 1) & mask
        k = index_keys[j]
        if k == _ZERO:
            break
        if home_between(hole, j, _home(index_keys, k)):  # it cannot move before its home
            continue
        index_keys[hole] = k
        index_rows[hole] = index_rows[j]
        hole = j
    index_keys[hole] = _ZERO


@njit(cache=True, nogil=True)
def reindex(index_keys: np.ndarray, index_rows: np.ndarray, key: np.ndarray, live: np.ndarray) -> None:
    """Fill an empty index with every live row (after the index grew)."""
    for r in range(live.shape[0]):
        if live[r]:
            s = _slot(index_keys, key[r])
            index_keys[s] = key[r]
            index_rows[s] = r


@njit(cache=True, nogil=True)
def _end(
    r: int,
    index_keys: np.ndarray,
    index_rows: np.ndarray,
    key: np.ndarray,
    live: np.ndarray,
    free: np.ndarray,
    stats: np.ndarray,
) -> None:
    _unindex(index_keys, index_rows, key[r])
    live[r] = False
    free[free.shape[0] - stats[LIVE]] = r  # push: the free stack is ``free[:cap - live]``
    stats[LIVE] -= 1


@njit(cache=True, nogil=True)
def assign(
    keys: np.ndarray,
    flow_exporters: np.ndarray,
    now_ms: int,
    idle_ms: int,
    active_ms: int,
    dedupe: bool,
    index_keys: np.ndarray,
    index_rows: np.ndarray,
    key: np.ndarray,
    started: np.ndarray,
    updated: np.ndarray,
    exporter_key: np.ndarray,
    live: np.ndarray,
    free: np.ndarray,
    stats: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The row of each flow's session (-1: a duplicate from a second exporter, dropped), and
    the rows this batch started, in the order their first flow came.

    A session found but timed out (idle or active) is ended here and a new one started, as a
    full expiry pass before the batch would. The caller guarantees a free row per flow.
    """
    n = keys.shape[0]
    cap = live.shape[0]
    rows = np.empty(n, np.int64)
    started_rows = np.empty(n, np.int64)
    n_started = 0
    for i in range(n):
        if i + AHEAD < n:
            _fetch_home(index_keys, index_rows, keys[i + AHEAD])
        k = keys[i]
        s = _slot(index_keys, k)
        r = -1
        if index_keys[s] == k:
            r = index_rows[s]
            idle = now_ms - updated[r] > idle_ms
            if idle or now_ms - started[r] > active_ms:
                stats[ENDED_IDLE if idle else ENDED_ACTIVE] += 1
                _end(r, index_keys, index_rows, key, live, free, stats)
                r = -1
                s = _slot(index_keys, k)
        if r < 0:
            r = free[cap - stats[LIVE] - 1]  # pop the free stack
            stats[LIVE] += 1
            live[r] = True
            index_keys[s] = k
            index_rows[s] = r
            key[r] = k
            started[r] = now_ms
            exporter_key[r] = flow_exporters[i]
            started_rows[n_started] = r
            n_started += 1
        if dedupe and exporter_key[r] != flow_exporters[i]:
            stats[DEDUPLICATED] += 1
            rows[i] = -1
            continue
        updated[r] = now_ms
        rows[i] = r
    return rows, started_rows[:n_started]


@njit(cache=True, nogil=True)
def orient(
    rows: np.ndarray,
    started_rows: np.ndarray,
    a_is_src: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    src_port: np.ndarray,
    dst_port: np.ndarray,
    protocol: np.ndarray,
    tcp_flags: np.ndarray,
    time_start_ms: np.ndarray,
    icmp_requests: np.ndarray,
    icmp_replies: np.ndarray,
    slot_of_row: np.ndarray,
    a_client: np.ndarray,
    cln_addr: np.ndarray,
    srv_addr: np.ndarray,
    cln_port: np.ndarray,
    srv_port: np.ndarray,
    flow_exporter: np.ndarray,
    flow_input_if: np.ndarray,
    flow_output_if: np.ndarray,
    src_as: np.ndarray,
    dst_as: np.ndarray,
    first_id: np.uint64,
    id_step: np.uint64,
    session_id: np.ndarray,
    exporter: np.ndarray,
    row_protocol: np.ndarray,
    input_if: np.ndarray,
    output_if: np.ndarray,
    cln_asn: np.ndarray,
    srv_asn: np.ndarray,
) -> None:
    """Decide each new session's client from its flows in this batch (the rules are in
    ``sessions``'s docstring) and fill its row: its id (``first_id`` onwards, ``id_step``
    apart), endpoints, and from its representative (earliest) flow the exporter, protocol,
    interfaces and AS numbers (oriented). One pass: as numpy's scatters, one per column,
    filling the rows took as long as deciding the clients."""
    k = started_rows.shape[0]
    syn_vote = np.zeros(k, np.int64)
    icmp_vote = np.zeros(k, np.int64)
    req_code = np.zeros(k, np.int64)
    first = np.full(k, -1, np.int64)
    for j in range(k):
        slot_of_row[started_rows[j]] = j
    for i in range(rows.shape[0]):
        r = rows[i]
        if r < 0:
            continue
        j = slot_of_row[r]
        if j < 0:
            continue
        if first[j] < 0 or time_start_ms[i] < time_start_ms[first[j]]:
            first[j] = i
        p = protocol[i]
        a_src = a_is_src[i]
        if p == 6 and (tcp_flags[i] & SYN) != 0 and (tcp_flags[i] & ACK) == 0:
            syn_vote[j] += 1 if a_src else -1  # the sender of a bare SYN is the client
        elif p == 1 or p == 58:
            icmp_type = int(dst_port[i]) >> 8
            is_request = False
            for t in icmp_requests:
                if icmp_type == t:
                    is_request = True
            is_reply = False
            for t in icmp_replies:
                if icmp_type == t:
                    is_reply = True
            if is_request:
                icmp_vote[j] += 1 if a_src else -1
                req_code[j] = max(req_code[j], int(dst_port[i]))
            elif is_reply:
                icmp_vote[j] += -1 if a_src else 1
    for j in range(k):
        r = started_rows[j]
        slot_of_row[r] = -1
        f = first[j]
        session_id[r] = first_id + np.uint64(j) * id_step
        _copy_address(flow_exporter, f, exporter, r)
        row_protocol[r] = protocol[f]
        input_if[r], output_if[r] = flow_input_if[f], flow_output_if[f]
        p = protocol[f]
        icmp = p == 1 or p == 58
        sp = 0 if icmp else int(src_port[f])
        dp = 0 if icmp else int(dst_port[f])
        a_port, b_port = (sp, dp) if a_is_src[f] else (dp, sp)
        if syn_vote[j] != 0:
            a_cl = syn_vote[j] > 0
        elif icmp_vote[j] != 0:
            a_cl = icmp_vote[j] > 0
        elif a_port != b_port:
            a_cl = a_port > b_port  # the lower port is the server's
        else:
            a_cl = a_is_src[f]  # the sender of the earliest flow is the client
        a_client[r] = a_cl
        # AS numbers as the exporter reported them (an ASN database may refine them later).
        # Addresses byte by byte: row slices (``cln_addr[r, :] = src[f, :]``) are array views
        # made per session, whose reference counting made this pass twice as slow (61 against
        # 28 ns a flow)
        if a_cl == a_is_src[f]:  # the representative flow's source is the client
            _copy_address(src, f, cln_addr, r)
            _copy_address(dst, f, srv_addr, r)
            cln_port[r], srv_port[r] = sp, dp
            cln_asn[r], srv_asn[r] = src_as[f], dst_as[f]
        else:
            _copy_address(dst, f, cln_addr, r)
            _copy_address(src, f, srv_addr, r)
            cln_port[r], srv_port[r] = dp, sp
            cln_asn[r], srv_asn[r] = dst_as[f], src_as[f]
        if icmp:
            srv_port[r] = req_code[j]  # the request's type * 256 + code, when one was seen


@njit(cache=True, nogil=True, inline="always")
def _copy_address(source: np.ndarray, i: int | np.int64, target: np.ndarray, r: int | np.int64) -> None:
    """``target[r] = source[i]`` for (n, 16) uint8 address columns."""
    for b in range(16):
        target[r, b] = source[i, b]


@njit(cache=True, nogil=True)
def deltas(
    rows: np.ndarray,
    a_is_src: np.ndarray,
    a_client: np.ndarray,
    time_start_ms: np.ndarray,
    time_end_ms: np.ndarray,
    flow_bytes: np.ndarray,
    flow_packets: np.ndarray,
    tcp_flags: np.ndarray,
    sampling_rate: np.ndarray,
    slot_of_row: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """One row per session the batch touched (in order of first touch): its state row, the
    time span, what each side sent, the flags seen and the highest sampling rate."""
    n = rows.shape[0]
    touched = np.empty(n, np.int64)
    start = np.empty(n, np.int64)
    end = np.empty(n, np.int64)
    cln_bytes = np.zeros(n, np.uint64)
    srv_bytes = np.zeros(n, np.uint64)
    cln_pkts = np.zeros(n, np.uint64)
    srv_pkts = np.zeros(n, np.uint64)
    flags = np.zeros(n, np.uint16)
    sampling = np.zeros(n, np.uint32)
    m = 0
    for i in range(n):
        r = rows[i]
        if r < 0:
            continue
        o = slot_of_row[r]
        if o < 0:
            o = m
            m += 1
            slot_of_row[r] = o
            touched[o] = r
            start[o] = time_start_ms[i]
            end[o] = time_end_ms[i]
        else:
            start[o] = min(start[o], time_start_ms[i])
            end[o] = max(end[o], time_end_ms[i])
        if a_is_src[i] == a_client[r]:
            cln_bytes[o] += flow_bytes[i]
            cln_pkts[o] += flow_packets[i]
        else:
            srv_bytes[o] += flow_bytes[i]
            srv_pkts[o] += flow_packets[i]
        flags[o] |= tcp_flags[i]
        sampling[o] = max(sampling[o], sampling_rate[i])
    for o in range(m):
        slot_of_row[touched[o]] = -1
    return (
        touched[:m],
        start[:m],
        end[:m],
        cln_bytes[:m],
        srv_bytes[:m],
        cln_pkts[:m],
        srv_pkts[:m],
        flags[:m],
        sampling[:m],
    )


@njit(cache=True, nogil=True)
def session_fields(
    touched: np.ndarray,
    session_id: np.ndarray,
    exporter: np.ndarray,
    protocol: np.ndarray,
    cln_addr: np.ndarray,
    srv_addr: np.ndarray,
    cln_port: np.ndarray,
    srv_port: np.ndarray,
    input_if: np.ndarray,
    output_if: np.ndarray,
    cln_asn: np.ndarray,
    srv_asn: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """The fixed fields of the rows ``touched``, in that order (the columns above, each
    gathered): one pass, where numpy's takes made one per column."""
    m = touched.shape[0]
    out_id = np.empty(m, session_id.dtype)
    out_exporter = np.empty((m, 16), np.uint8)
    out_protocol = np.empty(m, protocol.dtype)
    out_cln_addr = np.empty((m, 16), np.uint8)
    out_srv_addr = np.empty((m, 16), np.uint8)
    out_cln_port = np.empty(m, cln_port.dtype)
    out_srv_port = np.empty(m, srv_port.dtype)
    out_input_if = np.empty(m, input_if.dtype)
    out_output_if = np.empty(m, output_if.dtype)
    out_cln_asn = np.empty(m, cln_asn.dtype)
    out_srv_asn = np.empty(m, srv_asn.dtype)
    for o in range(m):
        r = touched[o]
        out_id[o] = session_id[r]
        _copy_address(exporter, r, out_exporter, o)
        out_protocol[o] = protocol[r]
        _copy_address(cln_addr, r, out_cln_addr, o)
        _copy_address(srv_addr, r, out_srv_addr, o)
        out_cln_port[o], out_srv_port[o] = cln_port[r], srv_port[r]
        out_input_if[o], out_output_if[o] = input_if[r], output_if[r]
        out_cln_asn[o], out_srv_asn[o] = cln_asn[r], srv_asn[r]
    return (
        out_id,
        out_exporter,
        out_protocol,
        out_cln_addr,
        out_srv_addr,
        out_cln_port,
        out_srv_port,
        out_input_if,
        out_output_if,
        out_cln_asn,
        out_srv_asn,
    )


@njit(cache=True, nogil=True)
def expire(
    now_ms: int,
    idle_ms: int,
    active_ms: int,
    index_keys: np.ndarray,
    index_rows: np.ndarray,
    key: np.ndarray,
    started: np.ndarray,
    updated: np.ndarray,
    live: np.ndarray,
    free: np.ndarray,
    stats: np.ndarray,
) -> None:
    """End every session idle for longer than the idle timeout, or older than the active one."""
    for r in range(live.shape[0]):
        if not live[r]:
            continue
        if now_ms - updated[r] > idle_ms:
            stats[ENDED_IDLE] += 1
        elif now_ms - started[r] > active_ms:
            stats[ENDED_ACTIVE] += 1
        else:
            continue
        _end(r, index_keys, index_rows, key, live, free, stats)


#: sessions are ranked by age (ms before the tracker's clock) in a histogram of at most this
#: many entries; older ones (a longer idle timeout) by sorting
MAX_RANKED_AGE_MS = 1 << 22


def age_histogram(idle_ms: int) -> np.ndarray:
    """The zeroed scratch ``evict_oldest`` ranks by: an entry per millisecond of age a live
    session can have (the idle timeout, and the expiry pass being up to a second late, with
    room to spare). Its pages are touched only as far as the ages found reach."""
    return np.zeros(min(idle_ms + 3_000, MAX_RANKED_AGE_MS), np.int64)


#: ``evict_oldest`` keeps the sessions at least as old as its hint, as it ranks them, up to
#: this many times the count it is to forget: beyond, the hint was too low to be worth it
_CANDIDATES_PER_EVICTION = 3


@njit(cache=True, nogil=True)
def evict_oldest(
    count: int,
    now_ms: int,
    ages: np.ndarray,
    index_keys: np.ndarray,
    index_rows: np.ndarray,
    key: np.ndarray,
    updated: np.ndarray,
    live: np.ndarray,
    free: np.ndarray,
    stats: np.ndarray,
    hint_age: int = -1,
) -> int:
    """Forget the ``count`` least recently updated sessions (ties: the lowest rows). ``ages``:
    ``age_histogram``'s scratch, left zeroed. Returns the age (ms before ``now_ms``) of the
    newest session forgotten, or -1 if they were not ranked by age.

    ``hint_age`` (-1: none), an age the newest to go is likely to have reached (the last
    eviction's, a little less): the sessions at least that old are listed as they are ranked,
    and when the newest to go is among them, they are all that a second pass over the table
    would have found. At the bound on new conversations the two passes over a million rows
    cost as much as taking the forgotten sessions out of the index."""
    count = min(count, stats[LIVE])
    if count <= 0:
        return -1
    # the update time of the count-th oldest: update times repeat (one per batch), so a
    # histogram of the ages before ``now_ms`` ranks a million sessions in one pass without
    # sorting (a pass to find the oldest and newest first cost as much as the histogram)
    span = ages.shape[0]
    beyond, ahead, oldest = 0, 0, 0  # older than the histogram holds; updated after now_ms
    listing = hint_age >= 0
    candidates = np.empty(_CANDIDATES_PER_EVICTION * count if listing else 0, np.int64)
    n_candidates = 0
    for r in range(live.shape[0]):
        if live[r]:
            age = now_ms - updated[r]
            if age >= span:
                beyond += 1
            elif age < 0:
                ahead += 1
            else:
                ages[age] += 1
                oldest = max(oldest, age)
            if listing and age >= hint_age:
                if n_candidates < candidates.shape[0]:
                    candidates[n_candidates] = r
                    n_candidates += 1
                else:
                    listing = False  # too many: the pass below finds them
    older, cutoff = beyond, now_ms
    ranked = beyond < count <= stats[LIVE] - ahead
    if ranked:  # every session beyond the histogram goes, then the oldest in it
        for age in range(oldest, -1, -1):
            if older + ages[age] >= count:
                cutoff = now_ms - age
                break
            older += ages[age]
    ages[: oldest + 1] = 0
    if not ranked:  # a clock stepped back, or ages beyond the histogram: rank them exactly
        times = np.empty(stats[LIVE], np.int64)
        j = 0
        for r in range(live.shape[0]):
            if live[r]:
                times[j] = updated[r]
                j += 1
        times.sort()
        cutoff = times[count - 1]
        older = np.searchsorted(times, cutoff)
    at_cutoff = count - older  # of the sessions updated exactly at the cutoff, this many go
    # every session to go is at least as old as the cutoff: listed, if the hint was no older
    listed = listing and ranked and now_ms - cutoff >= hint_age
    doomed = np.empty(count, np.int64)
    k = 0
    for i in range(n_candidates if listed else live.shape[0]):
        r = candidates[i] if listed else i
        if live[r] and (updated[r] < cutoff or (updated[r] == cutoff and at_cutoff > 0)):
            if updated[r] == cutoff:
                at_cutoff -= 1
            doomed[k] = r
            k += 1
    # then out of the index, its slots fetched ahead: each is a cache miss of its own
    for i in range(k):
        if i + AHEAD < k:
            _fetch_home(index_keys, index_rows, key[doomed[i + AHEAD]])
        _end(doomed[i], index_keys, index_rows, key, live, free, stats)
    stats[EVICTED] += count
    return now_ms - cutoff if ranked else -1
