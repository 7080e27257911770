"""System settings (administrators) and per-user preferences, with validation.

Every string that may end up in a mail header or a syslog line is checked here: no control
characters (CR/LF in particular) get in, whatever the client sends.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Optional

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field, field_validator

from .db import StateDB, stored_row
from .models import SystemSettings, UserPreferences

#: RFC 5424 facility names, in code order (kern = 0 … local7 = 23)
FACILITIES = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "audit",
    "alert",
    "clock",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
]
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters (line breaks, tabs)")
    return value


def check_host(value: str, what: str = "host") -> str:
    value = _no_control(value, what).strip()
    if not value:
        return ""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(f"{what} {value!r} is neither an IP address nor a host name")
    return value


def check_email(value: str, what: str = "address") -> str:
    value = _no_control(value, what).strip()
    if not value:
        return ""
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{what} {value!r} is not an e-mail address: {exc}") from None


class SystemSettingsIn(BaseModel):
    smtp_host: str = Field("", description="SMTP server; blank turns e-mail off for everyone")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str = Field("", max_length=255, description="blank: no SMTP authentication")
    smtp_password: Optional[str] = Field(None, max_length=255, description="omit to keep the one set")
    smtp_from: str = Field("", description="the From: address of alert mail")
    retention_days: Optional[float] = Field(None, gt=0, le=36_500, description="blank: the configuration's")

    _host = field_validator("smtp_host")(lambda cls, v: check_host(v, "SMTP host"))
    _from = field_validator("smtp_from")(lambda cls, v: check_email(v, "From: address"))

    @field_validator("smtp_username", "smtp_password")
    @classmethod
    def _plain(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _no_control(v, "SMTP credentials")


class TestMail(BaseModel):
    sent: bool
    to: str = ""
    error: Optional[str] = None


class SystemSettingsOut(BaseModel):
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_username: str
    smtp_password_set: bool
    smtp_from: str
    retention_days: Optional[float]
    test_mail: Optional[TestMail] = None


class PreferencesIn(BaseModel):
    email_to: str = Field("", description="where your alert mail goes; blank: no e-mail")
    syslog_host: str = Field("", description="your syslog collector (SIEM); blank: no syslog")
    syslog_port: int = Field(514, ge=1, le=65535)
    syslog_facility: Literal[tuple(FACILITIES)] = "local0"  # type: ignore[valid-type]
    syslog_format: Literal["rfc5424", "rfc3164", "cef"] = "rfc5424"
    syslog_transport: Literal["udp", "tcp"] = "udp"

    email_digest: bool = Field(False, description="when several alerts are due at once, one mail listing them")
    webhook_url: str = Field("", max_length=1000, description="JSON POST of each alert; blank: no webhook")
    webhook_secret: Optional[str] = Field(
        None, max_length=255, description="HMAC-SHA256 key for X-Sluice-Signature; omit to keep"
    )

    _to = field_validator("email_to")(lambda cls, v: check_email(v, "To: address"))
    _host = field_validator("syslog_host")(lambda cls, v: check_host(v, "syslog host"))

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, v: str) -> str:
        v = _no_control(v, "webhook URL").strip()
        if v and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"webhook URL {v!r} must start with http:// or https://")
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _no_control(v, "webhook secret")


class PreferencesOut(BaseModel):
    email_to: str = ""
    syslog_host: str = ""
    syslog_port: int = 514
    syslog_facility: str = "local0"
    syslog_format: str = "rfc5424"
    syslog_transport: str = "udp"
    email_digest: bool = False
    webhook_url: str = ""
    webhook_secret_set: bool = False
    test_mail: Optional[TestMail] = Field(None, description="after saving with a To: address: the test mail's fate")


class Preferences:
    def __init__(self, db: StateDB):
        self.db = db

    def system(self) -> SystemSettings:
        """The system settings, the SMTP password opened (a detached copy: changing it
        changes nothing stored)."""
        row = self._system()
        row.smtp_password = self.db.secrets.open(row.smtp_password)
        return row

    def _system(self) -> SystemSettings:
        with self.db.session() as session:
            return SystemSettings.current(session)

    def set_system(self, new: SystemSettingsIn) -> SystemSettings:
        with self.db.session() as session:
            row = stored_row(session, SystemSettings, id=1)
            for key, value in new.model_dump().items():
                if key == "smtp_password":
                    if value is None:
                        continue  # not given: keep
                    value = self.db.secrets.seal(value)
                setattr(row, key, value)
            return row

    @staticmethod
    def system_out(row: SystemSettings) -> SystemSettingsOut:
        return SystemSettingsOut(
            smtp_host=row.smtp_host,
            smtp_port=row.smtp_port,
            smtp_security=row.smtp_security,
            smtp_username=row.smtp_username,
            smtp_password_set=bool(row.smtp_password),
            smtp_from=row.smtp_from,
            retention_days=row.retention_days,
        )

    def user(self, user_id: int) -> PreferencesOut:
        with self.db.session() as session:
            row = session.get(UserPreferences, user_id)
            if row is None:
                return PreferencesOut()
            return PreferencesOut(
                email_to=row.email_to,
                syslog_host=row.syslog_host,
                syslog_port=row.syslog_port,
                syslog_facility=row.syslog_facility,
                syslog_format=row.syslog_format,
                syslog_transport=row.syslog_transport,
                email_digest=row.email_digest,
                webhook_url=row.webhook_url,
                webhook_secret_set=bool(row.webhook_secret),
            )

    def set_user(self, user_id: int, new: PreferencesIn) -> PreferencesOut:
        with self.db.session() as session:
            row = stored_row(session, UserPreferences, user_id=user_id)
            for key, value in new.model_dump().items():
                if key == "webhook_secret":
                    if value is None:
                        continue  # not given: keep
                    value = self.db.secrets.seal(value)
                setattr(row, key, value)
        return self.user(user_id)
