"""``sluice alerts``: define, list, delete alert definitions; list and acknowledge alerts.

Talks to a server over the HTTP API, like the ns2* tools, so it works from any host.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Annotated, Optional

import typer

from ..alerts.definition import INTERVALS, AlertMetric, EntityType, Severity
from .ns2 import Failure, _client, _get, _print, _send, parse_timeframe

alerts_app = typer.Typer(help="Alert definitions and alerts (on a server, over the API).", no_args_is_help=True)

ServerOpt = Annotated[str, typer.Option("--server", "-s", envvar="SLUICE_SERVER", help="server[:port] or URL.")]
UserOpt = Annotated[
    Optional[str], typer.Option("--user", "-u", envvar="SLUICE_USER", help="user name.", show_default=False)
]
PassOpt = Annotated[
    Optional[str], typer.Option("--password", envvar="SLUICE_PASSWORD", help="password.", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON lines.")]


def _call(
    server: str,
    user: Optional[str],
    password: Optional[str],
    method: str,
    path: str,
    params: Optional[dict[str, object]] = None,
    body: Optional[dict] = None,
) -> object:
    args = argparse.Namespace(server=server, user=user, password=password)
    try:
        with _client(args) as client:
            if method == "GET":
                return _get(client, path, params or {})
            return _send(client, method, path, body)
    except Failure as exc:
        typer.echo(f"sluice: {exc}", err=True)
        raise typer.Exit(exc.code) from None


def _override(text: str) -> dict[str, object]:
    cidr, sep, value = text.partition("=")
    if not sep or not value.strip().isdigit():
        raise typer.BadParameter(f"{text!r}: write CIDR=THRESHOLD, e.g. 10.1.0.0/16=5000")
    return {"cidr": cidr.strip(), "threshold": int(value)}


@alerts_app.command("define")
def define(
    title: Annotated[str, typer.Option(help="a short name for the alert.")],
    metric: Annotated[AlertMetric, typer.Option(help="what to count.")],
    entity: Annotated[EntityType, typer.Option(help="per what: host, host_pair, port, country, asn.")],
    threshold: Annotated[int, typer.Option(help="alert when the metric exceeds this.")],
    per_second: Annotated[
        bool,
        typer.Option("--per-second", help="THRESHOLD is a rate: the metric per second over the interval."),
    ] = False,
    below: Annotated[
        bool,
        typer.Option("--below", help="a lower threshold: alert when a watched entity falls below THRESHOLD."),
    ] = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline", help="THRESHOLD is a factor K: alert when an entity exceeds K times its usual value."
        ),
    ] = False,
    min_volume: Annotated[
        int, typer.Option(help="with --baseline: the least value that may alert (quiet entities do not).")
    ] = 0,
    baseline_days: Annotated[
        int, typer.Option(help="with --baseline: how many days its usual value mostly reflects.")
    ] = 7,
    watch: Annotated[
        Optional[list[str]],
        typer.Option(help="with --below: an entity to watch (repeat): 10.0.0.1, 53/udp, NL, 64500."),
    ] = None,
    interval: Annotated[str, typer.Option(help="window: " + ", ".join(INTERVALS) + ".")] = "5m",
    severity: Annotated[Severity, typer.Option(help="INFO, LOW, MEDIUM, HIGH or CRITICAL.")] = Severity.MEDIUM,
    prefilter: Annotated[str, typer.Option("--prefilter", "-q", help="only sessions matching this filter.")] = "",
    description: Annotated[str, typer.Option(help="free text.")] = "",
    except_address: Annotated[
        Optional[list[str]], typer.Option(help="address/CIDR that never alerts (repeat).")
    ] = None,
    except_port: Annotated[Optional[list[int]], typer.Option(help="server port to ignore (repeat).")] = None,
    except_country: Annotated[
        Optional[list[str]], typer.Option(help="country code that never alerts (repeat).")
    ] = None,
    threshold_for: Annotated[Optional[list[str]], typer.Option(help="CIDR=THRESHOLD: own threshold (repeat).")] = None,
    renotify: Annotated[
        Optional[str],
        typer.Option(help="while it keeps triggering, notify again at most this often (default: the interval)."),
    ] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="define it switched off.")] = False,
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Define an alert: trigger when the number of METRIC for any one ENTITY exceeds THRESHOLD (in all, or
    per second with --per-second) over INTERVAL; with --below, when a watched one falls below it; with
    --baseline, when one exceeds THRESHOLD times its usual value (and --min-volume)."""
    if below and baseline:
        raise typer.BadParameter("a threshold is either to fall below (--below) or a baseline (--baseline), not both")
    body = {
        "title": title,
        "metric": metric.value,
        "entity": entity.value,
        "threshold": threshold,
        "per_second": per_second,
        "threshold_type": "lower" if below else "baseline" if baseline else "upper",
        "min_volume": min_volume,
        "baseline_days": baseline_days,
        "watch": watch or [],
        "interval": interval,
        "severity": severity.value,
        "prefilter": prefilter,
        "description": description,
        "enabled": not disabled,
        "renotify": renotify,
        "exceptions": {
            "addresses": except_address or [],
            "ports": except_port or [],
            "countries": except_country or [],
            "thresholds": [_override(override) for override in threshold_for or []],
        },
    }
    definition = _call(server, user, password, "POST", "/api/v1/alert-definitions", body=body)
    assert isinstance(definition, dict)
    typer.echo(
        json.dumps(definition) if as_json else f"alert definition {definition['id']} created: {definition['title']}"
    )


@alerts_app.command("definitions")
def definitions(
    owner: Annotated[Optional[str], typer.Option("--of", help="whose (administrators).")] = None,
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List alert definitions."""
    rows = _call(server, user, password, "GET", "/api/v1/alert-definitions", {"user": owner})
    assert isinstance(rows, list)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    header = ["id", "title", "metric", "entity", "threshold", "interval", "severity", "enabled", "prefilter"]
    table = [[row[name] for name in header] for row in rows]
    for line, row in zip(table, rows, strict=True):
        rate = "/s" if row.get("per_second") else ""
        lower = row.get("threshold_type") == "lower"
        line[header.index("threshold")] = f"{'< ' if lower else ''}{row['threshold']}{rate}"
        if row.get("threshold_type") == "baseline":
            line[header.index("threshold")] = f"{row['threshold']}x usual, > {row['min_volume']}"
        if lower:  # the watched entities, where "any one" would be
            line[header.index("entity")] = f"{row['entity']} {', '.join(row['watch'])}"
    _print(table, header, argparse.Namespace(csv=False, csv_header=False))


@alerts_app.command("delete")
def delete(
    definition_id: Annotated[int, typer.Argument(help="the definition's id (ALERTDEF).")],
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
) -> None:
    """Delete an alert definition and its alerts."""
    _call(server, user, password, "DELETE", f"/api/v1/alert-definitions/{definition_id}")
    typer.echo(f"alert definition {definition_id} deleted")


@alerts_app.command("list")
def list_alerts(
    time_frame: Annotated[Optional[str], typer.Option("--time", "-t", help="last trigger within: -3m, 1h, 2d.")] = None,
    min_severity: Annotated[Optional[Severity], typer.Option("--severity", help="at least this severity.")] = None,
    state: Annotated[Optional[str], typer.Option(help="NOT-ACKNOWLEDGED or ACKNOWLEDGED.")] = None,
    owner: Annotated[Optional[str], typer.Option("--of", help="whose (administrators).")] = None,
    lines: Annotated[bool, typer.Option("--lines", help="FlowTraq's one-line format (as ns2hostsb -al).")] = False,
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List alerts, the most recently triggered first."""
    params: dict[str, object] = {
        "user": owner,
        "state": state,
        "min_severity": min_severity.value if min_severity else None,
    }
    if time_frame:
        try:
            params["start_ms"] = int(time.time() * 1000) - parse_timeframe(time_frame)
        except Failure as exc:
            typer.echo(f"sluice: {exc}", err=True)
            raise typer.Exit(exc.code) from None
    rows = _call(server, user, password, "GET", "/api/v1/alerts", params)
    assert isinstance(rows, list)
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
    elif lines:
        from ..alerts.records import AlertOut, alert_line

        for row in rows:
            typer.echo(alert_line(AlertOut(**row)))
    else:
        header = ["id", "alertdef", "severity", "state", "entity", "v1", "v2", "last_trigger", "message"]
        _print(
            [[row[name] for name in header] for row in rows], header, argparse.Namespace(csv=False, csv_header=False)
        )


@alerts_app.command("ack")
def ack(
    alert_ids: Annotated[list[int], typer.Argument(help="alert ids (ID=).")],
    server: ServerOpt = "localhost:9640",
    user: UserOpt = None,
    password: PassOpt = None,
) -> None:
    """Acknowledge alerts (yours)."""
    result = _call(server, user, password, "POST", "/api/v1/alerts/acknowledge", body={"ids": alert_ids})
    assert isinstance(result, dict)
    done = result["acknowledged"]
    typer.echo(f"acknowledged: {', '.join(map(str, done)) if done else 'nothing new (already acknowledged)'}")
