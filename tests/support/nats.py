"""A NATS server with JetStream (Debian's ``nats-server``) for the tests: started on a loopback
port with its store in a temporary directory, stopped at the end."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .env import require_tool
from .interop import free_tcp_port


class NatsServer:
    def __init__(self) -> None:
        self.binary = require_tool("nats-server")
        self.port = free_tcp_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-nats-"))
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-sd", str(self.dir / "store"), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                assert self.proc.poll() is None, (self.dir / "server.log").read_text()
                time.sleep(0.05)
        raise AssertionError(f"nats-server did not start: {(self.dir / 'server.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
