"""A ClickHouse cluster for the tests: two ``clickhouse-server`` processes (Debian's package,
18.16) on loopback ports, each a shard of the cluster ``sluice`` (``remote_servers``), in a
temporary directory, started and stopped by the tests. One may be killed and started again."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .env import require_tool
from .interop import free_tcp_port

CLUSTER = "sluice"

_USERS = """<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"""


class ClickHouseServer:
    def __init__(self, directory: Path, remote_servers: str):
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.port, self.http_port, self.interserver_port = free_tcp_port(), free_tcp_port(), free_tcp_port()
        (self.dir / "users.xml").write_text(_USERS)
        self.config = self.dir / "config.xml"
        self.remote_servers = remote_servers
        self.proc: subprocess.Popen | None = None

    def write_config(self, remote_servers: str) -> None:
        d = self.dir
        self.config.write_text(f"""<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>
  <tcp_port>{self.port}</tcp_port>
  <http_port>{self.http_port}</http_port>
  <interserver_http_port>{self.interserver_port}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <!-- not UTC: Sluice's days and buckets must not depend on the server's time zone -->
  <timezone>Asia/Kolkata</timezone>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <remote_servers>{remote_servers}</remote_servers>
</yandex>
""")

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return  # running
        binary = require_tool("clickhouse-server")
        self.proc = subprocess.Popen([binary, f"--config-file={self.config}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited: {self.proc.stderr.read()}"  # type: ignore[union-attr]
                                   f"{(self.dir / 'error.log').read_text() if (self.dir / 'error.log').exists() else ''}")
            if time.time() > deadline:
                raise RuntimeError("clickhouse-server did not answer within 60 s")
            time.sleep(0.2)

    def answers(self) -> bool:
        from clickhouse_driver import Client

        try:
            Client(host="127.0.0.1", port=self.port, connect_timeout=1).execute("SELECT 1")
            return True
        except Exception:
            return False

    def kill(self) -> None:
        """As if it died (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class ClickHouseCluster:
    """Two servers, one shard each, forming the cluster ``sluice``."""

    def __init__(self, shards: int = 2):
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-ch-"))
        self.servers = [ClickHouseServer(self.dir / f"shard{i + 1}", "") for i in range(shards)]
        remote = f"<{CLUSTER}>" + "".join(
            f"<shard><replica><host>127.0.0.1</host><port>{s.port}</port></replica></shard>" for s in self.servers
        ) + f"</{CLUSTER}>"
        for server in self.servers:
            server.write_config(remote)
            server.start()

    @property
    def addresses(self) -> list[str]:
        """The servers as ``host:port`` (native protocol), shard order."""
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
