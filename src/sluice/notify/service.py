"""Notifications inside ``sluice serve``: the outbox hooked to the alert records, one
delivery worker per channel, the test mail, and gauges for ``/metrics``."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Optional

import structlog

from ..alerts.records import AlertStore
from ..counters import Counters
from ..lifecycle import Worker
from ..state.db import StateDB
from ..state.models import SystemSettings
from ..state.preferences import TestMail
from .channel import Channel, DeliveryError
from .destinations import DestinationPolicy
from .email import EmailChannel
from .outbox import Outbox
from .syslog import SyslogChannel
from .webhook import WebhookChannel
from .worker import DeliveryWorker

log = structlog.get_logger(__name__)

#: test mails per user at most in the window
TEST_MAILS = 3
TEST_MAIL_WINDOW_S = 600.0


class NotifyService:
    def __init__(
        self,
        db: StateDB,
        alerts: AlertStore,
        counters: Counters,
        link: str = "",
        dead_after_s: float = 86_400.0,
        tls_context: Optional[ssl.SSLContext] = None,
        poll_s: float = 1.0,
        node: Optional[str] = None,
        policy: Optional[DestinationPolicy] = None,
    ):
        """``node``: this server among those sharing the state database (see ``Outbox``);
        ``policy``: where unprivileged users' notifications may go."""
        self.counters = counters
        self.policy = policy or DestinationPolicy()
        self._test_mails: dict[int, list[float]] = {}  # user -> when their test mails went
        self._test_lock = threading.Lock()
        self.email = EmailChannel(tls_context)
        self.channels: list[Channel] = [self.email, SyslogChannel(), WebhookChannel()]
        self.outbox = Outbox(db, self.channels, link=link, dead_after_s=dead_after_s, node=node)
        alerts.on_change.append(self.outbox.on_change)
        alerts.after_commit.append(self.outbox.committed)
        self.workers = [DeliveryWorker(self.outbox, ch, counters, poll_s, self.policy) for ch in self.channels]
        self._worker = Worker("sluice-notify", self._housekeeping)

    def start(self) -> None:
        for w in self.workers:
            w.start()
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop()
        for worker in self.workers:
            worker.stop()

    def test_mail(self, system: SystemSettings, to: str, user_id: int | None = None) -> TestMail:
        """Send the test mail now, through the same code as alert mail; its fate for the user.
        A user gets at most ``TEST_MAILS`` in ``TEST_MAIL_WINDOW_S`` (saving is not a way to
        mail anyone, again and again)."""
        if user_id is not None:
            with self._test_lock:
                now = time.monotonic()
                sent = [t for t in self._test_mails.get(user_id, []) if now - t < TEST_MAIL_WINDOW_S]
                if len(sent) >= TEST_MAILS:
                    self._test_mails[user_id] = sent
                    wait = int(TEST_MAIL_WINDOW_S - (now - sent[0])) + 1
                    minutes = f"{TEST_MAIL_WINDOW_S / 60:.0f} minutes"
                    error = f"not sent: at most {TEST_MAILS} test mails in {minutes} (saved; the next in {wait} s)"
                    return TestMail(sent=False, to=to, error=error)
                self._test_mails[user_id] = [*sent, now]
        if not to:
            return TestMail(sent=False, to="", error="no To: address: e-mail is off for you")
        if not system.smtp_host:
            return TestMail(sent=False, to=to, error="no SMTP server is set: an administrator must set one")
        try:
            self.email.send_test(system, to, self.outbox.link)
        except DeliveryError as exc:
            return TestMail(sent=False, to=to, error=str(exc))
        return TestMail(sent=True, to=to)

    def _housekeeping(self) -> None:
        last_prune = 0.0
        while not self._worker.stopping.wait(5.0):
            try:
                self.export_gauges()
                if time.monotonic() - last_prune > 3600:
                    self.outbox.prune()
                    last_prune = time.monotonic()
            except Exception:  # the database may be busy: next round
                log.exception("notification housekeeping failed")

    def export_gauges(self) -> None:
        self.counters.forget("notifications")
        for (channel, state), n in self.outbox.counts().items():
            self.counters.set("notifications", n, channel=channel, state=state)
