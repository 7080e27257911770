"""The versioned JSON API (``/api/v1``): login, status, sessions, reports, time series, users.

No ``from __future__ import annotations`` here: FastAPI must see the dependency aliases
defined inside ``build_router`` as real objects, not as strings to resolve globally.
"""


import time
from decimal import Decimal
from typing import Annotated, Callable, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from ..collect.counters import Counters
from ..flows.schema import addr_text
from ..query.filter import FilterError, Node, parse
from ..query.reports import Direction, Entity, Metric, ReportSpec, SeriesSpec
from ..notify.service import NotifyService
from ..state.preferences import Preferences, PreferencesIn, PreferencesOut, SystemSettingsIn, SystemSettingsOut
from ..state.users import UserError, Users
from ..store.base import FlowStore, TimeRange
from .auth import COOKIE, Authenticator, Principal, client_of, require_admin

DEFAULT_FRAME_MS = 15 * 60_000
UNPROCESSABLE = 422  # named HTTP_422_UNPROCESSABLE_ENTITY or _CONTENT depending on the Starlette release


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginResult(BaseModel):
    username: str
    is_admin: bool
    csrf_token: str = Field(description="send it back as X-CSRF-Token with every change made with the cookie")


class Me(BaseModel):
    username: str
    is_admin: bool


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=1024)
    is_admin: bool = False


class UserChange(BaseModel):
    password: Optional[str] = Field(None, min_length=8, max_length=1024)
    is_admin: Optional[bool] = None


class TokenRequest(BaseModel):
    name: str = Field("cli", min_length=1, max_length=64)


class TokenResult(BaseModel):
    token: str


def _filter(text: Optional[str]) -> Node | None:
    if not text:
        return None
    try:
        return parse(text)
    except FilterError as exc:
        raise HTTPException(UNPROCESSABLE, [
            {"loc": ["query", "filter"], "msg": exc.message, "position": exc.position + 1, "type": "filter"}]) from None


def _frame(start_ms: Optional[int], end_ms: Optional[int]) -> tuple[int, int]:
    end = end_ms if end_ms is not None else int(time.time() * 1000) + 1
    start = start_ms if start_ms is not None else end - DEFAULT_FRAME_MS
    if end <= start:
        raise HTTPException(UNPROCESSABLE, [
            {"loc": ["query", "end_ms"], "msg": "the time frame is empty: end_ms must be after start_ms", "type": "value"}])
    return start, end


def _rows(table) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    rows = table.to_pylist()
    for row in rows:
        for k, v in row.items():
            if isinstance(v, bytes) and len(v) == 16:
                row[k] = addr_text(v)
            elif isinstance(v, Decimal):  # 128-bit sums arrive as decimals: JSON numbers, not text
                row[k] = int(v) if v == v.to_integral_value() else float(v)
    return rows


def build_router(users: Users, auth: Authenticator, store: FlowStore | None, counters: Counters,
                 prefs: Preferences, secure_cookies: bool = False, notify: Optional[NotifyService] = None,
                 retention_days: Optional[Callable[[], float]] = None) -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    User = Annotated[Principal, Depends(auth)]

    def admin(principal: User) -> Principal:
        return require_admin(principal)

    Admin = Annotated[Principal, Depends(admin)]

    def need_store() -> FlowStore:
        if store is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no session store in this server")
        return store

    # -- login -----------------------------------------------------------------------------

    @router.post("/login", response_model=LoginResult, tags=["auth"])
    def login(credentials: Credentials, request: Request, response: Response) -> LoginResult:
        principal = auth.password(credentials.username, credentials.password, client_of(request))
        user = users.by_id(principal.user_id)
        assert user is not None
        session_id, csrf = users.login(user)
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", secure=secure_cookies,
                            max_age=12 * 3600, path="/")
        return LoginResult(username=user.username, is_admin=user.is_admin, csrf_token=csrf)

    @router.post("/logout", status_code=204, tags=["auth"])
    def logout(request: Request, response: Response, principal: User) -> Response:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            users.logout(cookie)
        response.delete_cookie(COOKIE, path="/")
        response.status_code = 204
        return response

    @router.get("/me", response_model=Me, tags=["auth"])
    def me(principal: User) -> Me:
        return Me(username=principal.username, is_admin=principal.is_admin)

    @router.post("/tokens", response_model=TokenResult, tags=["auth"])
    def new_token(body: TokenRequest, principal: User) -> TokenResult:
        return TokenResult(token=users.create_token(principal.username, body.name))

    # -- data ------------------------------------------------------------------------------

    @router.get("/status", tags=["status"])
    def server_status(principal: User) -> dict[str, object]:
        snap = counters.snapshot()
        total = lambda name: sum(v for (n, _), v in snap.items() if n == name)  # noqa: E731
        stats = store.stats() if store else None
        return {
            "datagrams": total("datagrams_total"), "flows": total("flows_total"),
            "flows_per_second": round(total("flows_per_second"), 1),
            "decode_errors": total("decode_errors_total"), "socket_drops": total("socket_drops"),
            "sessions_live": total("sessions_live"),
            "storage": None if stats is None else {"rows": stats.rows, "bytes_on_disk": stats.bytes_on_disk,
                                                    "oldest_ms": stats.oldest_ms, "newest_ms": stats.newest_ms},
            "retention_days": retention_days() if retention_days else None,
        }

    @router.get("/exporters", tags=["status"])
    def exporters(principal: User) -> list[dict[str, object]]:
        """Every exporter heard from: protocols, datagrams, flows, last datagram, loss."""
        found: dict[tuple[str, str], dict[str, object]] = {}
        for (name, labels), value in counters.snapshot().items():
            lab = dict(labels)
            if "exporter" not in lab or "proto" not in lab:
                continue
            entry = found.setdefault((lab["exporter"], lab["proto"]), {
                "exporter": lab["exporter"], "protocol": lab["proto"], "datagrams": 0, "flows": 0,
                "last_datagram_ms": None, "sequence_gaps": 0, "sequence_resets": 0})
            key = {"datagrams_total": "datagrams", "flows_total": "flows", "sequence_gaps_total": "sequence_gaps",
                   "sequence_resets_total": "sequence_resets"}.get(name)
            if key:
                entry[key] = int(value)
            elif name == "exporter_last_datagram_seconds":
                entry["last_datagram_ms"] = int(value * 1000)
        return sorted(found.values(), key=lambda e: (str(e["exporter"]), str(e["protocol"])))

    @router.get("/sessions", tags=["data"])
    def sessions(principal: User, start_ms: Optional[int] = None, end_ms: Optional[int] = None,
                 filter: Annotated[Optional[str], Query(max_length=10_000)] = None,
                 limit: Annotated[int, Query(ge=1, le=100_000)] = 100) -> list[dict[str, object]]:
        start, end = _frame(start_ms, end_ms)
        return _rows(need_store().sessions(TimeRange(start, end), _filter(filter), limit))

    @router.get("/reports", tags=["data"])
    def reports(principal: User, entity: Entity = Entity.HOST, metric: Metric = Metric.BYTES,
                direction: Direction = Direction.EITHER, start_ms: Optional[int] = None,
                end_ms: Optional[int] = None, filter: Annotated[Optional[str], Query(max_length=10_000)] = None,
                top: Annotated[int, Query(ge=1, le=10_000)] = 10) -> list[dict[str, object]]:
        start, end = _frame(start_ms, end_ms)
        try:
            spec = ReportSpec(entity, metric, direction, start, end, _filter(filter), top)
            return _rows(need_store().report(spec))
        except ValueError as exc:
            raise HTTPException(UNPROCESSABLE, str(exc)) from None

    @router.get("/timeseries", tags=["data"])
    def timeseries(principal: User, metric: Metric = Metric.BYTES, start_ms: Optional[int] = None,
                   end_ms: Optional[int] = None, filter: Annotated[Optional[str], Query(max_length=10_000)] = None,
                   bucket_ms: Annotated[Optional[int], Query(ge=1000)] = None) -> dict[str, object]:
        start, end = _frame(start_ms, end_ms)
        spec = SeriesSpec(metric, start, end, _filter(filter), bucket_ms)
        return {"bucket_ms": spec.bucket(), "points": _rows(need_store().timeseries(spec))}

    # -- preferences and system settings ---------------------------------------------------

    @router.get("/preferences", response_model=PreferencesOut, tags=["preferences"])
    def get_preferences(principal: User) -> PreferencesOut:
        return prefs.user(principal.user_id)

    @router.put("/preferences", response_model=PreferencesOut, tags=["preferences"])
    def put_preferences(body: PreferencesIn, principal: User) -> PreferencesOut:
        """Your own e-mail To:, syslog collector and webhook (every user may set these). With a
        To: address, a test mail goes out through the alert mail path; ``test_mail`` says
        whether it was accepted, or the SMTP error."""
        out = prefs.set_user(principal.user_id, body)
        if notify is not None and out.email_to:
            out.test_mail = notify.test_mail(prefs.system(), out.email_to)
        return out

    @router.get("/settings", response_model=SystemSettingsOut, tags=["preferences"])
    def get_settings(principal: Admin) -> SystemSettingsOut:
        return prefs.system_out(prefs.system())

    @router.put("/settings", response_model=SystemSettingsOut, tags=["preferences"])
    def put_settings(body: SystemSettingsIn, principal: Admin) -> SystemSettingsOut:
        """SMTP server, security, credentials, From: and data retention (administrators). With
        an SMTP host and your own To: set, a test mail goes to you (``test_mail``)."""
        out = prefs.system_out(prefs.set_system(body))
        to = prefs.user(principal.user_id).email_to
        if notify is not None and out.smtp_host and to:
            out.test_mail = notify.test_mail(prefs.system(), to)
        return out

    # -- users -----------------------------------------------------------------------------

    def _user_json(u) -> dict[str, object]:  # type: ignore[no-untyped-def]
        return {"username": u.username, "is_admin": u.is_admin, "created_at": u.created_at.isoformat()}

    @router.get("/users", tags=["users"])
    def list_users(principal: Admin) -> list[dict[str, object]]:
        return [_user_json(u) for u in users.all()]

    @router.post("/users", status_code=201, tags=["users"])
    def create_user(body: NewUser, principal: Admin) -> dict[str, object]:
        try:
            return _user_json(users.create(body.username, body.password, body.is_admin))
        except UserError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    @router.patch("/users/{username}", tags=["users"])
    def change_user(username: str, body: UserChange, principal: User) -> dict[str, object]:
        own = username == principal.username
        if not principal.is_admin and (not own or body.is_admin is not None):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "you may change only your own password")
        if users.get(username) is None:  # found by schemathesis: a change of nobody was a 500
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {username!r}")
        try:
            if body.password is not None:
                users.set_password(username, body.password)
            if body.is_admin is not None:
                users.set_admin(username, body.is_admin)
        except UserError as exc:
            code = status.HTTP_404_NOT_FOUND if str(exc).startswith("no user") else status.HTTP_409_CONFLICT
            raise HTTPException(code, str(exc)) from None
        user = users.get(username)
        assert user is not None
        return _user_json(user)

    @router.delete("/users/{username}", status_code=204, tags=["users"])
    def delete_user(username: str, principal: Admin) -> Response:
        try:
            users.delete(username)
        except UserError as exc:
            code = status.HTTP_404_NOT_FOUND if str(exc).startswith("no user") else status.HTTP_409_CONFLICT
            raise HTTPException(code, str(exc)) from None
        return Response(status_code=204)

    return router
