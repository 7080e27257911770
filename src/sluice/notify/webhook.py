"""Webhook: a JSON POST per alert, signed with HMAC-SHA256 of the body under the user's
secret (header ``X-Sluice-Signature: sha256=<hex>``), for chat and automation."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Optional

import httpx

from ..state.models import SystemSettings, UserPreferences
from .channel import DeliveryError
from .destinations import DestinationPolicy
from .message import Notice, webhook_body

TIMEOUT_S = 10.0


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    name = "webhook"

    def destination(self, prefs: Optional[UserPreferences], system: SystemSettings) -> Optional[str]:
        return prefs.webhook_url if prefs is not None and prefs.webhook_url else None

    def check(self, prefs: UserPreferences, policy: DestinationPolicy) -> None:
        policy.check_url(prefs.webhook_url)

    def deliver(self, notices: list[Notice], prefs: UserPreferences, system: SystemSettings) -> None:
        for notice in notices:
            body = json.dumps(webhook_body(notice), sort_keys=True).encode()
            headers = {"Content-Type": "application/json", "User-Agent": "sluice"}
            if prefs.webhook_secret:
                headers["X-Sluice-Signature"] = signature(prefs.webhook_secret, body)
            try:
                r = httpx.post(prefs.webhook_url, content=body, headers=headers, timeout=TIMEOUT_S)
            except httpx.HTTPError as exc:
                raise DeliveryError(f"webhook {prefs.webhook_url}: {type(exc).__name__}: {exc}") from None
            if r.status_code >= 300:  # the status only: the response's body is not the user's to read
                raise DeliveryError(f"webhook {prefs.webhook_url}: HTTP {r.status_code}")
