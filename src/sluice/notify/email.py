"""E-mail over SMTP: plain and HTML parts, no security / STARTTLS / implicit TLS, and AUTH
only when credentials are set (never an empty AUTH)."""

from __future__ import annotations

import email.policy
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Optional

from ..alerts.records import NOT_ACKNOWLEDGED
from ..state.models import SystemSettings, UserPreferences
from .channel import DeliveryError
from .destinations import DestinationPolicy
from .message import Notice, digest_subject, digest_text, mail_html, mail_subject, mail_text, one_line

TIMEOUT_S = 15.0


class EmailChannel:
    name = "email"

    def __init__(self, tls_context: Optional[ssl.SSLContext] = None):
        # tests pass a context that trusts their self-signed certificate
        self.tls_context = tls_context or ssl.create_default_context()

    def destination(self, prefs: Optional[UserPreferences], system: SystemSettings) -> Optional[str]:
        if not system.smtp_host or prefs is None or not prefs.email_to:
            return None  # blank SMTP host: off for everyone; blank To:, off for this user
        return prefs.email_to

    def check(self, prefs: UserPreferences, policy: DestinationPolicy) -> None:
        """Mail goes to the administrators' SMTP server: nothing of the user's to check."""

    def deliver(self, notices: list[Notice], prefs: UserPreferences, system: SystemSettings) -> None:
        if len(notices) == 1:
            notice = notices[0]
            msg = self.message(system, prefs.email_to, mail_subject(notice), mail_text(notice), mail_html(notice))
        else:
            msg = self.message(system, prefs.email_to, digest_subject(notices), digest_text(notices), None)
        self.send(system, msg)

    @staticmethod
    def message(system: SystemSettings, to: str, subject: str, text: str, html: Optional[str]) -> EmailMessage:
        # the default policy refuses CR/LF in header values. Lines may be 998 characters (RFC
        # 5322): folding at 78 would break a subject right after "Subject:"
        msg = EmailMessage(policy=email.policy.default.clone(max_line_length=998))
        msg["From"] = one_line(system.smtp_from or f"sluice@{one_line(system.smtp_host)}")
        msg["To"] = one_line(to)
        msg["Subject"] = one_line(subject)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="sluice")
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
        return msg

    def send(self, system: SystemSettings, msg: EmailMessage) -> None:
        host, port, security = system.smtp_host, system.smtp_port, system.smtp_security
        try:
            if security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=TIMEOUT_S, context=self.tls_context)
            else:
                smtp = smtplib.SMTP(host, port, timeout=TIMEOUT_S)
            with smtp:
                smtp.ehlo()
                if security == "starttls":
                    smtp.starttls(context=self.tls_context)
                    smtp.ehlo()
                if system.smtp_username:
                    smtp.login(system.smtp_username, system.smtp_password)
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            raise DeliveryError(f"SMTP {host}:{port} ({security}): {type(exc).__name__}: {exc}") from None

    def send_test(self, system: SystemSettings, to: str, link: str = "") -> None:
        """The mail sent when preferences are saved: the same path as alerts."""
        now_us = int(time.time() * 1_000_000)
        notice = Notice(
            id=0,
            alertdef=0,
            title="Test",
            user="",
            entity_type="host",
            entity="192.0.2.1",
            severity="INFO",
            message="Sluice test mail: e-mail notifications reach you.",
            state=NOT_ACKNOWLEDGED,
            v1=0,
            v2=0,
            value=0,
            first_trigger_us=now_us,
            last_trigger_us=now_us,
            change="test",
            link=link,
        )
        self.send(system, self.message(system, to, mail_subject(notice), mail_text(notice), mail_html(notice)))
