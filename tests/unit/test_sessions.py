"""Session assembly: orientation rules, folding, timeouts, de-duplication, bounds, and the
ground truth of a pcap exported by softflowd."""

import time

import numpy as np
import pytest

from sluice.flows.schema import FlowBatch, SessionBatch, addr_bytes, addr_text
from sluice.flows.sessions import SessionTracker

from ..support.pcapgen import ACK, PSH, SYN

T0 = 1_700_000_000_000


def flows(*rows) -> FlowBatch:
    """rows: (src, sport, dst, dport, proto, flags, bytes, packets[, start_ms[, exporter]])"""
    n = len(rows)
    col = lambda i, dt: np.array([r[i] for r in rows], dt)  # noqa: E731
    start = np.array([r[8] if len(r) > 8 else T0 for r in rows], np.int64)
    exporter = [r[9] if len(r) > 9 else "192.0.2.1" for r in rows]
    return FlowBatch.build(
        n,
        src_addr=np.array([list(addr_bytes(r[0])) for r in rows], np.uint8),
        dst_addr=np.array([list(addr_bytes(r[2])) for r in rows], np.uint8),
        exporter_addr=np.array([list(addr_bytes(e)) for e in exporter], np.uint8),
        src_port=col(1, np.uint16),
        dst_port=col(3, np.uint16),
        protocol=col(4, np.uint8),
        tcp_flags=col(5, np.uint16),
        bytes=col(6, np.uint64),
        packets=col(7, np.uint64),
        time_start_ms=start,
        time_end_ms=start + 10,
        sampling_rate=1,
    )


def totals(batches: list[SessionBatch]) -> dict:
    """session id -> (client, cport, server, sport, proto, cbytes, sbytes, cpkts, spkts)"""
    out: dict = {}
    for r in SessionBatch.concat(batches).to_records():
        k = r["session_id"]
        prev = out.get(k)
        base = (r["cln_addr"], r["cln_port"], r["srv_addr"], r["srv_port"], r["protocol"])
        if prev is not None:
            assert prev[:5] == base, "a session's orientation never changes"
            out[k] = base + tuple(
                a + b
                for a, b in zip(prev[5:], (r["cln_bytes"], r["srv_bytes"], r["cln_pkts"], r["srv_pkts"]), strict=True)
            )
        else:
            out[k] = base + (r["cln_bytes"], r["srv_bytes"], r["cln_pkts"], r["srv_pkts"])
    return out


@pytest.mark.parametrize(
    "rows, client, server",
    [
        # no SYN-only evidence: the well-known port is the server, whichever flow comes first
        (
            [
                ("10.0.0.2", 443, "10.0.0.1", 40000, 6, SYN | ACK, 5000, 5),
                ("10.0.0.1", 40000, "10.0.0.2", 443, 6, SYN | ACK, 300, 4),
            ],
            ("10.0.0.1", 40000),
            ("10.0.0.2", 443),
        ),
        # a SYN without ACK decides, even against the port rule (client on a low port)
        ([("10.0.0.9", 80, "10.0.0.8", 5000, 6, SYN, 60, 1)], ("10.0.0.9", 80), ("10.0.0.8", 5000)),
        # both ephemeral: the lower port is the server
        ([("10.0.0.1", 30000, "10.0.0.2", 50000, 17, 0, 100, 1)], ("10.0.0.2", 50000), ("10.0.0.1", 30000)),
        # both well-known: the lower port is the server
        ([("10.0.0.1", 53, "10.0.0.2", 123, 17, 0, 100, 1)], ("10.0.0.2", 123), ("10.0.0.1", 53)),
        # equal ports: the sender of the earliest flow is the client
        (
            [
                ("10.0.0.5", 123, "10.0.0.4", 123, 17, 0, 80, 1, T0 + 5),
                ("10.0.0.4", 123, "10.0.0.5", 123, 17, 0, 80, 1, T0),
            ],
            ("10.0.0.4", 123),
            ("10.0.0.5", 123),
        ),
        # no ports at all (GRE): first seen
        ([("10.0.0.7", 0, "10.0.0.6", 0, 47, 0, 1000, 2)], ("10.0.0.7", 0), ("10.0.0.6", 0)),
        # ICMP echo: the request's sender is the client, the request's type/code the server port
        (
            [
                ("10.0.0.3", 0, "10.0.0.1", 0x0000, 1, 0, 84, 1, T0 + 1),
                ("10.0.0.1", 0, "10.0.0.3", 0x0800, 1, 0, 84, 1, T0 + 2),
            ],
            ("10.0.0.1", 0),
            ("10.0.0.3", 0x0800),
        ),
        # IPv6
        (
            [("2001:db8::2", 22, "2001:db8::1", 50022, 6, ACK | PSH, 900, 3)],
            ("2001:db8::1", 50022),
            ("2001:db8::2", 22),
        ),
        # no SYN: the lower port is the server, pinned at the well-known edge (1023/1024) and above it
        ([("10.0.0.4", 1024, "10.0.0.5", 1023, 6, ACK, 700, 2)], ("10.0.0.4", 1024), ("10.0.0.5", 1023)),
        ([("10.0.0.5", 1023, "10.0.0.4", 1024, 6, ACK, 700, 2)], ("10.0.0.4", 1024), ("10.0.0.5", 1023)),
        ([("10.0.0.6", 1025, "10.0.0.7", 1024, 6, ACK, 700, 2)], ("10.0.0.6", 1025), ("10.0.0.7", 1024)),
        ([("10.0.0.7", 1024, "10.0.0.6", 1025, 6, ACK, 700, 2)], ("10.0.0.6", 1025), ("10.0.0.7", 1024)),
        # a host talking to itself: the ports tell the sides apart
        (
            [
                ("10.0.0.1", 443, "10.0.0.1", 40000, 6, ACK, 5000, 5),
                ("10.0.0.1", 40000, "10.0.0.1", 443, 6, ACK, 300, 4),
            ],
            ("10.0.0.1", 40000),
            ("10.0.0.1", 443),
        ),
    ],
)
def test_orientation(rows, client, server):
    out = SessionTracker().update(flows(*rows), T0)
    (session,) = totals([out]).values()
    assert (session[0], session[1]) == client
    assert (session[2], session[3]) == server
    # each flow's bytes go to the side that sent them (ICMP has no ports to tell by)
    if rows[0][4] != 1:
        sent_by_client = sum(r[6] for r in rows if (r[0], r[1]) == client)
        assert (session[5], session[6]) == (sent_by_client, sum(r[6] for r in rows) - sent_by_client)


def test_both_directions_fold_into_one_session_with_per_side_counts():
    t = SessionTracker()
    out = t.update(
        flows(
            ("10.0.0.1", 40000, "10.0.0.2", 443, 6, SYN | ACK | PSH, 300, 4),
            ("10.0.0.2", 443, "10.0.0.1", 40000, 6, SYN | ACK | PSH, 5000, 5),
        ),
        T0,
    )
    assert len(out) == 1
    r = out.to_records()[0]
    assert (r["cln_bytes"], r["srv_bytes"], r["cln_pkts"], r["srv_pkts"]) == (300, 5000, 4, 5)
    assert r["tcp_flags"] == SYN | ACK | PSH


def test_exporter_updates_of_a_long_session_fold_across_batches():
    t = SessionTracker(idle_timeout_s=120)
    batches = [
        t.update(flows(("10.0.0.1", 40000, "10.0.0.2", 443, 6, ACK, 1000 * i, i, T0 + 60_000 * i)), T0 + 60_000 * i)
        for i in range(1, 5)
    ]
    sessions = totals(batches)
    assert len(sessions) == 1
    assert list(sessions.values())[0][5] == 1000 * (1 + 2 + 3 + 4)
    assert t.stats.sessions_started == 1


def test_idle_and_active_timeouts_end_sessions():
    t = SessionTracker(idle_timeout_s=60, active_timeout_s=600)
    f = flows(("10.0.0.1", 40000, "10.0.0.2", 443, 6, ACK, 100, 1))
    a = t.update(f, T0)["session_id"][0]
    b = t.update(f, T0 + 59_000)["session_id"][0]
    c = t.update(f, T0 + 59_000 + 61_000)["session_id"][0]  # idle for 61 s: a new session
    assert a == b != c
    assert t.stats.sessions_ended_idle == 1
    ids = {t.update(f, T0 + 120_000 + 50_000 * i)["session_id"][0] for i in range(14)}  # busy for 650 s
    assert len(ids) == 2 and t.stats.sessions_ended_active == 1


def test_a_timed_out_session_ends_even_between_expiry_passes():
    # full expiry passes run at most once a second; a flow for a session that timed out
    # since the last pass must still start a new session
    t = SessionTracker(idle_timeout_s=0.5, active_timeout_s=600)
    f = flows(("10.0.0.1", 40000, "10.0.0.2", 443, 6, ACK, 100, 1))
    a = t.update(f, T0)["session_id"][0]  # a pass runs here
    b = t.update(f, T0 + 600)["session_id"][0]  # idle 600 ms > 500 ms, no pass due yet
    c = t.update(f, T0 + 900)["session_id"][0]  # idle 300 ms: the same session as b
    assert a != b == c
    assert t.stats.sessions_ended_idle == 1


def test_the_same_conversation_from_two_exporters_counts_once():
    row_a = ("10.0.0.1", 40000, "10.0.0.2", 443, 6, ACK, 700, 7, T0, "192.0.2.1")
    row_b = ("10.0.0.1", 40000, "10.0.0.2", 443, 6, ACK, 700, 7, T0, "192.0.2.2")
    t = SessionTracker(dedupe_exporters=True)
    out = totals([t.update(flows(row_a, row_b), T0), t.update(flows(row_b), T0 + 1000)])
    assert len(out) == 1 and list(out.values())[0][5] == 700
    assert t.stats.flows_deduplicated == 2
    t = SessionTracker(dedupe_exporters=False)
    out = totals([t.update(flows(row_a, row_b), T0)])
    assert len(out) == 2


def test_memory_is_bounded():
    t = SessionTracker(max_sessions=100)
    for i in range(10):
        t.update(flows(*[(f"10.0.{i}.{j}", 40000, "10.9.9.9", 80, 6, ACK, 100, 1) for j in range(50)]), T0 + i)
    # past the bound, the least recently updated go, down to 90 % of it at once
    assert len(t) == 90 and t.stats.sessions_evicted == 500 - 90
    assert t.memory_bytes() < 1_000_000
    # the survivors are the most recent: the last batch's sessions go on, none starts again
    started = t.stats.sessions_started
    t.update(flows(*[(f"10.0.9.{j}", 40000, "10.9.9.9", 80, 6, ACK, 100, 1) for j in range(50)]), T0 + 20)
    assert t.stats.sessions_started == started


@pytest.mark.parametrize(
    ("span", "now_offset"),
    [
        (10_000, 400),  # every age within the histogram
        (300, 400),  # the oldest beyond it: they go first, the rest ranked by the histogram
        (50, 400),  # more beyond it than go: ranked by sorting
        (10_000, 150),  # a clock stepped back: sessions updated after now
    ],
)
@pytest.mark.parametrize("hint", ["none", 0, "below", "at", "above", 10**9])
def test_eviction_forgets_exactly_the_least_recently_updated(span, now_offset, hint):
    """However the ranking is made (a histogram of ages, or sorting when ages fall outside
    it), eviction forgets the oldest updates first, ties by lowest row, and leaves its scratch
    zeroed; whatever its hint of the age the newest to go has (none; so low that it lists
    too many; below, at or above the age it turns out to be; beyond every age)."""
    from sluice.flows import session_table as table

    def tracker() -> SessionTracker:
        rng = np.random.default_rng(11)
        t = SessionTracker(max_sessions=100_000, idle_timeout_s=3600)
        for k, at in enumerate(rng.permutation(40)):  # batches out of time order
            n = int(rng.integers(1, 8))
            batch = flows(*[(f"10.1.{k}.{j}", 40000, "10.9.9.9", 80, 6, ACK, 100, 1) for j in range(n)])
            t.update(batch, T0 + int(at) * 10)
        return t

    c = tracker()._state.cols
    live = np.flatnonzero(c["live"])
    oldest_first = live[np.lexsort((live, c["updated_ms"][live]))]
    # within a batch's ties, half of them (more than the sessions before now, at 150), and
    # exactly the batches up to the third
    for count in (len(live) // 3, len(live) // 2, int(np.sum(c["updated_ms"][live] <= T0 + 20))):
        t = tracker()
        st, c = t._state, t._state.cols
        newest_gone = T0 + now_offset - int(c["updated_ms"][oldest_first[count - 1]])
        hint_age = {"none": -1, "below": newest_gone - 10, "at": newest_gone, "above": newest_gone + 10}.get(hint, hint)
        ages = np.zeros(span, np.int64)
        age = table.evict_oldest(
            count, T0 + now_offset, ages, st.index_keys, st.index_rows, c["key"], c["updated_ms"], c["live"], st.free,
            st.counts, hint_age,
        )  # fmt: skip
        assert age in (newest_gone, -1)  # -1: ranked by sorting
        survivors = set(oldest_first[count:].tolist())
        assert set(np.flatnonzero(c["live"]).tolist()) == survivors
        assert len(t) == len(live) - count and t.stats.sessions_evicted == count
        assert not ages.any()
        # the index finds every survivor at its row, and no forgotten session
        for row in oldest_first.tolist():
            slot = table._slot(st.index_keys, c["key"][row])
            found = st.index_keys[slot] == c["key"][row]
            assert found == (row in survivors)
            assert not found or st.index_rows[slot] == row


def test_many_sessions_in_one_batch_are_exact():
    rng = np.random.default_rng(5)
    n = 20_000
    clients = [f"10.{i >> 8 & 255}.{i & 255}.1" for i in range(n)]
    rows = []
    for i, c in enumerate(clients):
        rows.append((c, 30000 + i % 20000, "10.200.0.1", 443, 6, ACK, int(rng.integers(1, 10**6)), 3))
        rows.append(("10.200.0.1", 443, c, 30000 + i % 20000, 6, ACK, int(rng.integers(1, 10**6)), 4))
    batch = flows(*rows)
    out = SessionTracker().update(batch, T0)
    assert len(out) == n
    assert int(out["cln_bytes"].sum() + out["srv_bytes"].sum()) == int(batch["bytes"].sum())
    assert set(addr_text(bytes(a)) for a in out["srv_addr"]) == {"10.200.0.1"}


def test_the_session_index_finds_every_live_key_under_churn():
    """The index deletes by shifting entries back (no tombstones): after any mix of inserts and
    deletes, around the table's wrap-around too, every live key is found at its row and no
    deleted key is."""
    from sluice.flows import session_table as table

    rng = np.random.default_rng(3)
    for trial in range(200):
        size = 64
        index_keys, index_rows = np.zeros(size, np.uint64), np.zeros(size, np.int64)
        # home slots crowded around the end of the table, so probes wrap to its start
        homes = rng.choice([60, 61, 62, 63, 0, 1, 2, 30], 30)
        keys = np.unique((rng.integers(1, 2**40, 30).astype(np.uint64) << np.uint64(6)) | homes.astype(np.uint64))
        live: dict[int, int] = {}
        for row, key in enumerate(keys):
            slot = table._slot(index_keys, key)
            assert index_keys[slot] == 0
            index_keys[slot], index_rows[slot] = key, row
            live[int(key)] = row
            if rng.random() < 0.4:  # delete a random live key now and then
                gone = int(rng.choice(list(live)))
                table._unindex(index_keys, index_rows, np.uint64(gone))
                del live[gone]
        for key in keys:
            slot = table._slot(index_keys, key)
            if int(key) in live:
                assert index_keys[slot] == key and index_rows[slot] == live[int(key)], trial
            else:
                assert index_keys[slot] == 0, trial
        assert int((index_keys != 0).sum()) == len(live)


def test_sessions_survive_heavy_churn_with_consistent_ids():
    """Conversations coming and going over and over (rows and index slots reused): a
    conversation keeps its session exactly while it is not idle, and the count is exact."""
    rng = np.random.default_rng(8)
    t = SessionTracker(idle_timeout_s=0.05, first_id=1)
    last_seen: dict[bytes, tuple[int, int]] = {}  # client address -> (session id, last update)
    now, renewed = T0, 0
    for _ in range(80):
        now += int(rng.integers(1, 40))
        picks = set(rng.integers(0, 2000, 300).tolist())
        out = t.update(
            flows(*[(f"10.1.{p >> 8}.{p & 255}", 40000, "10.2.0.1", 443, 6, ACK, 100, 1) for p in picks]), now
        )
        ids = {bytes(a): sid for a, sid in zip(out["cln_addr"], out["session_id"].tolist(), strict=True)}
        assert len(ids) == len(picks)  # one delta row per conversation touched
        for addr, sid in ids.items():
            before = last_seen.get(addr)
            if before is not None:
                idle = now - before[1] > 50
                assert (sid != before[0]) == idle
                renewed += idle
            last_seen[addr] = (sid, now)
    stats = t.stats
    assert renewed > 100 and stats.sessions_ended_idle >= renewed
    assert len(t) == stats.sessions_started - stats.sessions_ended_idle - stats.sessions_ended_active


def test_a_tracker_fills_to_its_bound_without_growing():
    """Room for the bound is made at the start: growing a large table stalled a batch long
    enough to overflow a socket buffer (0.1-0.2 s at half a million sessions)."""
    t = SessionTracker(max_sessions=5000, first_id=1)
    state = t._state
    arrays = (state.cols["key"], state.index_keys)
    for i in range(30):
        t.update(
            flows(*[(f"10.{i}.{j >> 8}.{j & 255}", 40000, "10.9.9.9", 80, 6, ACK, 100, 1) for j in range(400)]), T0 + i
        )
    assert len(t) <= 5000 and t.stats.sessions_evicted > 0  # it reached its bound
    assert state.cols["key"] is arrays[0] and state.index_keys is arrays[1], "no array was reallocated"


def test_session_ids_carry_the_node_and_count_from_the_start_time():
    from sluice.flows.sessions import first_session_id

    a, b = first_session_id(0), first_session_id(7, step=3)
    assert a < 1 << 56 and b >> 56 == 7 and (b - (7 << 56)) % 3 == 0
    # the counter part is milliseconds since 2020 shifted by 15 bits: now, within a minute
    assert abs((a >> 15) - (time.time() * 1000 - 1_577_836_800_000)) < 60_000
    time.sleep(0.002)
    assert first_session_id(0) > a  # a restart counts on from a later start
    with pytest.raises(ValueError, match="node id 256"):
        first_session_id(256)


def test_a_new_sessions_fields_come_from_its_earliest_flow_oriented_as_its_endpoints():
    """A session's exporter, protocol, interfaces and AS numbers are those of its earliest
    flow in the batch that starts it; its AS numbers follow its endpoints (the client's is the
    one of whichever side is the client); its id counts from ``first_id`` in ``id_step``s, in
    the order the batch first touches the sessions. Held to a plain reference over random
    batches of both directions, several exporters and out-of-order start times."""
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        conv = rng.integers(0, max(1, n // 2), n)  # a few flows per conversation
        forward = rng.random(n) < 0.5
        a = np.array([list(addr_bytes(f"10.{trial}.0.{c}")) for c in conv], np.uint8)
        b = np.array([list(addr_bytes(f"10.{trial}.1.{c}")) for c in conv], np.uint8)
        a_port, b_port = (40000 + conv).astype(np.uint16), np.full(n, 443, np.uint16)
        batch = FlowBatch.build(
            n,
            src_addr=np.where(forward[:, None], a, b), dst_addr=np.where(forward[:, None], b, a),
            src_port=np.where(forward, a_port, b_port), dst_port=np.where(forward, b_port, a_port),
            exporter_addr=np.array([list(addr_bytes(f"192.0.2.{int(e)}")) for e in rng.integers(1, 4, n)], np.uint8),
            protocol=6, tcp_flags=ACK, bytes=100, packets=1,
            time_start_ms=T0 + rng.integers(0, 50, n), time_end_ms=T0 + 60,
            input_if=rng.integers(1, 2**32, n), output_if=rng.integers(1, 2**32, n),
            src_as=rng.integers(1, 2**32, n), dst_as=rng.integers(1, 2**32, n), sampling_rate=1,
        )  # fmt: skip
        first_id, step = int(rng.integers(1, 2**40)), int(rng.integers(1, 5))
        tracker = SessionTracker(dedupe_exporters=False, first_id=first_id, id_step=step)
        out = tracker.update(batch, T0 + 100)
        # the reference: per (conversation, exporter), the earliest flow (the first on ties)
        sessions: dict = {}
        for i in range(n):
            key = (int(conv[i]), bytes(batch["exporter_addr"][i]))
            if key not in sessions:
                sessions[key] = {"first_touch": i, "earliest": i}
            elif batch["time_start_ms"][i] < batch["time_start_ms"][sessions[key]["earliest"]]:
                sessions[key]["earliest"] = i
        assert len(out) == len(sessions)
        for o, s in enumerate(sorted(sessions.values(), key=lambda s: s["first_touch"])):
            f = s["earliest"]
            assert int(out["session_id"][o]) == first_id + o * step
            assert bytes(out["exporter_addr"][o]) == bytes(batch["exporter_addr"][f])
            assert int(out["protocol"][o]) == 6
            assert (int(out["input_if"][o]), int(out["output_if"][o])) == (
                int(batch["input_if"][f]), int(batch["output_if"][f])
            )  # fmt: skip
            assert bytes(out["cln_addr"][o]) == bytes(a[f])  # the high port's side is the client
            src_is_client = bytes(batch["src_addr"][f]) == bytes(a[f])
            src_as, dst_as = int(batch["src_as"][f]), int(batch["dst_as"][f])
            assert (int(out["cln_asn"][o]), int(out["srv_asn"][o])) == (
                (src_as, dst_as) if src_is_client else (dst_as, src_as)
            )
