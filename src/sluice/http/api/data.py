"""The flow data and the server's state: ``/api/v1/status``, ``/exporters``, ``/sessions``,
``/reports``, ``/timeseries``.
"""

from collections.abc import Callable
from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Query, status

from ...collect.overload import overload_status
from ...counters import Counters
from ...query.filter import MAX_LENGTH
from ...query.reports import Direction, Entity, Metric, ReportSpec, SeriesSpec
from ...store.base import FlowStore, TimeRange
from ..auth import User
from .common import PREFIX, UNPROCESSABLE, json_rows, parse_filter, time_frame

FilterText = Annotated[Optional[str], Query(max_length=MAX_LENGTH)]


def build_data_router(
    store: FlowStore | None, counters: Counters, retention_days: Optional[Callable[[], float]] = None
) -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    def need_store() -> FlowStore:
        if store is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no session store in this server")
        return store

    @router.get("/status", tags=["status"])
    def server_status(principal: User) -> dict[str, object]:
        snap = counters.snapshot()

        def total(name: str) -> float:
            return sum(value for (metric, _), value in snap.items() if metric == name)

        stats = store.stats() if store else None
        return {
            "datagrams": total("datagrams_total"),
            "flows": total("flows_total"),
            "flows_per_second": round(total("flows_per_second"), 1),
            "decode_errors": total("decode_errors_total"),
            "socket_drops": total("socket_drops"),
            "sessions_live": total("sessions_live"),
            "overload": overload_status(counters),
            "storage": None
            if stats is None
            else {
                "rows": stats.rows,
                "bytes_on_disk": stats.bytes_on_disk,
                "oldest_ms": stats.oldest_ms,
                "newest_ms": stats.newest_ms,
            },
            "retention_days": retention_days() if retention_days else None,
        }

    @router.get("/exporters", tags=["status"])
    def exporters(principal: User) -> list[dict[str, object]]:
        """Every exporter heard from: protocols, datagrams, flows, last datagram, loss."""
        found: dict[tuple[str, str], dict[str, object]] = {}
        for (name, labels), value in counters.snapshot().items():
            label = dict(labels)
            if "exporter" not in label or "proto" not in label:
                continue
            entry = found.setdefault(
                (label["exporter"], label["proto"]),
                {
                    "exporter": label["exporter"],
                    "protocol": label["proto"],
                    "datagrams": 0,
                    "flows": 0,
                    "last_datagram_ms": None,
                    "sequence_gaps": 0,
                    "sequence_resets": 0,
                },
            )
            key = {
                "datagrams_total": "datagrams",
                "flows_total": "flows",
                "sequence_gaps_total": "sequence_gaps",
                "sequence_resets_total": "sequence_resets",
            }.get(name)
            if key:
                entry[key] = int(value)
            elif name == "exporter_last_datagram_seconds":
                entry["last_datagram_ms"] = int(value * 1000)
        return sorted(found.values(), key=lambda e: (str(e["exporter"]), str(e["protocol"])))

    @router.get("/sessions", tags=["data"])
    def sessions(
        principal: User,
        start_ms: Optional[int] = None,
        end_ms: Optional[int] = None,
        filter: FilterText = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
    ) -> list[dict[str, object]]:
        start, end = time_frame(start_ms, end_ms)
        return json_rows(need_store().sessions(TimeRange(start, end), parse_filter(filter), limit))

    @router.get("/reports", tags=["data"])
    def reports(
        principal: User,
        entity: Entity = Entity.HOST,
        metric: Metric = Metric.BYTES,
        direction: Direction = Direction.EITHER,
        start_ms: Optional[int] = None,
        end_ms: Optional[int] = None,
        filter: FilterText = None,
        top: Annotated[int, Query(ge=1, le=10_000)] = 10,
    ) -> list[dict[str, object]]:
        start, end = time_frame(start_ms, end_ms)
        try:
            spec = ReportSpec(entity, metric, direction, start, end, parse_filter(filter), top)
            return json_rows(need_store().report(spec))
        except ValueError as exc:
            raise HTTPException(UNPROCESSABLE, str(exc)) from None

    @router.get("/timeseries", tags=["data"])
    def timeseries(
        principal: User,
        metric: Metric = Metric.BYTES,
        start_ms: Optional[int] = None,
        end_ms: Optional[int] = None,
        filter: FilterText = None,
        bucket_ms: Annotated[Optional[int], Query(ge=1000)] = None,
    ) -> dict[str, object]:
        start, end = time_frame(start_ms, end_ms)
        spec = SeriesSpec(metric, start, end, parse_filter(filter), bucket_ms)
        return {"bucket_ms": spec.bucket(), "points": json_rows(need_store().timeseries(spec))}

    return router
