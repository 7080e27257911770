"""``sluice serve``: wire the collector, the HTTP app and (optionally) the simulator together."""

from __future__ import annotations

import gc
import os
import signal
import socket
import ssl
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
from fastapi import FastAPI

from .alerts.definition import DefinitionIn
from .alerts.service import AlertService
from .alerts.system import SystemWatch
from .allocator import keep_freed_memory, use_huge_pages
from .collect.decoder import Decoder, DecoderConfig
from .collect.listener import Collector
from .config import Settings
from .counters import Counters
from .datadir import make_private
from .http.app import create_app
from .ingest import Ingest
from .notify.destinations import DestinationPolicy
from .notify.service import NotifyService
from .state.db import open_state

if TYPE_CHECKING:  # the simulator is imported only when it runs
    from .simulate.sender import Simulator
from .state.preferences import Preferences
from .state.users import Users

log = structlog.get_logger(__name__)


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        make_private(settings.data_dir)
        self.counters = Counters()
        collect = settings.collect
        self.decoder = Decoder(
            DecoderConfig(
                sampling_defaults=dict(collect.sampling),
                default_sampling_rate=collect.default_sampling_rate,
                pending_max_age_s=collect.template_pending_max_age_s,
                pending_max_bytes=collect.template_pending_max_bytes,
            ),
            self.counters,
        )
        self.ingest = Ingest(settings, self.counters)
        self.collector = Collector(collect, self.decoder, [self.ingest], self.ingest.workers)
        self.app: FastAPI | None = None
        self.simulator: Simulator | None = None
        self.users = Users(open_state(settings.data_dir, settings.state.url, settings.state.secret_key_file))
        self.generated_password = self.users.ensure_admin(os.environ.get("SLUICE_ADMIN_PASSWORD"))
        self.alerts = AlertService(self.users.db, settings.alerts, settings.data_dir, self.counters, settings.cluster)
        self.ingest.listeners.append(self.alerts.submit)
        self.ingest.wants_sessions = self.alerts.wants_sessions
        self.ingest.on_unseen_rows.append(self.alerts.skip)
        notify_settings, c = settings.notify, settings.collect
        tls = (
            ssl.create_default_context(cafile=str(notify_settings.smtp_ca_file))
            if notify_settings.smtp_ca_file
            else None
        )
        self.notify = NotifyService(
            self.users.db,
            self.alerts.store,
            self.counters,
            link=public_url(settings),
            dead_after_s=notify_settings.dead_after_s,
            tls_context=tls,
            poll_s=notify_settings.poll_s,
            node=f"{socket.gethostname()}:{settings.data_dir.resolve()}",  # the same across restarts
            policy=DestinationPolicy.of(
                notify_settings.destinations_allow,
                notify_settings.destinations_deny,
                # its own ports: HTTP and the collector's
                [settings.http.port, *(p for p in (c.netflow_port, c.ipfix_port, c.sflow_port) if p)],
            ),
        )
        self.system = SystemWatch(self.counters, self.alerts.store, settings.alerts, self.alerts.failed_definitions)
        prefs = Preferences(self.users.db)
        self.ingest.retention_days = lambda: prefs.system().retention_days  # administrators may change it live
        self.retention_in_force = lambda: prefs.system().retention_days or settings.store.retention_days

    def start_collector(self) -> None:
        # the sockets first: what arrives while the stages behind them start (session workers
        # take seconds) waits in the kernel's buffers; the receive loop last, once every
        # stage can take a batch
        self.collector.bind()
        self.ingest.start()
        self.alerts.start()
        self.notify.start()
        self.system.start()
        self.collector.start()
        listeners = [(listener.name, listener.port) for listener in self.collector.listeners]
        self.app = create_app(
            self.counters,
            self.users,
            listeners,
            self.ingest.store,
            secure_cookies=self.settings.http.tls,
            alerts=self.alerts,
            notify=self.notify,
            retention_days=self.retention_in_force,
            metrics_token=self.settings.http.metrics_token,
        )

    def start_simulator(self, conversations_per_s: float) -> None:
        from .simulate.sender import Simulator

        collect = self.settings.collect
        host = (
            "127.0.0.1"
            if collect.listen in ("0.0.0.0", "127.0.0.1")
            else ("::1" if collect.listen == "::" else collect.listen)
        )
        simulator = self.simulator = Simulator(
            host=host,
            netflow_port=collect.netflow_port,
            ipfix_port=collect.ipfix_port,
            sflow_port=collect.sflow_port,
            conversations_per_s=conversations_per_s,
            protocols=tuple(
                protocol
                for protocol, port in (
                    ("netflow5", collect.netflow_port),
                    ("netflow9", collect.netflow_port),
                    ("ipfix", collect.ipfix_port),
                    ("sflow", collect.sflow_port),
                )
                if port
            ),
            opening_events=True,
        )
        self._example_definitions()
        simulator.start_background()

    def _example_definitions(self) -> None:
        """With the traffic generator on, give a first-time admin alerts to watch it by."""
        admin = self.users.get("admin")
        if admin is None or self.alerts.store.definitions(admin.id):
            return
        for definition in EXAMPLE_DEFINITIONS:
            self.alerts.store.create(admin.id, definition)

    def bind_http(self) -> socket.socket:
        """Bind the HTTP port now, so a busy port is reported before anything else starts."""
        http = self.settings.http
        family = socket.AF_INET6 if ":" in http.listen else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http.listen, http.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno,
                f"cannot serve HTTP on {http.listen}:{http.port}: {exc.strerror}; choose another port with --http-port",
            ) from None
        sock.listen(128)
        return sock

    def serve_http(self, sock: socket.socket) -> None:
        http = self.settings.http
        tls: dict[str, Any] = {"ssl_certfile": str(http.tls_cert), "ssl_keyfile": str(http.tls_key)} if http.tls else {}
        assert self.app is not None, "start_collector() builds the application"
        # open dashboard streams never end by themselves: give them 5 s when stopping
        config = uvicorn.Config(
            self.app,
            log_level=self.settings.log_level,
            access_log=self.settings.log_level == "debug",
            lifespan="off",
            timeout_graceful_shutdown=5,
            # X-Forwarded-For from anyone could pose as any client (uvicorn believes 127.0.0.1 by
            # default): only from the configured proxies
            proxy_headers=bool(http.trusted_proxies),
            forwarded_allow_ips=",".join(http.trusted_proxies) or "",
            **tls,
        )
        _QuietExitServer(config).run(sockets=[sock])

    def stop(self) -> None:
        if self.simulator is not None:
            self.simulator.stop()
        self.collector.stop()
        self.ingest.stop()
        self.system.stop()
        self.alerts.stop()
        self.notify.stop()


#: created for ``admin`` by ``sluice serve --simulate`` when it has no definitions yet
EXAMPLE_DEFINITIONS = [
    DefinitionIn(
        title="Port scan",
        metric="unique_ports",
        entity="host",
        threshold=500,
        interval="5m",
        severity="HIGH",
        description="Any one host using more than 500 distinct server ports in 5 minutes: "
        "the scanner, and the host scanned.",
    ),
    DefinitionIn(
        title="Exfiltration",
        metric="bytes_sent",
        entity="host",
        threshold=500_000_000,
        interval="15m",
        severity="CRITICAL",
        prefilter="SRVPORT == 443",
        description="Any one host sending more than 500 MB over HTTPS in 15 minutes.",
    ),
]


class _QuietExitServer(uvicorn.Server):
    """Ctrl-C / SIGTERM stop the server gracefully and ``sluice serve`` exits 0 (uvicorn
    itself would re-raise the signal after shutting down, ending with status 130/143)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for open connections
        self.should_exit = True


def public_url(settings: Settings) -> str:
    """The dashboard's address as notifications give it."""
    http = settings.http
    if http.public_url:
        return http.public_url
    host = socket.getfqdn() if http.listen in ("0.0.0.0", "::") else http.listen
    return f"{'https' if http.tls else 'http'}://{host}:{http.port}/"


def _data_dir_prefix(settings: Settings) -> str:
    """What ``sluice users`` needs to find this server's accounts, beyond its own defaults."""
    return "" if str(settings.data_dir) == "var" else f"SLUICE_DATA_DIR={settings.data_dir} "


def banner(settings: Settings, simulating: bool, generated_password: str | None = None) -> str:
    http = settings.http
    host = "localhost" if http.listen in ("0.0.0.0", "::", "127.0.0.1") else http.listen
    collect = settings.collect
    scheme = "https" if http.tls else "http"
    lines = [
        f"Sluice is running: {scheme}://{host}:{http.port}/  (metrics: {scheme}://{host}:{http.port}/metrics)",
        f"  flows in: NetFlow/IPFIX UDP {collect.netflow_port or 'off'}, IPFIX UDP {collect.ipfix_port or 'off'}, "
        f"sFlow UDP {collect.sflow_port or 'off'} on {collect.listen}",
        (
            f"  login: admin / {generated_password}   (generated now and shown only once: set SLUICE_ADMIN_PASSWORD "
            "before the first start to choose it)"
            if generated_password
            else "  login: your Sluice account (the first start created 'admin'); to set its password: "
            f"{_data_dir_prefix(settings)}sluice users passwd admin"
        ),
    ]
    if simulating:
        lines.append("  built-in traffic generator: on (sluice serve --no-simulate to turn it off)")
    lines.append("  stop with Ctrl-C")
    return "\n".join(lines)


def run(settings: Settings, simulate: bool = False, simulate_rate: float = 200.0) -> int:
    use_huge_pages(settings.huge_pages)  # before the tracker makes room for its sessions
    keep_freed_memory()  # the session workers do the same at their start
    try:
        server = Server(settings)
    except OSError as exc:  # a data directory that cannot be made or written (read-only, full, absent)
        where = exc.filename or settings.data_dir
        print(
            f"sluice: cannot use the data directory {settings.data_dir} ({where}: {exc.strerror or exc}); "
            "choose another with --data-dir, or make it writable for this user",
            file=sys.stderr,
        )
        return 1
    try:
        http_socket = server.bind_http()
        server.start_collector()
    except OSError as exc:
        print(f"sluice: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if simulate:
        server.start_simulator(simulate_rate)
    # Everything imported and built so far lives as long as the server: move it out of the
    # collector's way, so a full garbage collection does not walk it (a pause long enough to
    # overflow a socket buffer at high flow rates)
    gc.collect()
    gc.freeze()
    # A thread waiting for the GIL gets it after this long at most: the receive loop waits
    # less behind the store's writing (Python's default, 5 ms, lost datagrams at 0.75 M
    # flows/s on one core that 1 ms did not)
    sys.setswitchinterval(0.001)
    print(banner(settings, simulate, server.generated_password), file=sys.stderr, flush=True)
    try:
        server.serve_http(http_socket)
    finally:
        server.stop()
    return 0
