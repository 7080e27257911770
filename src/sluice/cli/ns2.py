"""FlowTraq-compatible statistical tools (``ns2hostsb``, ``ns2portss``, ``ns2sq``, …).

Each talks to a Sluice server over the HTTP API, from any host:

    ns2hostsb -s SERVER[:PORT] -un USER -up PASSWORD -t -15m -q 'SRVPORT == 443' -n 10 [-snd|-rcv] [-c|-c+]

Families: hosts, ports, pairs, countrys (as FlowTraq spelled it); the last letters name the
metric: b bytes, p packets, s sessions, up unique ports, uh unique hosts. ``ns2sq`` lists
raw sessions. The password may come from ``SLUICE_PASSWORD`` instead of ``-up``.

With ``-al`` any of them lists alerts instead, one per line in FlowTraq's format:
``-au USER`` whose (default: yours; others need an administrator), ``-at -3m`` only those
whose last trigger lies in that time frame.

Exit status: 0 ok, 2 usage error (bad flag, time frame or filter), 3 authentication failed,
4 server unreachable; each failure with one line on stderr.
"""

import argparse
import csv
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Optional

import httpx

EXIT_OK, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE = 0, 2, 3, 4
UNITS_S = {"Y": 365 * 86400, "M": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
FAMILIES = {"hosts": "host", "ports": "port", "pairs": "host_pair", "countrys": "country"}
METRICS = {"b": "bytes", "p": "packets", "s": "sessions", "up": "unique_ports", "uh": "unique_hosts"}
VALUE_OPTIONS = {"-s", "-un", "-up", "-t", "-q", "-n", "-au", "-at"}


class Failure(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def parse_timeframe(text: str) -> int:
    """``-15m``, ``15m``, ``1h``, ``2d`` … -> milliseconds back from now."""
    match = re.fullmatch(r"-?(\d+)([YMwdhms])", text.strip())
    if not match:
        raise Failure(EXIT_USAGE, f"bad time frame {text!r}: use a number and a unit of Y M w d h m s, e.g. -15m")
    return int(match.group(1)) * UNITS_S[match.group(2)] * 1000


def _attach_values(argv: list[str]) -> list[str]:
    """Glue option values that start with '-' (time frames such as -15m) to their option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def parser(prog: str, description: str, report: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, prefix_chars="-", allow_abbrev=False)
    parser.add_argument("-s", dest="server", default="localhost:9640", help="server[:port] (default localhost:9640)")
    parser.add_argument("-un", dest="user", help="user name")
    parser.add_argument("-up", dest="password", help="password (or set SLUICE_PASSWORD)")
    parser.add_argument(
        "-t", dest="timeframe", default="-15m", help="time frame back from now, e.g. -15m, 1h, 2d (Y M w d h m s)"
    )
    parser.add_argument("-q", dest="filter", help="filter, e.g. 'SRVPORT == 443 && PROTO == tcp'")
    parser.add_argument("-n", dest="top", type=int, default=10, help="how many (default 10)")
    parser.add_argument("-c", dest="csv", action="store_true", help="CSV without header")
    parser.add_argument("-c+", dest="csv_header", action="store_true", help="CSV with header")
    if report:
        side = parser.add_mutually_exclusive_group()
        side.add_argument("-snd", dest="sender", action="store_true", help="as sender")
        side.add_argument("-rcv", dest="receiver", action="store_true", help="as receiver")
    parser.add_argument("-al", dest="alerts", action="store_true", help="list alerts instead, one per line")
    parser.add_argument("-au", dest="alert_user", help="whose alerts (with -al; default: yours)")
    parser.add_argument("-at", dest="alert_time", help="alerts whose last trigger is in this time frame (with -al)")
    return parser


def _client(args: argparse.Namespace) -> httpx.Client:
    password = args.password or os.environ.get("SLUICE_PASSWORD")
    if not args.user or not password:
        raise Failure(EXIT_USAGE, "give -un USER and -up PASSWORD (or set SLUICE_PASSWORD)")
    server = args.server if "://" in args.server else f"http://{args.server}"
    if not re.search(r":\d+$", server.split("://", 1)[1]):
        server += ":9640"
    return httpx.Client(base_url=server, auth=(args.user, password), timeout=60)


def _get(client: httpx.Client, path: str, params: dict[str, Any]) -> Any:
    try:
        response = client.get(path, params={k: v for k, v in params.items() if v is not None})
    except httpx.HTTPError as exc:
        raise Failure(EXIT_UNREACHABLE, f"cannot reach the server at {client.base_url}: {exc}") from None
    if response.status_code in (401, 403, 429):
        detail = (
            response.json().get("detail", response.text)
            if response.headers.get("content-type", "").startswith("application/json")
            else response.text
        )
        raise Failure(EXIT_AUTH, f"authentication failed: {detail}")
    if response.status_code == 422:
        detail = response.json().get("detail")
        if isinstance(detail, list) and detail:
            problem = detail[0]
            where = f" at position {problem['position']}" if "position" in problem else ""
            raise Failure(
                EXIT_USAGE, f"{'.'.join(str(x) for x in problem.get('loc', [])[-1:])}: {problem.get('msg')}{where}"
            )
        raise Failure(EXIT_USAGE, str(detail))
    if response.status_code >= 400:
        raise Failure(EXIT_UNREACHABLE, f"server error {response.status_code}: {response.text[:200]}")
    return response.json()


def _print(rows: list[list[object]], header: list[str], args: argparse.Namespace) -> None:
    if args.csv or args.csv_header:
        w = csv.writer(sys.stdout, lineterminator="\n")
        if args.csv_header:
            w.writerow(header)
        w.writerows(rows)
        return
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    print("| " + " | ".join(heading.ljust(width) for heading, width in zip(header, widths, strict=True)) + " |")
    print(line)
    for row in cells[1:]:
        print(
            "| "
            + " | ".join(
                cell.rjust(width) if cell.replace(".", "").isdigit() else cell.ljust(width)
                for cell, width in zip(row, widths, strict=True)
            )
            + " |"
        )
    print(line)


def _alerts(args: argparse.Namespace) -> bool:
    """With ``-al``: print the alerts (FlowTraq's line format, DESIGN.md §5) instead of a
    report; True when it did."""
    if not args.alerts:
        if args.alert_user or args.alert_time:
            raise Failure(EXIT_USAGE, "-au and -at go with -al (list alerts)")
        return False
    from ..alerts.records import AlertOut, alert_line

    params: dict[str, object] = {"user": args.alert_user or args.user, "limit": 100_000}
    if args.alert_time:
        params["start_ms"] = int(time.time() * 1000) - parse_timeframe(args.alert_time)
    with _client(args) as client:
        rows = _get(client, "/api/v1/alerts", params)
    assert isinstance(rows, list)
    for row in rows:
        print(alert_line(AlertOut(**row)))
    return True


def _frame(args: argparse.Namespace) -> dict[str, int]:
    end = int(time.time() * 1000) + 1
    return {"start_ms": end - parse_timeframe(args.timeframe), "end_ms": end}


def _run(main: Callable[[list[str]], int], argv: Optional[list[str]]) -> int:
    try:
        return main(_attach_values(list(sys.argv[1:] if argv is None else argv)))
    except Failure as exc:
        print(f"{os.path.basename(sys.argv[0])}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return EXIT_OK


def report_tool(family: str, metric_code: str) -> Callable[[Optional[list[str]]], int]:
    entity, metric = FAMILIES[family], METRICS[metric_code]
    name = f"ns2{family}{metric_code}"

    def main(argv: list[str]) -> int:
        args = parser(name, f"Top {family} by {metric.replace('_', ' ')} (Sluice).").parse_args(argv)
        if _alerts(args):
            return EXIT_OK
        direction = "sender" if args.sender else "receiver" if args.receiver else "either"
        with _client(args) as client:
            rows = _get(
                client,
                "/api/v1/reports",
                {
                    "entity": entity,
                    "metric": metric,
                    "direction": direction,
                    "filter": args.filter,
                    "top": args.top,
                    **_frame(args),
                },
            )
        assert isinstance(rows, list)
        keys = [k for k in (rows[0] if rows else {}) if k != "value"] or {
            "host": ["address"],
            "port": ["protocol", "port"],
            "host_pair": ["client", "server"],
            "country": ["country"],
        }[entity]
        _print(
            [[rank + 1, *[row[key] for key in keys], row["value"]] for rank, row in enumerate(rows)],
            ["rank", *keys, metric],
            args,
        )
        return EXIT_OK

    def tool(argv: Optional[list[str]] = None) -> int:
        return _run(main, argv)

    return tool


def _ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ns2sq(argv: Optional[list[str]] = None) -> int:
    """Raw sessions, newest first."""

    def main(argv: list[str]) -> int:
        args = parser("ns2sq", "Sessions, newest first (Sluice).", report=False).parse_args(argv)
        if _alerts(args):
            return EXIT_OK
        with _client(args) as client:
            rows = _get(client, "/api/v1/sessions", {"filter": args.filter, "limit": args.top, **_frame(args)})
        assert isinstance(rows, list)
        header = [
            "start",
            "end",
            "proto",
            "client",
            "cport",
            "server",
            "sport",
            "cbytes",
            "sbytes",
            "cpkts",
            "spkts",
            "ccountry",
            "scountry",
        ]
        _print(
            [
                [
                    _ms(row["start_ms"]),
                    _ms(row["end_ms"]),
                    row["protocol"],
                    row["cln_addr"],
                    row["cln_port"],
                    row["srv_addr"],
                    row["srv_port"],
                    row["cln_bytes"],
                    row["srv_bytes"],
                    row["cln_pkts"],
                    row["srv_pkts"],
                    row["cln_country"],
                    row["srv_country"],
                ]
                for row in rows
            ],
            header,
            args,
        )
        return EXIT_OK

    return _run(main, argv)


# ns2hostsb, ns2hostsp, ns2hostss, ns2hostsup, ns2hostsuh, and the same for ports, pairs, countrys
for _family in FAMILIES:
    for _code in METRICS:
        globals()[f"{_family}{_code}"] = report_tool(_family, _code)


def _send(client: httpx.Client, method: str, path: str, body: Optional[dict] = None) -> Any:
    try:
        response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise Failure(EXIT_UNREACHABLE, f"cannot reach the server at {client.base_url}: {exc}") from None
    if response.status_code == 401 or response.status_code == 429:
        raise Failure(EXIT_AUTH, f"authentication failed: {response.json().get('detail')}")
    if response.status_code >= 400:
        detail = (
            response.json().get("detail")
            if response.headers.get("content-type", "").startswith("application/json")
            else response.text
        )
        if isinstance(detail, list):
            detail = "; ".join(f"{problem['loc'][-1]}: {problem['msg']}" for problem in detail)
        raise Failure(EXIT_USAGE if response.status_code == 422 else 1, str(detail))
    return response.json() if response.content else None


def ns2um(argv: Optional[list[str]] = None) -> int:
    """User management over the API (FlowTraq's ns2um): list, add, del, passwd, grant, revoke."""

    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(
            prog="ns2um", description="Manage Sluice accounts over the API.", allow_abbrev=False
        )
        parser.add_argument("-s", dest="server", default="localhost:9640")
        parser.add_argument("-un", dest="user")
        parser.add_argument("-up", dest="password")
        parser.add_argument("action", choices=["list", "add", "del", "passwd", "grant", "revoke"])
        parser.add_argument("name", nargs="?")
        parser.add_argument("new_password", nargs="?")
        parser.add_argument("-admin", dest="admin", action="store_true", help="with add: an administrator")
        args = parser.parse_args(argv)
        if args.action != "list" and not args.name:
            raise Failure(EXIT_USAGE, f"{args.action} needs a user name")
        if args.action in ("add", "passwd") and not args.new_password:
            raise Failure(EXIT_USAGE, f"{args.action} needs a password after the user name")
        with _client(args) as client:
            if args.action == "list":
                for user in _send(client, "GET", "/api/v1/users"):
                    print(f"{user['username']}\t{'admin' if user['is_admin'] else 'user'}")
            elif args.action == "add":
                _send(
                    client,
                    "POST",
                    "/api/v1/users",
                    {"username": args.name, "password": args.new_password, "is_admin": args.admin},
                )
            elif args.action == "del":
                _send(client, "DELETE", f"/api/v1/users/{args.name}")
            elif args.action == "passwd":
                _send(client, "PATCH", f"/api/v1/users/{args.name}", {"password": args.new_password})
            else:
                _send(client, "PATCH", f"/api/v1/users/{args.name}", {"is_admin": args.action == "grant"})
        return EXIT_OK

    return _run(main, argv)
