"""Session rows for a ClickHouse shard that is down: kept in a bounded spool on local disk and
replayed when it answers, each stored exactly once - a shard killed during inserts, an
insert whose acknowledgement was lost, a restart of Sluice with rows still spooled, a full
spool and a damaged entry. Against the test run's two real clickhouse-server processes."""

import itertools
import os
import threading
import time

import numpy as np
import pytest

from sluice.flows.schema import SessionBatch
from sluice.store.clickhouse_store import ClickHouseStore
from sluice.store.spool import Spool

from ..support.clickhouse import CLUSTER
from ..support.interop import free_tcp_port
from .test_store import T0, random_sessions

DAY_MS = 86_400_000
_databases = itertools.count(1)


def numbered(first: int, n: int, seed: int) -> SessionBatch:
    """``n`` sessions with the ids first .. first + n - 1, over two days (two partitions)."""
    batch = random_sessions(n, seed, span_ms=2 * DAY_MS)
    batch.columns["session_id"] = np.arange(first, first + n, dtype=np.uint64)
    return batch


def database() -> str:
    return f"spool{os.getpid()}_{next(_databases)}"


def stored(cluster, db: str, shards: int = 2) -> tuple[int, int, int]:
    """Rows, distinct session ids and the sum of the ids, over the first ``shards`` shards."""
    from clickhouse_driver import Client

    totals = [0, 0, 0]
    for server in cluster.servers[:shards]:
        [(rows, ids, total)] = Client(host="127.0.0.1", port=server.port).execute(
            f"SELECT count(), uniqExact(session_id), sum(session_id) FROM {db}.sessions_local")
        totals = [totals[0] + rows, totals[1] + ids, totals[2] + total]  # ids never span shards
    return totals[0], totals[1], totals[2]


def drain(store: ClickHouseStore, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while store.spool.rows:
        assert time.monotonic() < deadline, f"spool not replayed: {store.gauges()}"
        store.flush()
        time.sleep(0.1)


def test_a_shard_killed_during_inserts_and_started_again_has_every_session_once(tmp_path, clickhouse):
    db = database()
    store = ClickHouseStore(clickhouse.addresses, CLUSTER, db, spool=Spool(tmp_path / "spool", 2**30),
                            retry_first_s=0.2)
    down = clickhouse.servers[1]
    batches, per_batch = 60, 5000
    errors: list[BaseException] = []
    progress = threading.Semaphore(0)

    def write() -> None:
        try:
            for k in range(batches):
                store.append(numbered(k * per_batch, per_batch, k))
                store.flush()
                progress.release()
                time.sleep(0.05)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
            progress.release()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(10):
            progress.acquire(timeout=60)
        down.kill()  # kill -9 in the middle of the inserts
        for _ in range(20):
            progress.acquire(timeout=60)
        assert store.gauges()["spool_rows"] > 0 and store.gauges()["shards_down"] == 1
    finally:
        down.start()
        writer.join(120)
    assert not errors, errors
    drain(store)
    gauges = store.gauges()
    assert gauges["spooled_rows_total"] >= 20 * per_batch // 4  # a good part of shard 2's share waited
    assert gauges["replayed_rows_total"] + gauges["replay_found_rows_total"] == gauges["spooled_rows_total"]
    assert gauges["dropped_rows_total"] == 0 and gauges["shards_down"] == 0
    n = batches * per_batch
    assert stored(clickhouse, db) == (n, n, n * (n - 1) // 2)  # every session, each once
    assert store.stats().rows == n
    store.close()


class AcknowledgementLost:
    """A real client whose first INSERT is stored by the server but reported as failed, as when
    the connection breaks between the server's commit and its answer."""

    def __init__(self, client):
        self.client = client
        self.lost = 0

    def execute(self, sql, *args, **kwargs):
        result = self.client.execute(sql, *args, **kwargs)
        if sql.startswith("INSERT") and not self.lost:
            self.lost += 1
            raise EOFError("Unexpected EOF while reading bytes")
        return result

    def disconnect(self):
        self.client.disconnect()


def test_an_insert_whose_acknowledgement_was_lost_is_not_stored_twice(tmp_path, clickhouse):
    from sluice.store.clickhouse_store import _client

    wrapped: list[AcknowledgementLost] = []

    def connect(host, port):
        wrapped.append(AcknowledgementLost(_client(host, port)))
        return wrapped[-1]

    db = database()
    store = ClickHouseStore(clickhouse.addresses[:1], CLUSTER, db, connect=connect,
                            spool=Spool(tmp_path / "spool", 2**30), retry_first_s=0.1)
    rows = numbered(0, 3000, 1)
    store.append(rows)
    assert store.flush() == 0 and store.write_errors == 1  # stored, but the store cannot know
    assert store.gauges()["spool_rows"] == 3000
    time.sleep(0.3)
    drain(store)
    gauges = store.gauges()
    assert gauges["replay_found_rows_total"] == 3000 and gauges["replayed_rows_total"] == 0
    assert stored(clickhouse, db, shards=1) == (3000, 3000, 3000 * 2999 // 2)
    store.close()


def test_spooled_rows_survive_a_restart_and_a_full_spool_drops_and_counts(tmp_path, clickhouse):
    """Sluice stops while its only shard is down: the rows wait on disk, a full spool drops
    (counted), a damaged entry is set aside (counted); the next start replays the rest."""
    db = database()
    nowhere = f"127.0.0.1:{free_tcp_port()}"  # no server listens there
    one = numbered(0, 2000, 1)
    spool = Spool(tmp_path / "spool", 2**30)
    spool.put(0, 7, one)
    bound = spool.bytes * 2 + spool.bytes // 2  # room for two batches of this size, not three
    spool.remove(spool.oldest(0))

    store = ClickHouseStore([nowhere], CLUSTER, db, spool=Spool(tmp_path / "spool", bound), retry_first_s=60)
    for k in range(3):
        store.append(numbered(k * 2000, 2000, k + 1))
        assert store.flush() == 0
    gauges = store.gauges()
    assert gauges["spool_rows"] == 4000 and gauges["spooled_rows_total"] == 4000
    assert gauges["dropped_rows_total"] == 2000 and gauges["shards_down"] == 1
    store.close()
    (tmp_path / "spool" / "0-999-abc-10.arrow").write_bytes(b"not an Arrow file")

    store = ClickHouseStore(clickhouse.addresses[:1], CLUSTER, db, spool=Spool(tmp_path / "spool", bound))
    drain(store)
    gauges = store.gauges()
    assert gauges["replayed_rows_total"] == 4000 and gauges["dropped_rows_total"] == 10
    assert store.spool.bad_entries == 1 and (tmp_path / "spool" / "0-999-abc-10.bad").exists()
    assert stored(clickhouse, db, shards=1)[:2] == (4000, 4000)
    store.close()
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["0-999-abc-10.bad"]


def test_the_spool_keeps_whole_entries_in_order(tmp_path):
    spool = Spool(tmp_path, 2**30)
    first, second = numbered(0, 100, 1), numbered(100, 50, 2)
    assert spool.put(1, 2**62 + 5, first) and spool.put(1, 9, second) and spool.put(0, 3, numbered(200, 7, 3))
    (tmp_path / "1-77-ff-3.tmp").write_bytes(b"cut short")
    again = Spool(tmp_path, 2**30)  # as after a restart
    assert not (tmp_path / "1-77-ff-3.tmp").exists() and again.rows == 157 and sorted(again.shards()) == [0, 1]
    entry = again.oldest(1)
    assert (entry.batch_id, entry.rows) == (2**62 + 5, 100)
    back = again.read(entry)
    for name in SessionBatch.COLUMNS:
        assert np.array_equal(back[name], first[name]), name
    again.remove(entry)
    assert again.oldest(1).batch_id == 9 and again.rows == 57
    with pytest.raises(ValueError):
        Spool(tmp_path, 2**30).read(again.oldest(1).__class__(1, 1, 1, 99, 0, again.oldest(1).path))
