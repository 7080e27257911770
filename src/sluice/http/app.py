"""The HTTP application on port 9640: the JSON API, the web page, /metrics and /healthz."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Optional

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from sqlalchemy.exc import OperationalError

from .. import __version__
from ..alerts.records import AlertStore
from ..alerts.service import AlertService
from ..counters import Counters
from ..notify.service import NotifyService
from ..state.preferences import Preferences
from ..state.users import LoginThrottle, Users
from ..store.base import FlowStore, StoreUnavailable
from .api.account import build_account_router
from .api.alerts import build_alerts_router
from .api.data import build_data_router
from .api.notifications import build_notifications_router
from .api.settings import build_settings_router
from .api.users import build_users_router
from .auth import Authenticator
from .limits import BodyLimit, SecurityHeaders, validation_errors
from .metrics import CountersCollector
from .web.dashboards import Dashboards
from .web.pages import STATIC, build_web_router

log = structlog.get_logger(__name__)


def create_app(
    counters: Counters,
    users: Users,
    listeners: list[tuple[str, int]] | None = None,
    store: FlowStore | None = None,
    secure_cookies: bool = False,
    alerts: AlertService | None = None,
    notify: NotifyService | None = None,
    retention_days: Optional[Callable[[], float]] = None,
    metrics_token: Optional[str] = None,
) -> FastAPI:
    # no Swagger UI: it loads its scripts from a CDN (and runs inline ones); the OpenAPI
    # document is served for any viewer
    app = FastAPI(title="Sluice", version=__version__, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    auth = Authenticator(users, LoginThrottle())
    app.state.auth = auth  # what the User / Admin route parameters authenticate with
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(RequestValidationError, validation_errors)
    app.add_exception_handler(OperationalError, state_unavailable)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.include_router(build_account_router(users, auth, secure_cookies))
    app.include_router(build_data_router(store, counters, retention_days))
    app.include_router(build_settings_router(Preferences(users.db), notify))
    app.include_router(build_users_router(users))
    alert_store = alerts.store if alerts is not None else AlertStore(users.db)
    app.include_router(build_alerts_router(users, alert_store, alerts.engine if alerts is not None else None))
    if notify is not None:
        app.include_router(build_notifications_router(users, notify.outbox))
    app.include_router(build_web_router(auth, users, Dashboards(users.db)))
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CountersCollector(counters))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus; with ``http.metrics_token`` set, only for ``Authorization: Bearer <it>``."""
        if metrics_token:
            sent = request.headers.get("authorization", "")
            if not secrets.compare_digest(sent.encode(), f"Bearer {metrics_token}".encode()):
                return JSONResponse(
                    status_code=401,
                    content={"detail": "/metrics needs the scrape token: Authorization: Bearer <http.metrics_token>"},
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["status"])
    def healthz() -> dict[str, object]:
        """Liveness for load balancers and monitoring: no data, no login."""
        return {
            "status": "ok",
            "version": __version__,
            "listeners": [{"protocol": n, "port": p} for n, p in (listeners or [])],
        }

    return app


async def state_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 when the state database cannot be reached or is busy (PostgreSQL down, a network
    cut), with the driver's reason in one line: the client may retry (``Retry-After``)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = (lines[0] if lines else type(exc).__name__)[:300]
    log.warning("state database unavailable", path=request.url.path, reason=reason)
    if "disk is full" in reason or "No space left" in reason:  # SQLite / PostgreSQL wording
        return JSONResponse(
            status_code=507,
            content={"detail": f"the state database's disk is full ({reason}): free space on it, then retry"},
        )
    return JSONResponse(
        status_code=503,
        content={
            "detail": f"state database unavailable ({reason}); Sluice reconnects by itself: "
            "check that the database server is running and reachable, then retry"
        },
        headers={"Retry-After": "5"},
    )


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 when the session store's servers cannot answer (a ClickHouse shard down): the
    reason in one line, and ``Retry-After``."""
    log.warning("session store unavailable", path=request.url.path, reason=str(exc))
    return JSONResponse(
        status_code=503,
        content={"detail": f"session store unavailable ({exc}): check that every store server is running, then retry"},
        headers={"Retry-After": "5"},
    )
