"""The HTTP application in-process (FastAPI's TestClient), with three users and a few sessions."""

import time

import numpy as np

from sluice.counters import Counters
from sluice.flows.schema import SessionBatch, addr_bytes
from sluice.http.app import create_app
from sluice.state.db import open_state
from sluice.state.users import Users
from sluice.store.duckdb_store import DuckDBStore

ADMIN = ("admin", "admin-password-1")
ALICE = ("alice", "alice-password-1")
BOB = ("bob", "bob-password-12")


def make_app(tmp_path, state_url=None):
    """``state_url``: the state database (None: SQLite in the data directory)."""
    users = Users(open_state(tmp_path / "state", state_url))
    assert users.ensure_admin(ADMIN[1]) is None  # password given: nothing generated
    users.create(*ALICE)
    users.create(*BOB)
    store = DuckDBStore(tmp_path / "sessions.duckdb")
    now = int(time.time() * 1000)
    n = 20
    addrs = lambda base: np.array([list(addr_bytes(f"10.0.{base}.{i}")) for i in range(n)], np.uint8)  # noqa: E731
    store.append(SessionBatch.build(n, session_id=np.arange(n), start_ms=now - 60_000, end_ms=now - 1000,
                                    cln_addr=addrs(1), srv_addr=addrs(2), srv_port=443, protocol=6,
                                    cln_bytes=np.arange(n) * 100, srv_bytes=1000, cln_country=b"XP",
                                    srv_country=b"XP"))
    store.flush()
    return create_app(Counters(), users, [("netflow", 2055)], store), users, store
