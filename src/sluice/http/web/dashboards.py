"""Dashboard layouts: which widgets a user has, in which order, with their settings.

Stored per user as JSON (``dashboards`` table); validated here so the page can trust it.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field

from ...alerts.definition import Severity
from ...state.db import StateDB, stored_row
from ...state.models import DashboardRow

_ID = r"^[A-Za-z0-9_-]{1,32}$"
_FRAME = re.compile(r"^-?\d+[mhdw]$")


class AlertsWidget(BaseModel):
    type: Literal["alerts"] = "alerts"
    id: str = Field(pattern=_ID)
    title: str = Field("Alerts", max_length=80)
    min_severity: Severity = Severity.INFO


class TrafficWidget(BaseModel):
    type: Literal["traffic"] = "traffic"
    id: str = Field(pattern=_ID)
    metric: Literal["bytes", "packets", "sessions"] = "bytes"
    frame: str = Field("-1h", pattern=_FRAME.pattern)


class TopWidget(BaseModel):
    type: Literal["top"] = "top"
    id: str = Field(pattern=_ID)
    entity: Literal["host", "port", "country", "host_pair", "asn"] = "host"
    metric: Literal["bytes", "packets", "sessions", "unique_hosts", "unique_ports"] = "bytes"
    frame: str = Field("-15m", pattern=_FRAME.pattern)
    top: int = Field(10, ge=1, le=50)


class StatusWidget(BaseModel):
    type: Literal["status"] = "status"
    id: str = Field(pattern=_ID)


Widget = Annotated[Union[AlertsWidget, TrafficWidget, TopWidget, StatusWidget], Field(discriminator="type")]


class Layout(BaseModel):
    widgets: list[Widget] = Field(default_factory=list, max_length=40)


DEFAULT = Layout(
    widgets=[
        AlertsWidget(id="alerts", title="Alerts"),
        TrafficWidget(id="traffic"),
        TopWidget(id="top-hosts", entity="host", metric="bytes"),
        StatusWidget(id="status"),
    ]
)


class Dashboards:
    def __init__(self, db: StateDB):
        self.db = db

    def get(self, user_id: int) -> Layout:
        with self.db.session() as session:
            row = session.get(DashboardRow, user_id)
            return Layout.model_validate_json(row.layout) if row is not None else DEFAULT

    def put(self, user_id: int, layout: Layout) -> Layout:
        ids = [w.id for w in layout.widgets]
        if len(set(ids)) != len(ids):
            raise ValueError("widget ids must be distinct")
        data = json.dumps(layout.model_dump(mode="json"))
        with self.db.session() as session:
            stored_row(session, DashboardRow, user_id=user_id, layout=data).layout = data
        return layout
