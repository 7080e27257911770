"""Ranked reports and time series: specifications, and the SQL that computes them.

The SQL reads from a *source* the store provides (its partitions, already limited in time)
and uses only portable constructs, so a ClickHouse backend can reuse it. Filters arrive as
parameterised conditions from ``sql.compile_filter``.

Entities and what "sender" / "receiver" mean for them:

- **host**, **country**, **asn** (endpoints): every session has two; an endpoint's sent
  bytes/packets are what its side sent, received what the other side sent. Sessions,
  unique hosts (distinct peers) and unique ports (distinct server ports) as sender count
  sessions the endpoint initiated (was the client), as receiver those it answered (server).
- **host_pair** (client, server), **port** (protocol, server port), **exporter**: sender is
  the client-to-server direction, receiver the server-to-client one.
- "either" adds both directions (bytes, packets) or takes both roles (counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .filter import Node
from .sql import Dialect, compile_filter


class Entity(str, Enum):
    HOST = "host"
    HOST_PAIR = "host_pair"
    PORT = "port"
    COUNTRY = "country"
    ASN = "asn"
    EXPORTER = "exporter"


class Metric(str, Enum):
    BYTES = "bytes"
    PACKETS = "packets"
    SESSIONS = "sessions"
    UNIQUE_HOSTS = "unique_hosts"
    UNIQUE_PORTS = "unique_ports"


class Direction(str, Enum):
    SENDER = "sender"
    RECEIVER = "receiver"
    EITHER = "either"


@dataclass(frozen=True)
class ReportSpec:
    entity: Entity
    metric: Metric
    direction: Direction
    start_ms: int
    end_ms: int
    where: Node | None = None
    top: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.top <= 100_000:
            raise ValueError(f"top must be between 1 and 100000, got {self.top}")
        if self.end_ms <= self.start_ms:
            raise ValueError("the time frame is empty: its end must come after its start")


@dataclass(frozen=True)
class SeriesSpec:
    metric: Metric
    start_ms: int
    end_ms: int
    where: Node | None = None
    bucket_ms: int | None = None  # None: chosen automatically
    points: int = 120  # about how many buckets an automatic size aims for

    def bucket(self) -> int:
        return self.bucket_ms if self.bucket_ms else auto_bucket_ms(self.end_ms - self.start_ms, self.points)


NICE_BUCKETS_MS = [
    1_000,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    600_000,
    1_800_000,
    3_600_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
]


def auto_bucket_ms(span_ms: int, points: int = 120) -> int:
    """The smallest round bucket size that shows the span in at most ``points`` buckets."""
    for size in NICE_BUCKETS_MS:
        if span_ms / size <= points:
            return size
    return NICE_BUCKETS_MS[-1]


# column expressions of each side, per endpoint entity
_ENDPOINT = {
    Entity.HOST: (("cln_addr",), ("srv_addr",)),
    Entity.COUNTRY: (("cln_country",), ("srv_country",)),
    Entity.ASN: (("cln_asn",), ("srv_asn",)),
}
_FIXED = {
    Entity.HOST_PAIR: ("cln_addr", "srv_addr"),
    Entity.PORT: ("protocol", "srv_port"),
    Entity.EXPORTER: ("exporter_addr",),
}
ENTITY_COLUMNS = {
    Entity.HOST: ("address",),
    Entity.COUNTRY: ("country",),
    Entity.ASN: ("asn",),
    Entity.HOST_PAIR: ("client", "server"),
    Entity.PORT: ("protocol", "port"),
    Entity.EXPORTER: ("exporter",),
}


def _directional(sent: str, received: str, direction: Direction) -> str:
    """A traffic sum for a direction: what was sent, received, or both."""
    return {
        Direction.SENDER: f"sum({sent})",
        Direction.RECEIVER: f"sum({received})",
        Direction.EITHER: f"sum({sent}) + sum({received})",
    }[direction]


def rollups_answer(spec: ReportSpec) -> bool:
    """Whether daily host rollups (bytes and packets sent and received per host) can answer
    the report, for the whole days of its frame: unfiltered host traffic."""
    return spec.where is None and spec.entity is Entity.HOST and spec.metric in (Metric.BYTES, Metric.PACKETS)


def rollup_sum(spec: ReportSpec) -> str:
    """The report's value over a rollup's columns (``sent_bytes`` … ``recv_pkts``)."""
    unit = "bytes" if spec.metric is Metric.BYTES else "pkts"
    return _directional(f"sent_{unit}", f"recv_{unit}", spec.direction)


def frame_condition(
    spec_where: Node | None, start_ms: int, end_ms: int, dialect: Dialect = Dialect.DUCKDB
) -> tuple[str, list[object]]:
    """The SQL condition of rows overlapping [start_ms, end_ms) and passing the filter."""
    cond, params = "end_ms >= ? AND start_ms < ?", list[object]([start_ms, end_ms])
    if spec_where is not None:
        sql, more = compile_filter(spec_where, dialect)
        cond, params = f"{cond} AND {sql}", params + more
    return cond, params


def report_sql(spec: ReportSpec, source: str, dialect: Dialect = Dialect.DUCKDB) -> tuple[str, list[object]]:
    """SQL for a ranked report over ``source`` (a table expression of session rows)."""
    cond, params = frame_condition(spec.where, spec.start_ms, spec.end_ms, dialect)
    names = ENTITY_COLUMNS[spec.entity]
    metric, direction = spec.metric, spec.direction
    if spec.entity in _ENDPOINT:
        cln, srv = _ENDPOINT[spec.entity]
        if metric in (Metric.BYTES, Metric.PACKETS):
            # sums: aggregate each side on its own, then merge the (much smaller) results
            parts, part_params = endpoint_sum_parts(spec, source, dialect)
            return merge_sums(parts, names[0], spec.top), part_params
        # counts of distinct things: one row per (session row, side) in the entity's role(s)
        side = "SELECT {e} AS e0, session_id, {peer} AS peer, srv_port AS port FROM {src} WHERE {cond}"
        parts, part_params = [], []
        for client in {Direction.SENDER: [1], Direction.RECEIVER: [0], Direction.EITHER: [1, 0]}[direction]:
            parts.append(
                side.format(
                    e=(cln if client else srv)[0], peer="srv_addr" if client else "cln_addr", src=source, cond=cond
                )
            )
            part_params += params
        value = {
            Metric.SESSIONS: "count(DISTINCT session_id)",
            Metric.UNIQUE_HOSTS: "count(DISTINCT peer)",
            Metric.UNIQUE_PORTS: "count(DISTINCT port)",
        }[metric]
        sql = (
            f"SELECT e0 AS {names[0]}, {value} AS value FROM ({' UNION ALL '.join(parts)}) AS sides "
            f"GROUP BY e0 ORDER BY value DESC, e0 LIMIT {int(spec.top)}"
        )
        return sql, part_params
    cols = _FIXED[spec.entity]
    if metric is Metric.UNIQUE_HOSTS and spec.entity is Entity.HOST_PAIR:
        raise ValueError("unique hosts of a host pair is always 2: choose another metric")
    value = {
        Metric.BYTES: _directional("cln_bytes", "srv_bytes", direction),
        Metric.PACKETS: _directional("cln_pkts", "srv_pkts", direction),
        Metric.SESSIONS: "count(DISTINCT session_id)",
        Metric.UNIQUE_HOSTS: {
            Direction.SENDER: "count(DISTINCT cln_addr)",
            Direction.RECEIVER: "count(DISTINCT srv_addr)",
            Direction.EITHER: "count(DISTINCT cln_addr) + count(DISTINCT srv_addr)",
        }[direction],
        Metric.UNIQUE_PORTS: "count(DISTINCT srv_port)",
    }[metric]
    select = ", ".join(f"{column} AS {name}" for column, name in zip(cols, names, strict=True))
    group = ", ".join(cols)
    sql = (
        f"SELECT {select}, {value} AS value FROM {source} WHERE {cond} GROUP BY {group} "
        f"ORDER BY value DESC, {group} LIMIT {int(spec.top)}"
    )
    return sql, params


def endpoint_sum_parts(
    spec: ReportSpec,
    source: str,
    dialect: Dialect = Dialect.DUCKDB,
    end_ranges: list[tuple[int, int | None]] | None = None,
) -> tuple[list[str], list[object]]:
    """Per-side partial sums (columns ``e0``, ``v``) of an endpoint traffic report, one query
    per side; merged by :func:`merge_sums` (stores may add partial sums of their own).
    ``end_ranges``: only rows whose end lies in one of these [lo, hi) (hi None: unbounded),
    as a store that sums the other rows itself asks."""
    cond, params = frame_condition(spec.where, spec.start_ms, spec.end_ms, dialect)
    if end_ranges is not None:
        ranges = []
        for lo, hi in end_ranges:
            ranges.append("end_ms >= ?" if hi is None else "(end_ms >= ? AND end_ms < ?)")
            params += [lo] if hi is None else [lo, hi]
        cond = f"{cond} AND ({' OR '.join(ranges) or '0 = 1'})"
    cln, srv = _ENDPOINT[spec.entity]
    unit = "bytes" if spec.metric is Metric.BYTES else "pkts"
    parts = []
    for own, other, col in (("cln", "srv", cln[0]), ("srv", "cln", srv[0])):
        parts.append(
            f"SELECT {col} AS e0, {_directional(f'{own}_{unit}', f'{other}_{unit}', spec.direction)} AS v "
            f"FROM {source} WHERE {cond} GROUP BY {col}"
        )
    return parts, params + params


def merge_sums(parts: list[str], name: str, top: int) -> str:
    """The top entities of partial sums (``e0``, ``v``) added up."""
    return (
        f"SELECT e0 AS {name}, sum(v) AS value FROM ({' UNION ALL '.join(parts)}) AS sides "
        f"GROUP BY e0 ORDER BY value DESC, e0 LIMIT {int(top)}"
    )


def series_sql(spec: SeriesSpec, source: str, dialect: Dialect = Dialect.DUCKDB) -> tuple[str, list[object]]:
    cond, params = frame_condition(spec.where, spec.start_ms, spec.end_ms, dialect)
    bucket = int(spec.bucket())
    value = {
        Metric.BYTES: "sum(cln_bytes) + sum(srv_bytes)",
        Metric.PACKETS: "sum(cln_pkts) + sum(srv_pkts)",
        Metric.SESSIONS: "count(DISTINCT session_id)",
        Metric.UNIQUE_HOSTS: "count(DISTINCT cln_addr) + count(DISTINCT srv_addr)",
        Metric.UNIQUE_PORTS: "count(DISTINCT srv_port)",
    }[spec.metric]
    # rows are bucketed by their end time, clamped into the frame
    div = "intDiv(greatest(end_ms, ?), {b})" if dialect is Dialect.CLICKHOUSE else "(greatest(end_ms, ?) // {b})"
    sql = (
        f"SELECT {div.format(b=bucket)} * {bucket} AS bucket_ms, {value} AS value "
        f"FROM {source} WHERE {cond} GROUP BY bucket_ms ORDER BY bucket_ms"
    )
    return sql, [spec.start_ms] + params
