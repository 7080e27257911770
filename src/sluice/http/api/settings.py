"""Each user's notification preferences and the administrators' system settings
(``/api/v1/preferences``, ``/api/v1/settings``).
"""

from typing import Optional

from fastapi import APIRouter, HTTPException

from ...notify.destinations import DestinationPolicy, DestinationRefused
from ...notify.service import NotifyService
from ...state.preferences import Preferences, PreferencesIn, PreferencesOut, SystemSettingsIn, SystemSettingsOut
from ..auth import Admin, User
from .common import PREFIX, UNPROCESSABLE


def build_settings_router(prefs: Preferences, notify: Optional[NotifyService] = None) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["preferences"])

    @router.get("/preferences", response_model=PreferencesOut)
    def get_preferences(principal: User) -> PreferencesOut:
        return prefs.user(principal.user_id)

    @router.put("/preferences", response_model=PreferencesOut)
    def put_preferences(body: PreferencesIn, principal: User) -> PreferencesOut:
        """Your own e-mail To:, syslog collector and webhook (every user may set these; an
        unprivileged user's syslog collector and webhook must be destinations the server's
        policy allows: not loopback or link-local, nor its own ports). With a To: address, a
        test mail goes out through the alert mail path (at most 3 in 10 minutes);
        ``test_mail`` says whether it was accepted, or the SMTP error."""
        if not principal.is_admin:
            policy = notify.policy if notify is not None else DestinationPolicy()
            checks = [("webhook_url", lambda: policy.check_url(body.webhook_url))] if body.webhook_url else []
            if body.syslog_host:
                checks.append(("syslog_host", lambda: policy.check(body.syslog_host, body.syslog_port)))
            for field, check in checks:
                try:
                    check()
                except DestinationRefused as exc:
                    raise HTTPException(
                        UNPROCESSABLE,
                        [{"loc": ["body", field], "msg": str(exc), "type": "value_error"}],
                    ) from None
        out = prefs.set_user(principal.user_id, body)
        if notify is not None and out.email_to:
            out.test_mail = notify.test_mail(prefs.system(), out.email_to, principal.user_id)
        return out

    @router.get("/settings", response_model=SystemSettingsOut)
    def get_settings(principal: Admin) -> SystemSettingsOut:
        return prefs.system_out(prefs.system())

    @router.put("/settings", response_model=SystemSettingsOut)
    def put_settings(body: SystemSettingsIn, principal: Admin) -> SystemSettingsOut:
        """SMTP server, security, credentials, From: and data retention (administrators). With
        an SMTP host and your own To: set, a test mail goes to you (``test_mail``)."""
        out = prefs.system_out(prefs.set_system(body))
        to = prefs.user(principal.user_id).email_to
        if notify is not None and out.smtp_host and to:
            out.test_mail = notify.test_mail(prefs.system(), to)
        return out

    return router
