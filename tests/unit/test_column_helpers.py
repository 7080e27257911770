"""Column helpers of flows/schema.py: rows taken and put by position (faster than numpy's
fancy indexing for addresses), and numpy <-> Arrow conversions that do not import pandas.

pyarrow imports pandas the first time ``pa.array`` is given a numpy array, or a column's
``to_numpy`` is called: found in a profile of two session workers, where each one imported
it at its first flush, in the middle of the traffic (half a CPU-second and 50 MB a process;
with two workers a fifth of the extra CPU per flow that two workers cost against one)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from sluice.flows.schema import address_words, arrow_to_numpy, numpy_to_arrow, put_rows, take_rows

WORKER_PATH = r"""
import sys, tempfile, time
from pathlib import Path
from sluice.flows.enrich import Enricher
from sluice.flows.schema import SessionBatch
from sluice.flows.sessions import SessionTracker
from sluice.simulate.traffic import TrafficModel
from sluice.store.duckdb_store import stage_sessions

now = int(time.time() * 1000)
tracker = SessionTracker(60, 1800, 100_000, True)
sessions, _ = tracker.track(TrafficModel(seed=5).conversations(now - 10_000, now, 2000), now)
sessions = Enricher()(sessions)
with tempfile.TemporaryDirectory() as tmp:
    staged = stage_sessions([sessions], Path(tmp), "w0-1")
    assert sum(f.rows for f in staged) == len(sessions) > 0, staged
    assert min(f.min_start for f in staged) == int(sessions["start_ms"].min())
    back = SessionBatch.from_arrow(SessionBatch(sessions.columns).to_arrow())
    assert (back["cln_bytes"] == sessions["cln_bytes"]).all()
print("pandas" in sys.modules)
"""


def test_a_session_worker_path_does_not_import_pandas(tmp_path):
    """Track, enrich, write the rows' files and read a batch back, as a worker does."""
    out = subprocess.run([sys.executable, "-c", WORKER_PATH], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False", "pandas was imported"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int32, np.int64, np.float64])
def test_numeric_columns_round_trip(dtype):
    values = np.array([0, 1, 7, 200], dtype)
    arrow = numpy_to_arrow(values)
    assert arrow.type == pa.from_numpy_dtype(np.dtype(dtype))
    assert arrow.to_pylist() == values.tolist()
    assert arrow_to_numpy(arrow).tolist() == values.tolist()


def test_a_column_is_cast_to_the_arrow_type_asked_for_and_refused_where_it_does_not_fit():
    assert numpy_to_arrow(np.array([1, 2], np.int64), pa.int32()).to_pylist() == [1, 2]
    assert numpy_to_arrow(np.array([3], np.int64), pa.uint64()).type == pa.uint64()
    with pytest.raises(OverflowError, match="int32"):
        numpy_to_arrow(np.array([2**40], np.int64), pa.int32())
    with pytest.raises(OverflowError):
        numpy_to_arrow(np.array([-1], np.int64), pa.uint64())


def test_boolean_columns_are_packed_bits():
    mask = np.array([True, False, True, True, False, False, False, False, True, True])
    arrow = numpy_to_arrow(mask)
    assert arrow.type == pa.bool_() and arrow.to_pylist() == mask.tolist()
    assert arrow_to_numpy(arrow[3:]).tolist() == mask[3:].tolist()


def test_slices_and_chunks_are_read_from_their_offset():
    column = pa.chunked_array([pa.array([1, 2, 3], pa.int64()), pa.array([4, 5], pa.int64())])
    assert arrow_to_numpy(column).tolist() == [1, 2, 3, 4, 5]
    assert arrow_to_numpy(column.combine_chunks()[2:4]).tolist() == [3, 4]


def test_a_column_with_missing_values_is_refused():
    with pytest.raises(ValueError, match="1 missing values"):
        arrow_to_numpy(pa.array([1, None, 3], pa.int64()))


@pytest.mark.parametrize("shape", [(50,), (50, 16), (50, 3)])
def test_rows_are_taken_as_indexing_takes_them(shape):
    rng = np.random.default_rng(1)
    column = rng.integers(0, 255, shape).astype(np.uint8)
    positions = rng.integers(0, 50, 30)
    mask = rng.random(50) < 0.5
    assert np.array_equal(take_rows(column, positions), column[positions])
    assert np.array_equal(take_rows(column, mask), column[mask])
    assert take_rows(column, np.empty(0, np.int64)).shape == (0, *shape[1:])
    with pytest.raises(IndexError):
        take_rows(column, np.array([50]))


@pytest.mark.parametrize("shape", [(50,), (50, 16)])
def test_rows_are_put_as_assignment_puts_them(shape):
    rng = np.random.default_rng(2)
    expected = rng.integers(0, 255, shape).astype(np.uint8)
    column = expected.copy()
    positions = rng.choice(50, 20, replace=False)
    values = rng.integers(0, 255, (20, *shape[1:])).astype(np.uint8)
    expected[positions] = values
    put_rows(column, positions, values)
    assert np.array_equal(column, expected)
    strided = np.zeros((50, 32), np.uint8)[:, ::2]  # not contiguous: numpy's own assignment
    put_rows(strided, positions, np.full((20, 16), 7, np.uint8))
    assert (strided[positions] == 7).all() and strided.sum() == 20 * 16 * 7


def test_address_words_are_the_big_endian_halves():
    rng = np.random.default_rng(3)
    addresses = rng.integers(0, 256, (40, 16)).astype(np.uint8)
    hi, lo = address_words(addresses[::2])  # a strided view, as a column slice can be
    for i, row in enumerate(addresses[::2]):
        assert int(hi[i]) == int.from_bytes(row[:8].tobytes(), "big")
        assert int(lo[i]) == int.from_bytes(row[8:].tobytes(), "big")
    assert hi.dtype == np.uint64 and hi.flags.c_contiguous


def test_ipv4_addresses_become_the_mapped_ipv6_addresses_byte_for_byte() -> None:
    """``ipv4_to_mapped`` writes each row as 32-bit words: the result is ``::ffff:a.b.c.d`` in
    network order, as ``ipaddress`` spells it, whatever the machine's byte order."""
    import ipaddress

    from sluice.collect.wire import ipv4_to_mapped

    edges = [0, 1, 0x7F000001, 0xC0A80101, 0xFFFFFFFF]
    values = np.concatenate([edges, np.random.default_rng(5).integers(0, 2**32, 500)])
    for dtype in (np.uint32, np.uint64, np.int64):  # decoders hand over whichever they read
        got = ipv4_to_mapped(values.astype(dtype))
        assert got.shape == (len(values), 16) and got.dtype == np.uint8
        want = [ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(int(v))}").packed for v in values]
        assert [bytes(row) for row in got] == want
