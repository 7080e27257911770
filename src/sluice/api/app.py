"""The HTTP application on port 9640: /metrics and health today; the API and web page later."""

from __future__ import annotations

import html

from fastapi import Depends, FastAPI, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

import time

from .. import __version__
from ..alerts.records import AlertStore
from ..alerts.service import AlertService
from ..collect.counters import Counters
from ..notify.service import NotifyService

from ..flows.schema import addr_text
from ..query.reports import Direction, Entity, Metric, ReportSpec
from ..state.preferences import Preferences
from ..state.users import LoginThrottle, Users
from ..store.base import FlowStore
from .alerts import build_alerts_router
from .notifications import build_notifications_router
from .auth import Authenticator, Principal
from .metrics import CountersCollector
from .v1 import build_router


def create_app(counters: Counters, users: Users, listeners: list[tuple[str, int]] | None = None,
               store: FlowStore | None = None, secure_cookies: bool = False,
               alerts: AlertService | None = None, notify: NotifyService | None = None) -> FastAPI:
    app = FastAPI(title="Sluice", version=__version__, docs_url="/api/docs", openapi_url="/api/openapi.json")
    auth = Authenticator(users, LoginThrottle())
    app.include_router(build_router(users, auth, store, counters, Preferences(users.db), secure_cookies, notify))
    alert_store = alerts.store if alerts is not None else AlertStore(users.db)
    app.include_router(build_alerts_router(auth, users, alert_store, alerts.engine if alerts is not None else None))
    if notify is not None:
        app.include_router(build_notifications_router(auth, users, notify.outbox))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(CountersCollector(counters))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["status"])
    def healthz() -> dict[str, object]:
        """Liveness for load balancers and monitoring: no data, no login."""
        return {"status": "ok", "version": __version__,
                "listeners": [{"protocol": n, "port": p} for n, p in (listeners or [])]}

    @app.get("/", include_in_schema=False)
    def index(principal: Principal = Depends(auth)) -> HTMLResponse:
        ports = "".join(f"<li>{html.escape(name)}: UDP {port}</li>" for name, port in (listeners or []))
        talkers = ""
        if store is not None:
            now = int(time.time() * 1000)
            spec = ReportSpec(Entity.HOST, Metric.BYTES, Direction.SENDER, now - 15 * 60_000, now + 60_000, top=10)
            rows = "".join(
                f"<tr><td>{html.escape(addr_text(r['address']))}</td><td>{int(r['value']):,}</td></tr>"
                for r in store.report(spec).to_pylist()
            )
            talkers = (f"<h2>Top senders, last 15 minutes</h2><p>{store.stats().rows:,} session rows stored.</p>"
                       f"<table><tr><th>address</th><th>bytes sent</th></tr>{rows}</table>")
        return HTMLResponse(
            f"<!doctype html><html lang=en><meta charset=utf-8><meta http-equiv=refresh content=5>"
            f"<title>Sluice</title><h1>Sluice {__version__}</h1><p>Logged in as {html.escape(principal.username)}"
            f"{' (administrator)' if principal.is_admin else ''}.</p>"
            f"<p>Flow collector running, listening on:</p><ul>{ports}</ul>{talkers}"
            f"<p><a href='/metrics'>/metrics</a> · <a href='/api/docs'>API docs</a></p></html>"
        )

    return app
