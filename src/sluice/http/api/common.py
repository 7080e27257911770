"""What the API's routers share: the filter and time-frame parameters, and rows as JSON."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Optional

import pyarrow as pa
from fastapi import HTTPException

from ...flows.schema import addr_text
from ...query.filter import FilterError, Node, parse

PREFIX = "/api/v1"
DEFAULT_FRAME_MS = 15 * 60_000
UNPROCESSABLE = 422  # named HTTP_422_UNPROCESSABLE_ENTITY or _CONTENT depending on the Starlette release


def parse_filter(text: Optional[str]) -> Node | None:
    """A ``filter`` query parameter, or a 422 that points at the problem."""
    if not text:
        return None
    try:
        return parse(text)
    except FilterError as exc:
        raise HTTPException(
            UNPROCESSABLE,
            [{"loc": ["query", "filter"], "msg": exc.message, "position": exc.position + 1, "type": "filter"}],
        ) from None


def time_frame(start_ms: Optional[int], end_ms: Optional[int]) -> tuple[int, int]:
    """``start_ms``/``end_ms`` with their defaults (the last 15 minutes), or a 422."""
    end = end_ms if end_ms is not None else int(time.time() * 1000) + 1
    start = start_ms if start_ms is not None else end - DEFAULT_FRAME_MS
    if end <= start:
        raise HTTPException(
            UNPROCESSABLE,
            [
                {
                    "loc": ["query", "end_ms"],
                    "msg": "the time frame is empty: end_ms must be after start_ms",
                    "type": "value",
                }
            ],
        )
    return start, end


def json_rows(table: pa.Table) -> list[dict[str, object]]:
    """Result rows as JSON objects: addresses as text, 128-bit sums as numbers."""
    rows = table.to_pylist()
    for row in rows:
        for key, value in row.items():
            if isinstance(value, bytes) and len(value) == 16:
                row[key] = addr_text(value)
            elif isinstance(value, Decimal):  # 128-bit sums arrive as decimals: JSON numbers, not text
                row[key] = int(value) if value == value.to_integral_value() else float(value)
    return rows
