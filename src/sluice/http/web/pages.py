"""The web page on port 9640: server-rendered HTML (Jinja2) with light JavaScript that talks
to the same JSON API as the command line. Static files (including the chart library) are
served from the package: the page works with no internet.
"""

import re
from pathlib import Path
from typing import Optional
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from ... import __version__
from ...query.filter import FilterError, parse
from ...state.preferences import FACILITIES
from ...state.users import Users
from ..auth import COOKIE, Authenticator, User
from .dashboards import Dashboards, Layout

HERE = Path(__file__).parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))


class FilterCheck(BaseModel):
    ok: bool
    error: Optional[str] = None
    position: Optional[int] = None
    pointer: Optional[str] = None


#: a path of this site: "/" then URL characters only (no backslash, whitespace or control
#: characters, which browsers may turn into "//": /\\host, /%09/host), and not "//"
_SAME_ORIGIN_PATH = re.compile(r"/(?![/])[A-Za-z0-9\-._~!$&'()*+,;=:@/%?#]*")


def same_origin_path(target: str) -> str:
    """``target`` if it is a plain path of this site, else "/": where to go after logging in."""
    if not _SAME_ORIGIN_PATH.fullmatch(target):
        return "/"
    parts = urlsplit(target)
    return "/" if parts.scheme or parts.netloc else target


def build_web_router(auth: Authenticator, users: Users, dashboards: Dashboards) -> APIRouter:
    router = APIRouter()

    def page(request: Request, template: str, title: str, **context: object) -> Response:
        """Render a page for whoever is logged in; anyone else goes to the login page."""
        try:
            principal = auth(request)
        except HTTPException as exc:
            if exc.status_code in (401, 403):
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target, safe='')}", status.HTTP_303_SEE_OTHER)
            raise
        csrf = ""
        cookie = request.cookies.get(COOKIE)
        if cookie:
            found = users.by_login(cookie)
            csrf = found[1] if found else ""
        return templates.TemplateResponse(
            request, template, {"title": title, "user": principal, "csrf": csrf, "version": __version__, **context}
        )

    @router.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        safe_next = same_origin_path(next)
        return templates.TemplateResponse(
            request, "login.html", {"title": "Log in", "next": safe_next, "version": __version__, "user": None}
        )

    @router.get("/", include_in_schema=False)
    def dashboard(request: Request) -> Response:
        return page(request, "dashboard.html", "Dashboard")

    @router.get("/alerts/new", include_in_schema=False)
    def new_alert(request: Request) -> Response:
        return page(request, "editor.html", "Schedule new alert", definition_id=None)

    @router.get("/alerts/{definition_id}/edit", include_in_schema=False)
    def edit_alert(request: Request, definition_id: int) -> Response:
        return page(request, "editor.html", "Edit alert", definition_id=definition_id)

    @router.get("/alerts", include_in_schema=False)
    def alert_definitions(request: Request) -> Response:
        return page(request, "definitions.html", "Alert definitions")

    @router.get("/explore", include_in_schema=False)
    def explore(request: Request) -> Response:
        return page(request, "explore.html", "Explore")

    @router.get("/preferences", include_in_schema=False)
    def preferences(request: Request) -> Response:
        return page(request, "preferences.html", "Preferences", facilities=FACILITIES)

    @router.get("/users", include_in_schema=False)
    def users_page(request: Request) -> Response:
        response = page(request, "users.html", "Users")
        user = getattr(response, "context", {}).get("user")
        if user is not None and not user.is_admin:
            response.status_code = 403  # the page says it is for administrators
        return response

    # -- JSON the pages need ------------------------------------------------------------------

    @router.get("/api/v1/dashboard", response_model=Layout, tags=["web"])
    def get_dashboard(principal: User) -> Layout:
        """Your dashboard: its widgets in order."""
        return dashboards.get(principal.user_id)

    @router.put("/api/v1/dashboard", response_model=Layout, tags=["web"])
    def put_dashboard(layout: Layout, principal: User) -> Layout:
        try:
            return dashboards.put(principal.user_id, layout)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get("/api/v1/filter/check", response_model=FilterCheck, tags=["web"])
    def check_filter(principal: User, filter: str = "") -> FilterCheck:
        """Does this filter parse? The parser's message and position when not (for live checks)."""
        if not filter.strip():
            return FilterCheck(ok=True)
        try:
            parse(filter)
        except FilterError as exc:
            return FilterCheck(ok=False, error=exc.message, position=exc.position + 1, pointer=exc.pointer())
        return FilterCheck(ok=True)

    return router
