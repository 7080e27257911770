"""The ``sluice`` command."""

from __future__ import annotations

import json
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .. import __version__
from .. import config as config_mod
from ..datadir import make_private
from ..logs import configure as configure_logging
from .alerts import alerts_app

if TYPE_CHECKING:  # imported where used: the command starts fast
    from ..state.users import Users

app = typer.Typer(
    name="sluice",
    help="Sluice: network flow analytics server with threshold alerting.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
users_app = typer.Typer(help="Manage accounts (on this server's state database).", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(alerts_app, name="alerts")

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", envvar="SLUICE_CONFIG", help="TOML configuration file.", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sluice {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Sluice: collect NetFlow v5/v9, IPFIX and sFlow; query sessions; alert on thresholds."""


def _load(config: Optional[Path], **overrides: object) -> config_mod.Settings:
    try:
        return config_mod.load(config, **overrides)
    except config_mod.ConfigError as exc:
        typer.echo(f"sluice: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    listen: Annotated[
        Optional[str], typer.Option(help="Address the flow listeners bind to. (default: 0.0.0.0)", show_default=False)
    ] = None,
    netflow_port: Annotated[
        Optional[int],
        typer.Option(
            help="UDP port for NetFlow v5/v9 and IPFIX (told apart by version); 0 = off. (default: 2055)",
            show_default=False,
        ),
    ] = None,
    ipfix_port: Annotated[
        Optional[int], typer.Option(help="UDP port for IPFIX; 0 = off. (default: 4739)", show_default=False)
    ] = None,
    sflow_port: Annotated[
        Optional[int], typer.Option(help="UDP port for sFlow v5; 0 = off. (default: 6343)", show_default=False)
    ] = None,
    http_listen: Annotated[
        Optional[str],
        typer.Option(help="Address of the HTTP API, web page and /metrics. (default: 0.0.0.0)", show_default=False),
    ] = None,
    http_port: Annotated[Optional[int], typer.Option(help="HTTP port. (default: 9640)", show_default=False)] = None,
    tls_cert: Annotated[
        Optional[Path], typer.Option(help="PEM certificate: serve HTTPS (with --tls-key).", show_default=False)
    ] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="PEM private key of --tls-cert.", show_default=False)] = None,
    data_dir: Annotated[
        Optional[Path], typer.Option(help="Where Sluice keeps its databases. (default: var)", show_default=False)
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="Session worker processes, each tracking its share of the conversations; 1 = inside the "
            "server process. (default: one per core)",
            show_default=False,
            min=1,
            max=256,
        ),
    ] = None,
    role: Annotated[
        Optional[str],
        typer.Option(
            help="single (the whole server), collector (ships partial alert windows to the NATS stream) or "
            "alerting (merges them); see docs/deployment.md. (default: single)",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        Optional[str], typer.Option(help="debug, info, warning or error. (default: warning)", show_default=False)
    ] = None,
    log_format: Annotated[
        Optional[str], typer.Option(help="console or json. (default: console)", show_default=False)
    ] = None,
    simulate: Annotated[
        bool,
        typer.Option("--simulate/--no-simulate", help="Also run the built-in traffic generator against this server."),
    ] = False,
    simulate_rate: Annotated[float, typer.Option(help="Conversations per second the generator makes.")] = 200.0,
) -> None:
    """Run the server: flow listeners (UDP) and the HTTP API / web page / metrics (TCP 9640).

    Settings come from, lowest first: built-in defaults, the TOML file (--config or
    SLUICE_CONFIG), SLUICE_* environment variables (SLUICE_COLLECT__NETFLOW_PORT=9995,
    SLUICE_HTTP__PORT=9641, SLUICE_LOG_LEVEL=info …), then these flags.
    See docs/configuration.md.
    """
    from ..server import run

    settings = _load(
        config,
        **{
            "collect.listen": listen,
            "collect.netflow_port": netflow_port,
            "collect.ipfix_port": ipfix_port,
            "collect.sflow_port": sflow_port,
            "http.listen": http_listen,
            "http.port": http_port,
            "http.tls_cert": tls_cert,
            "http.tls_key": tls_key,
            "data_dir": data_dir,
            "sessions.workers": workers,
            "cluster.role": role,
            "log_level": log_level,
            "log_format": log_format,
        },
    )
    configure_logging(settings.log_level, settings.log_format)
    raise typer.Exit(run(settings, simulate=simulate, simulate_rate=simulate_rate))


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate the configuration (file + environment) and print the effective settings."""
    settings = _load(config)
    shown = settings.model_dump(mode="json")
    if settings.state.url:  # never print a password
        from sqlalchemy.engine import make_url

        shown["state"]["url"] = make_url(settings.state.url).render_as_string(hide_password=True)
    typer.echo(json.dumps(shown, indent=2))


def _users(config: Optional[Path]) -> Users:
    from ..state.db import open_state
    from ..state.users import Users

    settings = _load(config)
    make_private(settings.data_dir)
    return Users(open_state(settings.data_dir, settings.state.url, settings.state.secret_key_file))


def _password(given: Optional[str]) -> str:
    if given:
        return given
    import getpass

    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        typer.echo("sluice users: the passwords differ", err=True)
        raise typer.Exit(2)
    return first


def _user_op(fn) -> None:
    from ..state.users import UserError

    try:
        fn()
    except UserError as exc:
        typer.echo(f"sluice users: {exc}", err=True)
        raise typer.Exit(1) from None


PasswordOpt = Annotated[
    Optional[str],
    typer.Option(
        "--password", envvar="SLUICE_NEW_PASSWORD", help="The password (asked for when not given).", show_default=False
    ),
]


@users_app.command("list")
def users_list(config: ConfigOpt = None) -> None:
    """List accounts."""
    for user in _users(config).all():
        typer.echo(f"{user.username}\t{'admin' if user.is_admin else 'user'}\t{user.created_at:%Y-%m-%d}")


@users_app.command("create")
def users_create(
    username: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make an administrator.")] = False,
    password: PasswordOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create an account."""
    users = _users(config)
    _user_op(lambda: users.create(username, _password(password), is_admin=admin))
    typer.echo(f"created {username}" + (" (administrator)" if admin else ""))


@users_app.command("delete")
def users_delete(username: str, config: ConfigOpt = None) -> None:
    """Delete an account (never the last administrator)."""
    users = _users(config)
    _user_op(lambda: users.delete(username))
    typer.echo(f"deleted {username}")


@users_app.command("passwd")
def users_passwd(username: str, password: PasswordOpt = None, config: ConfigOpt = None) -> None:
    """Set an account's password (ends its web logins)."""
    users = _users(config)
    _user_op(lambda: users.set_password(username, _password(password)))
    typer.echo(f"password of {username} changed")


@users_app.command("grant")
def users_grant(username: str, config: ConfigOpt = None) -> None:
    """Make an account an administrator."""
    users = _users(config)
    _user_op(lambda: users.set_admin(username, True))
    typer.echo(f"{username} is an administrator")


@users_app.command("revoke")
def users_revoke(username: str, config: ConfigOpt = None) -> None:
    """Take administrator rights away (never from the last administrator)."""
    users = _users(config)
    _user_op(lambda: users.set_admin(username, False))
    typer.echo(f"{username} is no longer an administrator")


ServerOpt = Annotated[str, typer.Option("--server", "-s", envvar="SLUICE_SERVER", help="server[:port] or URL.")]
UserOpt = Annotated[
    Optional[str], typer.Option("--user", "-u", envvar="SLUICE_USER", help="user name.", show_default=False)
]
PassOpt = Annotated[
    Optional[str], typer.Option("--password", envvar="SLUICE_PASSWORD", help="password.", show_default=False)
]
FrameOpt = Annotated[str, typer.Option("--time", "-t", help="time frame back from now: -15m, 1h, 2d (Y M w d h m s).")]
FilterOpt = Annotated[
    Optional[str], typer.Option("--filter", "-q", help="filter (docs/filters.md).", show_default=False)
]


def _api_rows(
    path: str, server: str, user: Optional[str], password: Optional[str], frame: str, params: dict[str, object]
) -> list[dict[str, object]]:
    import argparse

    from .ns2 import Failure, _client, _frame, _get

    args = argparse.Namespace(server=server, user=user, password=password, timeframe=frame)
    try:
        with _client(args) as client:
            return _get(client, path, {**params, **_frame(args)})
    except Failure as exc:
        typer.echo(f"sluice: {exc}", err=True)
        raise typer.Exit(exc.code) from None


def _show(rows: list[dict[str, object]], as_json: bool) -> None:
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    import argparse

    from .ns2 import _print

    header = list(rows[0]) if rows else []
    _print([[row[name] for name in header] for row in rows], header, argparse.Namespace(csv=False, csv_header=False))


@app.command()
def report(
    entity: Annotated[str, typer.Option(help="host, host_pair, port, country, asn or exporter.")] = "host",
    metric: Annotated[str, typer.Option(help="bytes, packets, sessions, unique_hosts or unique_ports.")] = "bytes",
    direction: Annotated[str, typer.Option(help="sender, receiver or either.")] = "either",
    top: Annotated[int, typer.Option("--top", "-n", help="how many.")] = 10,
    time_frame: FrameOpt = "-15m",
    where: FilterOpt = None,
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """A ranked report from a server (the engine of the dashboard and the ns2* tools)."""
    _show(
        _api_rows(
            "/api/v1/reports",
            server,
            user,
            password,
            time_frame,
            {"entity": entity, "metric": metric, "direction": direction, "top": top, "filter": where},
        ),
        as_json,
    )


@app.command()
def query(
    limit: Annotated[int, typer.Option("--limit", "-n", help="how many sessions.")] = 20,
    time_frame: FrameOpt = "-15m",
    where: FilterOpt = None,
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Sessions from a server, newest first."""
    _show(_api_rows("/api/v1/sessions", server, user, password, time_frame, {"limit": limit, "filter": where}), as_json)


def _time(ms: object) -> str:
    assert isinstance(ms, int)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@app.command()
def decode(
    captures: Annotated[list[Path], typer.Argument(help="pcap/pcapng files of exporter traffic, read as one stream.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines, one flow per line, canonical names.")] = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Records as carried on the wire (no sampling scaling, no time conversion), "
            "with the conformance corpus's key names; always JSON lines.",
        ),
    ] = False,
    sampling: Annotated[int, typer.Option(help="Sampling rate to assume for exporters that announce none.")] = 1,
) -> None:
    """Print the flows decoded from captures of exporter traffic (NetFlow v5/v9, IPFIX, sFlow).

    Any UDP port is decoded; templates learnt in one file apply to the next. Problems
    (undecodable datagrams, data without a template, skipped packets) go to stderr with
    counts, never to stdout.
    """
    from ..collect.decoder import Decoder, DecoderConfig
    from ..collect.pcap import CaptureError, read_datagrams
    from ..collect.records import all_records

    configure_logging("error")
    decoder = Decoder(DecoderConfig(default_sampling_rate=max(sampling, 1)))
    skipped: Counter[str] = Counter()
    out = sys.stdout
    flows_total = 0
    if not raw and not as_json:
        out.write(
            f"{'start (UTC)':23}  {'end (UTC)':23}  {'proto':8}  {'exporter':15}  "
            f"{'source':>41}  {'destination':>41}  {'ip':>3}  {'flags':>5}  {'bytes':>12}  "
            f"{'packets':>9}  {'rate':>5}\n"
        )
    try:
        batch: list = []
        stream = read_datagrams(captures, skipped)
        while True:
            batch.clear()
            for dg in stream:
                batch.append(dg)
                if len(batch) >= 2048:
                    break
            if not batch:
                break
            result = decoder.decode(list(batch))
            if raw:
                records = all_records(result)
                for rec in records:
                    out.write(json.dumps(rec) + "\n")
                flows_total += len(records)
                continue
            flows_total += len(result.flows)
            for rec in result.flows.to_records():
                if as_json:
                    out.write(json.dumps(rec) + "\n")
                else:
                    src = f"{rec['src_addr']}:{rec['src_port']}"
                    dst = f"{rec['dst_addr']}:{rec['dst_port']}"
                    out.write(
                        f"{_time(rec['time_start_ms'])}  {_time(rec['time_end_ms'])}  "
                        f"{rec['export_proto']:8}  {rec['exporter_addr']:15}  {src:>41}  {dst:>41}  "
                        f"{rec['protocol']:>3}  {rec['tcp_flags']:>5}  {rec['bytes']:>12}  "
                        f"{rec['packets']:>9}  {rec['sampling_rate']:>5}\n"
                    )
    except CaptureError as exc:
        typer.echo(f"sluice decode: {exc}", err=True)
        raise typer.Exit(2) from None
    except BrokenPipeError:
        sys.stderr.close()
        raise typer.Exit(0) from None
    _report_problems(decoder, skipped, flows_total, raw)


def _report_problems(decoder: object, skipped: Counter[str], count: int, raw: bool) -> None:
    counters = decoder.counters  # type: ignore[attr-defined]
    problems: Counter[str] = Counter()
    for (name, labels), value in counters.snapshot().items():
        if name == "decode_errors_total":
            label_values = dict(labels)
            problems[f"{label_values.get('proto')}: {label_values.get('reason')}"] += int(value)
    waiting = len(decoder.pending)  # type: ignore[attr-defined]
    if waiting:
        problems["data sets whose template never arrived"] += waiting
    for reason, occurrences in skipped.items():
        problems[f"skipped packet: {reason}"] += occurrences
    total = sum(problems.values())
    what = "records" if raw else "flows"
    typer.echo(f"{count} {what} decoded; {total} problem(s)" + (":" if total else ""), err=True)
    for reason, occurrences in problems.most_common():
        typer.echo(f"  {occurrences:>8}  {reason}", err=True)


@app.command()
def simulate(
    to: Annotated[str, typer.Option(help="Collector address.")] = "127.0.0.1",
    netflow_port: Annotated[int, typer.Option(help="Collector's NetFlow port (v5 and v9 go here).")] = 2055,
    ipfix_port: Annotated[int, typer.Option(help="Collector's IPFIX port.")] = 4739,
    sflow_port: Annotated[int, typer.Option(help="Collector's sFlow port.")] = 6343,
    rate: Annotated[float, typer.Option(help="Conversations per second (each is two flows).")] = 200.0,
    duration: Annotated[
        Optional[float], typer.Option(help="Seconds to run; default until Ctrl-C.", show_default=False)
    ] = None,
    protocol: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Exporter protocols to simulate (repeatable): netflow5, netflow9, ipfix, sflow. (default: all)",
            show_default=False,
        ),
    ] = None,
    sampling_rate: Annotated[int, typer.Option(help="1-in-N sampling the NetFlow/IPFIX exporters announce.")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same traffic).")] = 1,
) -> None:
    """Send realistic synthetic exports to a collector: heavy and light hosts, web/DNS/SSH/NTP/SMTP,
    IPv4 and IPv6, with a port scan and an exfiltration burst now and then."""
    from ..simulate.sender import PROTOCOLS, Simulator

    configure_logging("warning")
    try:
        sim = Simulator(
            host=to,
            netflow_port=netflow_port,
            ipfix_port=ipfix_port,
            sflow_port=sflow_port,
            conversations_per_s=rate,
            protocols=tuple(protocol or PROTOCOLS),
            seed=seed,
            sampling_rate=sampling_rate,
        )
    except (ValueError, OSError) as exc:
        typer.echo(f"sluice simulate: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"sending to {to} (NetFlow {netflow_port}, IPFIX {ipfix_port}, sFlow {sflow_port}); Ctrl-C stops", err=True
    )
    try:
        stats = sim.run(duration)
    except KeyboardInterrupt:
        stats = sim.stats
    typer.echo(
        f"sent {stats.flows} flows in {stats.datagrams} datagrams "
        f"({', '.join(f'{k} {v}' for k, v in sorted(stats.by_protocol.items()))})",
        err=True,
    )
    for event in sim.model.events:
        typer.echo(f"  {_time(event.time_ms)}  {event.kind}: {event.src} -> {event.dst}", err=True)


if __name__ == "__main__":  # pragma: no cover
    app()
