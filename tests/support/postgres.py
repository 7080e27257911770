"""PostgreSQL (Debian's ``postgresql-15``) for the tests: one server for the whole run, made
with ``initdb`` in a temporary directory and started with ``pg_ctl`` on a loopback port, stopped
at the end; each test that asks gets a database of its own.

``initdb`` refuses to run as root: as root (CI) the server runs as the ``postgres`` user the
package creates, in a directory that user owns."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .env import IN_CI
from .interop import free_tcp_port

SUPERUSER = "sluice"


def postgres_tool(name: str) -> str:
    """A PostgreSQL server program (Debian keeps them out of PATH, under its version)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [p for p in [shutil.which(name)] if p]
    if not found:
        message = f"{name} (PostgreSQL) not installed (run ./scripts/install-debian-deps.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found[-1]


class Postgres:
    def __init__(self) -> None:
        self.port = free_tcp_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._names = itertools.count(1)
        as_root = os.geteuid() == 0
        self.user = "postgres" if as_root else None
        if as_root:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("no postgres user: install postgresql-15 (./scripts/install-debian-deps.sh)")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self._run(
            postgres_tool("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        self.start()

    def _run(self, *args: str) -> None:
        out = subprocess.run(args, capture_output=True, text=True, user=self.user, group=self.user, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")

    def start(self) -> None:
        # loopback only; no Unix socket in /run (the package's directory may not exist here);
        # no fsync: a test's database need not survive a power cut (it does survive the
        # server's death: commits still reach the WAL before they return)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(postgres_tool("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate``: as if it died)."""
        self._run(postgres_tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
