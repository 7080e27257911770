"""A live ``sluice serve`` on loopback ports, the installed commands, and what they answer."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .interop import free_tcp_port, free_udp_port

SLUICE = str(Path(sys.executable).parent / "sluice")
ADMIN = ("admin", "test-admin-password")
ADMIN_ENV = dict(os.environ, SLUICE_ADMIN_PASSWORD=ADMIN[1])


def stored_sessions(http: int) -> int:
    status = httpx.get(f"http://127.0.0.1:{http}/api/v1/status", auth=ADMIN, timeout=5).json()
    return status["storage"]["rows"]


def sluice(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=timeout, **kw)


def metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


@pytest.fixture
def server(tmp_path):
    ports = {"netflow": free_udp_port(), "ipfix": free_udp_port(), "sflow": free_udp_port(), "http": free_tcp_port()}
    proc = subprocess.Popen(
        [SLUICE, "serve", "--listen", "127.0.0.1", "--http-listen", "127.0.0.1", "--http-port", str(ports["http"]),
         "--netflow-port", str(ports["netflow"]), "--ipfix-port", str(ports["ipfix"]),
         "--sflow-port", str(ports["sflow"]), "--data-dir", str(tmp_path / "var"), "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ADMIN_ENV)
    deadline = time.time() + 90  # it compiles its loops first where numba's cache is cold (a test run alone)
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{ports['http']}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None, proc.stderr.read()
            if time.time() > deadline:
                proc.kill()
                pytest.fail("sluice serve did not answer on its HTTP port within 90 s")
            time.sleep(0.2)
    yield ports, proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_server(tmp_path, http: int, netflow: int, log: Path | None = None, args: tuple[str, ...] = (),
                 popen: dict | None = None, **env: str) -> subprocess.Popen:
    """``sluice serve`` on loopback ports (NetFlow only), once its HTTP port answers; its log
    in the file ``log``, else in the test's own stderr, which pytest captures and shows with a
    failure (a pipe nobody reads would fill and stall the server's logging, and so the server).
    ``args``: more command-line options; ``popen``: more ``subprocess.Popen`` arguments."""
    with open(log, "w") if log is not None else contextlib.nullcontext() as log_file:
        proc = subprocess.Popen(
            [SLUICE, "serve", "--listen", "127.0.0.1", "--netflow-port", str(netflow), "--ipfix-port", "0",
             "--sflow-port", "0", "--http-listen", "127.0.0.1", "--http-port", str(http),
             "--data-dir", str(tmp_path / "var"), *args], stdout=subprocess.DEVNULL, stderr=log_file, text=True,
            env=dict(ADMIN_ENV, **env), **(popen or {}))
    deadline = time.monotonic() + 60  # it compiles its loops first where numba's cache is cold
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{http}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            assert proc.poll() is None, f"sluice serve exited as it started: see its log ({log or 'captured stderr'})"
            time.sleep(0.1)
    raise AssertionError("sluice serve did not answer on its HTTP port within 60 s")


def ns2(tool: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / tool), *args], capture_output=True, text=True,
                          timeout=60, env=env or dict(os.environ))
