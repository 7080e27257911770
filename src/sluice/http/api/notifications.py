"""Notifications over HTTP: the outbox for administrators (what is pending, what died and
why) and the live alert stream for the dashboard (server-sent events).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Optional

from anyio import to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ...notify.outbox import Outbox
from ...state.users import Users
from ..auth import User
from .common import PREFIX

HEARTBEAT_S = 15.0
POLL_S = 0.25


class NotificationOut(BaseModel):
    id: int
    user_id: int
    alert_id: Optional[int]
    channel: str
    change: str
    state: str
    attempts: int
    created_us: int
    next_attempt_us: int
    delivered_us: Optional[int]
    last_error: Optional[str]


def build_notifications_router(users: Users, outbox: Outbox) -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.get("/notifications", response_model=list[NotificationOut], tags=["notifications"])
    def notifications(
        principal: User,
        state: Annotated[Optional[str], Query(pattern="^(pending|delivered|dead)$")] = None,
        user: Optional[str] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[NotificationOut]:
        """Notifications, newest first: yours; administrators see everyone's (or ``user``'s),
        with the last delivery error of each."""
        if principal.is_admin:
            who = None if not user else getattr(users.get(user), "id", -1)
        elif user and user != principal.username:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only administrators may see other users' notifications")
        else:
            who = principal.user_id
        return [NotificationOut.model_validate(r, from_attributes=True) for r in outbox.listing(who, state, limit)]

    @router.get("/alerts/stream", tags=["notifications"], response_class=StreamingResponse)
    async def alert_stream(
        request: Request,
        principal: User,
        last_event_id: Annotated[Optional[str], Header()] = None,
        after: Annotated[Optional[int], Query(ge=0, description="resume after this event id")] = None,
    ) -> StreamingResponse:
        """Your alerts as they change (server-sent events, ``event: alert``): created,
        retriggered, updated, acknowledged, deleted. Reconnecting with ``Last-Event-ID`` (or
        ``?after=``) resumes after that event, without gaps; a new stream starts now."""
        if last_event_id is not None and last_event_id.isdigit():
            start = int(last_event_id)
        elif after is not None:
            start = after
        else:
            start = await to_thread.run_sync(outbox.last_stream_id, principal.user_id)

        async def events() -> AsyncIterator[bytes]:
            last, idle = start, 0.0
            yield b"retry: 2000\n\n"
            while not await request.is_disconnected():
                rows = await to_thread.run_sync(outbox.stream, principal.user_id, last)
                for r in rows:
                    last = r.id
                    data = json.dumps({"change": r.change, "alert": json.loads(r.payload)})
                    yield f"id: {r.id}\nevent: alert\ndata: {data}\n\n".encode()
                if rows:
                    idle = 0.0
                    continue
                await asyncio.sleep(POLL_S)
                idle += POLL_S
                if idle >= HEARTBEAT_S:
                    idle = 0.0
                    yield b": keep-alive\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    return router
