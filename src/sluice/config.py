"""Server configuration: defaults < TOML file < environment (``SLUICE_…``) < command-line flags.

Environment variables use ``__`` between section and key, e.g. ``SLUICE_COLLECT__NETFLOW_PORT=9995``
or ``SLUICE_HTTP__PORT=9641``. See docs/configuration.md for every setting.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]


class CollectSettings(BaseModel):
    listen: str = Field("0.0.0.0", description="address the flow listeners bind to ('::' for IPv6 too)")
    netflow_port: int = Field(2055, ge=0, le=65535, description="NetFlow v5/v9 and IPFIX (0 = off)")
    ipfix_port: int = Field(4739, ge=0, le=65535, description="IPFIX (0 = off)")
    sflow_port: int = Field(6343, ge=0, le=65535, description="sFlow v5 (0 = off)")
    receive_buffer_bytes: int = Field(32 << 20, ge=65536, description="SO_RCVBUF asked of the kernel per socket")
    batch_max_datagrams: int = Field(1024, ge=1, le=65536, description="datagrams decoded together at most")
    batch_max_wait_ms: int = Field(40, ge=0, le=10_000, description="longest a datagram waits for its batch")
    template_pending_max_age_s: float = Field(60.0, ge=0, description="how long data waits for its template")
    template_pending_max_bytes: int = Field(8 << 20, ge=0, description="memory for data waiting for templates")
    default_sampling_rate: int = Field(1, ge=1, description="rate for exporters that announce none")
    sampling: dict[str, int] = Field(
        default_factory=dict, description="per-exporter default sampling rate, keyed by exporter address"
    )

    @field_validator("listen")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"collect.listen must be an IP address, got {v!r}") from None
        return v

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, v: dict[str, int]) -> dict[str, int]:
        for addr, rate in v.items():
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"collect.sampling: {addr!r} is not an exporter IP address") from None
            if rate < 1:
                raise ValueError(f"collect.sampling: rate for {addr} must be >= 1, got {rate}")
        return v


class SessionSettings(BaseModel):
    idle_timeout_s: float = Field(
        120.0,
        gt=0,
        description="a session ends after this long without a flow; set it above your exporters' active timeout",
    )
    active_timeout_s: float = Field(
        3600.0, gt=0, description="a session older than this ends (the next flow starts a new one)"
    )
    max_sessions: int = Field(
        1_000_000, ge=1000, description="live sessions tracked at most (least recently seen go first)"
    )
    dedupe_exporters: bool = Field(True, description="count a conversation reported by several exporters once")
    node_id: int = Field(
        0,
        ge=0,
        le=255,
        description="this server's number among the servers that share one store (a ClickHouse cluster): "
        "session ids carry it, so theirs never collide; give each one its own",
    )
    workers: int = Field(
        0,
        ge=0,
        le=256,
        description="session worker processes, each tracking its share of the conversations "
        "(0: one per core the server may use; 1: inside the server process)",
    )


class EnrichSettings(BaseModel):
    country_mmdb: Optional[Path] = Field(None, description="MMDB file with countries (default: the embedded data)")
    asn_mmdb: Optional[Path] = Field(None, description="MMDB file with AS numbers (default: what exporters report)")


class StoreSettings(BaseModel):
    retention_days: float = Field(30.0, gt=0, description="sessions older than this are deleted")
    max_size_gb: Optional[float] = Field(None, gt=0, description="oldest days are deleted beyond this size")
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="how often queued sessions are written")
    backend: Literal["duckdb", "clickhouse"] = Field(
        "duckdb", description="where sessions are kept: the embedded store in DATA_DIR, or a ClickHouse cluster"
    )
    clickhouse_servers: list[str] = Field(
        default_factory=list,
        description="every server of the ClickHouse cluster as host:port (native protocol), in its shards' order",
    )
    clickhouse_cluster: str = Field("sluice", description="the cluster's name in the servers' remote_servers")
    clickhouse_database: str = Field("sluice", description="the database Sluice creates its tables in")
    clickhouse_spool_gb: float = Field(
        4.0,
        gt=0,
        description="local disk (DATA_DIR/clickhouse-spool) for sessions waiting for a shard that is down; "
        "beyond it they are dropped and counted",
    )

    @model_validator(mode="after")
    def _clickhouse_complete(self) -> StoreSettings:
        if self.backend != "clickhouse":
            return self
        if not self.clickhouse_servers:
            raise ValueError(
                'backend "clickhouse" needs clickhouse_servers: every server as host:port, '
                'e.g. ["ch1:9000", "ch2:9000"]'
            )
        for server in self.clickhouse_servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"clickhouse_servers: {server!r} is not host:port (the native port, e.g. 9000)")
        for key in ("clickhouse_cluster", "clickhouse_database"):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", getattr(self, key)):
                raise ValueError(f"{key}: {getattr(self, key)!r} may hold letters, digits and _ only")
        return self


class AlertSettings(BaseModel):
    evaluate_interval_ms: int = Field(
        100,
        ge=10,
        le=10_000,
        description="how often queued sessions are evaluated against the alert definitions (the alerting latency); "
        "on a busy server up to five times as long, so that batches grow",
    )
    exact_distinct_limit: int = Field(
        10_000,
        ge=10,
        description="distinct peers counted exactly per entity; beyond, a HyperLogLog sketch (about 6.5 % error)",
    )
    max_pairs_per_definition: int = Field(
        16_000_000,
        ge=1000,
        description="(entity, peer) pairs one unique-hosts/ports definition keeps at most (about 40 bytes each)",
    )
    max_entities: int = Field(16_000_000, ge=1000, description="distinct entities per type tracked at most")
    step_bytes_per_definition: int = Field(
        64 << 20,
        ge=1 << 16,
        description=(
            "bytes one sum definition keeps for its window's past steps (a value per entity and step) at most; "
            "beyond, its oldest steps are held as one amount per entity spread evenly over them (approximate)"
        ),
    )
    max_pending_rows: int = Field(
        4_000_000,
        ge=10_000,
        description="session rows waiting for evaluation at most; beyond, rows are dropped and counted",
    )
    evaluation_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="threads that evaluate the definitions of every batch side by side, each taking the next "
        "definition when it is free; 0: one per core the server may run on",
    )
    snapshot_interval_s: float = Field(
        30.0,
        gt=0,
        description="how often the window state is saved to disk, at the most: a state that is costly to write "
        "is saved less often (snapshots take at most 1/30 of a core, and write at most snapshot_max_bytes_per_s)",
    )
    snapshot_max_bytes_per_s: int = Field(
        8 << 20,
        ge=1 << 16,
        description="bytes a second the window state's snapshots write at most, on average: a large state is saved "
        "less often (a 2.5 GB state every 5 minutes at 8 MiB/s), so that the disk is not rewritten all day",
    )
    system_check_interval_s: float = Field(
        10.0, gt=0, le=3600, description="how often the server checks itself for SYSTEM alerts"
    )
    system_clear_after_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="a SYSTEM alert clears once its condition has not held for this long (0: at the first check "
        "where it does not): a condition that comes and goes stays one raised record",
    )
    exporter_silent_s: float = Field(
        300.0, ge=0, description="a SYSTEM alert when an exporter heard from has been silent this long (0: never)"
    )
    exporter_loss_percent: float = Field(
        1.0,
        ge=0,
        le=100,
        description="a SYSTEM alert when an exporter's sequence numbers show more loss than this between checks",
    )


class StateSettings(BaseModel):
    url: Optional[str] = Field(
        None,
        description=(
            "the state database (users, definitions, alert records, the outbox) as an SQLAlchemy URL: "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE for PostgreSQL; unset: DATA_DIR/state.db (SQLite)"
        ),
    )
    secret_key_file: Optional[Path] = Field(
        None,
        description="the key that seals stored secrets (SMTP password, webhook secrets), made on first start "
        "(default DATA_DIR/secret.key); servers sharing one state database need the same file",
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        from sqlalchemy.engine import make_url  # here: the command line's start-up does not pay for it
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL: write postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE, or leave it unset"
            ) from None
        if url.drivername not in STATE_DRIVERS:
            raise ValueError(
                f"{url.drivername}:// is not supported: use postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE "
                "(PostgreSQL) or sqlite:///PATH"
            )
        if url.drivername.startswith("postgresql") and not url.database:
            raise ValueError(
                "names no database: end it with /DATABASE, e.g. postgresql+psycopg://sluice@db:5432/sluice"
            )
        return value


#: the state database engines Sluice runs on (SQLAlchemy driver names)
STATE_DRIVERS = ("sqlite", "postgresql+psycopg")


#: where unprivileged users' notifications may not go by default: loopback, link-local,
#: unspecified and multicast addresses (notify/destinations.py)
DEFAULT_DENY = (
    "127.0.0.0/8",
    "::1/128",
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "224.0.0.0/4",
    "ff00::/8",
)


class NotifySettings(BaseModel):
    dead_after_s: float = Field(
        86_400.0,
        gt=0,
        description="a notification still undelivered after this long is given up (dead), with its last error kept",
    )
    poll_s: float = Field(1.0, gt=0, le=60, description="how often delivery workers look for due retries")
    smtp_ca_file: Optional[Path] = Field(
        None, description="PEM CA certificates the SMTP server's certificate is checked against (default: the system's)"
    )
    destinations_allow: list[str] = Field(
        default_factory=list,
        description="networks unprivileged users' webhooks and syslog collectors may reach; set, nothing else; "
        "an address in it is allowed even in destinations_deny",
    )
    destinations_deny: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DENY),
        description="networks unprivileged users' webhooks and syslog collectors may not reach "
        "(by default loopback, link-local, unspecified, multicast); this server's own ports are refused too",
    )

    @field_validator("destinations_allow", "destinations_deny")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP network, e.g. 10.0.0.0/8 or 192.0.2.7") from None
        return value


class HttpSettings(BaseModel):
    listen: str = Field("0.0.0.0", description="address of the HTTP API, web page and /metrics")
    port: int = Field(9640, ge=1, le=65535, description="HTTP port")
    tls_cert: Optional[Path] = Field(None, description="PEM certificate (chain): serve HTTPS when set with tls_key")
    tls_key: Optional[Path] = Field(None, description="PEM private key of tls_cert")
    public_url: Optional[str] = Field(
        None, description="the dashboard's address in notifications (default: http(s)://THIS-HOST:PORT/)"
    )
    metrics_token: Optional[str] = Field(
        None,
        min_length=16,
        description="with it, /metrics answers only 'Authorization: Bearer <token>' (Prometheus: "
        "authorization.credentials); unset, /metrics is public, as Prometheus exporters usually are",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed "
        "(the client address for login throttling and logs); none by default",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpSettings:
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"http.trusted_proxies: {proxy!r} is not an IP address or network") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("http.tls_cert and http.tls_key go together: set both for HTTPS, or neither")
        for name, path in (("tls_cert", self.tls_cert), ("tls_key", self.tls_key)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"http.{name}: {path} is not a readable file")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class ClusterSettings(BaseModel):
    role: Literal["single", "collector", "alerting"] = Field(
        "single",
        description="single: the whole server; collector: receives, stores and ships partial alert windows; "
        "alerting: merges the collectors' partials, keeps the alert records (docs/deployment.md)",
    )
    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="the NATS server (JetStream on) between collectors and the alerting node"
    )
    node_name: str = Field(
        default_factory=lambda: re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "collector",
        description="this collector's name in the stream (letters, digits, - and _; default: the host name)",
    )
    stream_retention_s: float = Field(
        3600.0, gt=0, description="how long partials wait in the stream for an alerting node that is away"
    )
    stream_max_bytes: int = Field(1 << 30, ge=1 << 20, description="the stream's size on the NATS server at most")

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError(f"{value!r}: use 1 to 64 letters, digits, '-' or '_' (it names a NATS subject)")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        if not re.fullmatch(r"(nats|tls)://[^\s/]+(:\d+)?", value):
            raise ValueError(f"{value!r} is not a NATS URL: write nats://HOST:PORT")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("var"), description="where Sluice keeps its databases")
    log_level: LogLevel = Field("warning", description="debug, info, warning or error")
    log_format: Literal["console", "json"] = Field("console", description="console key=value or JSON lines")
    huge_pages: bool = Field(
        False, description="let numpy ask for transparent huge pages for large arrays (see docs/configuration.md)"
    )
    collect: CollectSettings = Field(default_factory=CollectSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    enrich: EnrichSettings = Field(default_factory=EnrichSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    state: StateSettings = Field(default_factory=StateSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flags (init) beat the environment, which beats the TOML file given to load()
        return (init_settings, env_settings, InitSettingsSource(settings_cls, _file_values.get() or {}))


#: the TOML file's values while load() builds Settings (a context variable: no shared state)
_file_values: ContextVar[dict[str, Any] | None] = ContextVar("sluice_config_file_values", default=None)


class ConfigError(ValueError):
    """A configuration problem, with a message that says what to fix."""


def load(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from a TOML file (optional), the environment and explicit overrides (flags).

    ``overrides`` use dotted names for nested keys, e.g. ``{"collect.netflow_port": 9995}``;
    ``None`` values are ignored so unset flags do not mask the file or the environment.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found: check --config / SLUICE_CONFIG") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    flag_values: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = flag_values
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    token = _file_values.set(file_values)
    try:
        return Settings(**flag_values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in exc.errors())
        source = f" (file {path}, SLUICE_* environment, flags)" if path else " (SLUICE_* environment, flags)"
        raise ConfigError(f"invalid configuration{source}: {problems}") from None
    finally:
        _file_values.reset(token)
