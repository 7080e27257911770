"""The suite is grouped by what it runs against: ``unit/`` (modules and kernels), ``interop/``
(real exporters, nfcapd, vendor packets), ``live/`` (a running server, real SMTP and syslog),
``web/`` (a real browser); shared helpers are in ``support/``."""

import os
import tempfile

import pytest

# the session tracker's compiled loops (numba) are cached here for the whole run, shared by
# the servers the tests start, instead of beside the sources in the checkout
os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="sluice-numba-"))

from .support.server import server  # noqa: E402, F401  (a fixture: a live ``sluice serve``)


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own temporary directory: whatever a command writes relative to
    where it runs (``sluice serve`` without ``--data-dir`` creates ``var/``) stays out of the
    checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the run (Debian's package, started in a temporary directory)."""
    from .support.postgres import Postgres

    server = Postgres()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request):
    """A test that takes this runs on both state database engines: None (SQLite in the data
    directory, the default) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def nats_server():
    """A NATS server with JetStream (Debian's nats-server) of the test's own."""
    from .support.nats import NatsServer

    server = NatsServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def clickhouse():
    """A two-shard ClickHouse cluster for the run (Debian's clickhouse-server, started in a
    temporary directory)."""
    from .support.clickhouse import ClickHouseCluster

    cluster = ClickHouseCluster()
    yield cluster
    cluster.close()
