"""A sum definition's pass over a batch's entity rows, compiled: which rows concern its
entities, which of those are COUNT's contributions, and what they add, summed per entity.

It computes what ``AlertEngine.select`` and ``SumWindow.fold`` compute for the same rows
(the engine uses those for distinct counts, lower thresholds and collectors' partials), but
in one pass over the sessions instead of a dozen numpy passes over the rows, each of them
reading and writing arrays of the batch's length: for 16 sum definitions over batches of
120,000 new conversations that was a quarter of the engine's time. A test holds the two
against each other on random batches (tests/unit/test_alert_selection.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..compiled import njit
from .definition import AlertMetric
from .entities import EntityRows
from .window import CLN_BYTES, CLN_PKTS, LAST_ROW, ROW, SRV_BYTES, SRV_PKTS

#: what a row adds: its session's new flag (sessions), or the traffic its side sent, received
#: or both (a host pair's or a port's one row is the client's side)
SESSIONS, SENT, RECEIVED, TOTAL = range(4)
#: which rows concern the entity, beside being valid and kept: any, the client sides', the
#: server sides', or those that add something
ANY_ROW, CLIENT_ROWS, SERVER_ROWS, NONZERO = range(4)


def plan(metric: AlertMetric, endpoint: bool) -> tuple[int, int, int, int, int]:
    """(amount, role, factor, the client side's and the server side's history column) of a
    sum metric, as ``_select_sums`` takes them."""
    name = metric.value
    if name.startswith("sessions"):
        role = ANY_ROW
        if endpoint and metric is AlertMetric.SESSIONS_INITIATED:
            role = CLIENT_ROWS
        elif endpoint and metric is AlertMetric.SESSIONS_RECEIVED:
            role = SERVER_ROWS
        return SESSIONS, role, 1, LAST_ROW, LAST_ROW
    unit, _, direction = name.partition("_")
    amount = {"sent": SENT, "received": RECEIVED, "total": TOTAL}[direction]
    cln, srv = (CLN_PKTS, SRV_PKTS) if unit == "packets" else (CLN_BYTES, SRV_BYTES)
    return amount, NONZERO, 8 if unit == "bits" else 1, cln, srv


@njit(cache=True, nogil=True, inline="always")
def _concerns(role: int, client_row: bool, value: np.int64) -> bool | np.bool_:
    if role == ANY_ROW:
        return True
    if role == CLIENT_ROWS:
        return client_row
    if role == SERVER_ROWS:
        return not client_row
    return value > 0


@njit(cache=True, nogil=True, inline="always")
def _earlier(t: np.int64, lo: np.int64, hi: np.int64) -> bool | np.bool_:
    return (t >= lo) & (t < hi)


@njit(cache=True, nogil=True, inline="always")
def _select_sums(
    n: int,
    endpoint: bool,
    inv: np.ndarray,
    n_uniq: int,
    same_entity: np.ndarray,
    keep: np.ndarray,
    buckets: np.ndarray,
    bucket: int,
    one_step: bool,
    step_ms: int,
    before: np.ndarray,
    t_cln: int,
    t_srv: int,
    amount: int,
    role: int,
    factor: int,
    cln: np.ndarray,
    srv: np.ndarray,
    new: np.ndarray,
) -> np.ndarray:
    """Per entity of the batch (``inv``: each row's position among its ``n_uniq`` ids): the
    amounts of its rows that concern it in step ``bucket``, whether it has one, and how many
    of them are contributions (their session's first row of the period that concerns it).
    Endpoint types have rows ``i`` (client side) and ``n + i`` (server side) per session.
    The three are returned as one array (``sums``: see ``window.unpack_sums``): a row's
    updates then touch one cache line, not three.

    The amount is made with weights, not a branch per metric in the loop: that branch alone
    cost 5 ns a session (of 8). It is compiled once per plan (``_kernel``), its plan then
    constants."""
    sums = np.zeros((n_uniq, 2), np.int64)
    # the client side's amount: its side's traffic (own), the other's, or the new flag
    w_own = np.int64(amount == SENT or amount == TOTAL)
    w_other = np.int64(amount == RECEIVED or amount == TOTAL)
    w_new = np.int64(amount == SESSIONS)
    start = np.int64(bucket) * step_ms  # the period's bounds; 0 in the history means never
    lo, hi = max(start, np.int64(1)), start + step_ms
    for i in range(n):
        if not one_step and buckets[i] != bucket:
            continue
        fresh = new[i]
        c: bool | np.bool_ = False
        s: bool | np.bool_ = False
        if not fresh:  # a new session has no history (``SlotHistory``): its reads are skipped
            c = _earlier(before[t_cln, i], lo, hi)
            s = c if amount == SESSIONS else _earlier(before[t_srv, i], lo, hi)
        # whether an earlier row of the period concerned each side's entity (by its traffic)
        if amount == SESSIONS:
            client_before = server_before = c
        elif amount == SENT:
            client_before, server_before = c, s
        elif amount == RECEIVED:
            client_before, server_before = s, c
        else:
            client_before = server_before = c | s
        cln_i, srv_i, new_i = np.int64(cln[i]), np.int64(srv[i]), np.int64(fresh)
        v_c = (w_own * cln_i + w_other * srv_i) * factor + w_new * new_i
        m_c = _concerns(role, True, v_c) & keep[i]
        if not endpoint:
            if m_c:
                e = inv[i]
                sums[e, 0] += v_c
                sums[e, 1] += ROW if client_before else ROW + 1
            continue
        j = n + i
        v_s = (w_own * srv_i + w_other * cln_i) * factor + w_new * new_i
        m_s = _concerns(role, False, v_s) & keep[j]
        same = same_entity[i]  # both ends one entity (two hosts of one country)
        if same:
            # what of each side concerns the entity whatever its traffic: its role for
            # sessions, else being valid; and kept
            if amount == SESSIONS:
                side_c, side_s = m_c, m_s
            else:
                side_c, side_s = keep[i], keep[j]
            either = (client_before & side_c) | (server_before & side_s)
            client_before = server_before = either
        contrib_c = m_c & (not client_before)
        if m_c:
            e = inv[i]
            sums[e, 0] += v_c
            sums[e, 1] += ROW + 1 if contrib_c else ROW
        if m_s:
            e = inv[j]
            sums[e, 0] += v_s
            # such a session counts once
            sums[e, 1] += ROW if server_before | (same & contrib_c) else ROW + 1
    return sums


@njit(cache=True, nogil=True)
def has_row(sums: np.ndarray) -> bool:
    """Whether any entity of ``select_sums``'s ``sums`` has a row: stops at the first, where
    numpy's ``any`` read the whole strided column (54 us for 60,000 hosts, per definition)."""
    for j in range(sums.shape[0]):
        if sums[j, 1] != 0:
            return True
    return False


#: ``_select_sums`` compiled per plan (amount, role, endpoint): with the plan as constants the
#: compiler drops the branches and the reads the plan does not need. A sessions definition's
#: pass went from 6.4 to 1.8 ns a session, a bytes definition's of hosts from 11 to 7.7
_KERNELS: dict[tuple[int, int, bool], Callable[..., np.ndarray]] = {}  # compiled at start: AlertEngine.warm_up


def _kernel(amount: int, role: int, endpoint: bool) -> Callable[..., np.ndarray]:
    """The pass of one plan: a closure, which numba compiles (and caches) apart for each
    plan's values."""
    if (amount, role, endpoint) not in _KERNELS:

        def kernel(
            n: int, inv: np.ndarray, n_uniq: int, same_entity: np.ndarray, keep: np.ndarray, buckets: np.ndarray,
            bucket: int, one_step: bool, step_ms: int, before: np.ndarray, t_cln: int, t_srv: int, factor: int,
            cln: np.ndarray, srv: np.ndarray, new: np.ndarray,
        ) -> np.ndarray:  # fmt: skip
            return _select_sums(
                n, endpoint, inv, n_uniq, same_entity, keep, buckets, bucket, one_step, step_ms, before,
                t_cln, t_srv, amount, role, factor, cln, srv, new,
            )  # fmt: skip

        # a name of its own per plan: numba's cache files the compiled forms of one name in
        # one index, numbered by the process that compiles each first. Two processes
        # compiling different plans at once (pytest's workers, two servers on one install)
        # could each take the same number, and the index then gave one plan the other's code:
        # its definitions counted by the other plan, or failed ("'descr' is NULL")
        kernel.__name__ = kernel.__qualname__ = f"select_sums_{amount}_{role}_{int(endpoint)}"
        _KERNELS[amount, role, endpoint] = njit(cache=True, nogil=True)(kernel)
    return _KERNELS[amount, role, endpoint]


_NONE = np.zeros(0, np.bool_)


def select_sums(
    rows: EntityRows,
    metric: AlertMetric,
    kept: np.ndarray | None,
    buckets: np.ndarray,
    bucket: int,
    one_step: bool,
    step_ms: int,
    before: np.ndarray,
) -> np.ndarray:
    """``sums`` (amount; rows and contributions: ``window.unpack_sums``) per entity of
    ``rows.uniq`` for a sum metric's rows of step ``bucket`` (``one_step``: every row is of
    it), of the rows ``kept`` by the prefilter and exceptions (None: every row); ``before``
    is ``SlotHistory.recall``'s."""
    endpoint = rows.kind.is_endpoint
    amount, role, factor, t_cln, t_srv = plan(metric, endpoint)
    sessions = rows.sessions
    if amount == SESSIONS:
        cln = srv = sessions["cln_bytes"]  # not read
    else:
        column = "pkts" if t_cln == CLN_PKTS else "bytes"
        cln, srv = sessions[f"cln_{column}"], sessions[f"srv_{column}"]
    # the rows kept and valid (ASN rows without an AS number are not) as one mask
    masks = [m for m in (rows.valid, kept) if m is not None]
    keep = rows.every_row if not masks else masks[0] if len(masks) == 1 else masks[0] & masks[1]
    same = rows.same_entity[0] if endpoint else _NONE
    return _kernel(amount, role, endpoint)(
        rows.n_sessions, rows.inv, len(rows.uniq), same, keep,
        buckets, bucket, one_step, step_ms, before, t_cln, t_srv, factor, cln, srv, rows.new_session,
    )  # fmt: skip
