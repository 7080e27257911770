"""State database tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time with its zone: SQLite gives times back without it; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """A bearer token for scripts; only its hash is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # None: never
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginSession(Base):
    """A web login: the cookie carries the id (random); the CSRF token must accompany changes."""

    __tablename__ = "login_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SystemSettings(Base):
    """One row (id 1): what administrators set for the whole system."""

    __tablename__ = "system_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    smtp_host: Mapped[str] = mapped_column(String(255), default="")  # blank: e-mail off for everyone
    smtp_port: Mapped[int] = mapped_column(Integer, default=25)
    smtp_security: Mapped[str] = mapped_column(String(16), default="none")  # none, starttls, tls
    smtp_username: Mapped[str] = mapped_column(String(255), default="")
    smtp_password: Mapped[str] = mapped_column(String(1024), default="")  # sealed (state/secrets.py)
    smtp_from: Mapped[str] = mapped_column(String(255), default="")
    retention_days: Mapped[float | None] = mapped_column(nullable=True)  # None: the configuration's

    @classmethod
    def current(cls, session: Session) -> SystemSettings:
        """The stored row, or before any is saved each column at its default, not stored:
        reading never writes (a read that inserted the missing row raced the first save)."""
        return session.get(cls, 1) or cls(
            id=1, **{c.key: c.default.arg for c in cls.__table__.columns if c.default is not None}
        )


class UserPreferences(Base):
    __tablename__ = "user_preferences"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    email_to: Mapped[str] = mapped_column(String(255), default="")  # blank: no e-mail for this user
    syslog_host: Mapped[str] = mapped_column(String(255), default="")  # blank: syslog off
    syslog_port: Mapped[int] = mapped_column(Integer, default=514)
    syslog_facility: Mapped[str] = mapped_column(String(16), default="local0")
    syslog_format: Mapped[str] = mapped_column(String(16), default="rfc5424")  # rfc5424, rfc3164, cef
    syslog_transport: Mapped[str] = mapped_column(String(8), default="udp")  # udp, tcp
    email_digest: Mapped[bool] = mapped_column(Boolean, default=False)  # many at once: one mail
    webhook_url: Mapped[str] = mapped_column(String(1000), default="")  # blank: no webhook
    webhook_secret: Mapped[str] = mapped_column(String(1024), default="")  # HMAC key, sealed


class AlertDefinitionRow(Base):
    """A user's alert definition (see ``sluice.alerts.definition``); its id is the ALERTDEF."""

    __tablename__ = "alert_definitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    prefilter: Mapped[str] = mapped_column(Text, default="")
    metric: Mapped[str] = mapped_column(String(32))
    entity: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[int] = mapped_column(BigInteger)
    per_second: Mapped[bool] = mapped_column(Boolean, default=False)  # the threshold is a rate
    threshold_type: Mapped[str] = mapped_column(String(8), default="upper")  # or lower: falls below
    watch: Mapped[str] = mapped_column(Text, default="[]")  # JSON: a lower threshold's entities
    min_volume: Mapped[int] = mapped_column(BigInteger, default=0)  # a baseline's least alerting value
    baseline_days: Mapped[int] = mapped_column(Integer, default=7)  # a baseline's time constant
    interval: Mapped[str] = mapped_column(String(8))
    severity: Mapped[str] = mapped_column(String(10))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    exceptions: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    renotify_s: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: the interval
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AlertRecordRow(Base):
    """One alert record per (definition, entity); times in microseconds since the epoch."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("definition_id", "entity"),
        Index("ix_alerts_user_last", "user_id", "last_trigger_us"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # none for a SYSTEM alert (the server about itself, one record per administrator)
    definition_id: Mapped[int | None] = mapped_column(
        ForeignKey("alert_definitions.id", ondelete="CASCADE"), nullable=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(12), default="ANALYTICAL")  # or SYSTEM
    entity_type: Mapped[str] = mapped_column(String(16))
    entity: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(String(400))
    state: Mapped[str] = mapped_column(String(20), default="NOT-ACKNOWLEDGED")
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    threshold: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[int] = mapped_column(BigInteger, default=0)
    first_trigger_us: Mapped[int] = mapped_column(BigInteger)
    last_trigger_us: Mapped[int] = mapped_column(BigInteger)
    acknowledged_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_notified_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cleared_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # SYSTEM: the condition ended


class NotificationRow(Base):
    """The outbox: one notification for one channel, written in the transaction of the
    alert change it tells of, delivered (or given up: ``dead``) by that channel's worker."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "channel", "state", "next_attempt_us"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="SET NULL"), nullable=True)
    channel: Mapped[str] = mapped_column(String(16))  # email, syslog, webhook
    change: Mapped[str] = mapped_column(String(16))  # created, retriggered, repeat
    payload: Mapped[str] = mapped_column(Text)  # JSON: the alert as it was when this was written
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending, delivered, dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_us: Mapped[int] = mapped_column(BigInteger)
    next_attempt_us: Mapped[int] = mapped_column(BigInteger)
    delivered_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # taken for delivery by one worker (node/pid/random) until this time; after it, by anyone
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    claimed_until_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AlertStreamRow(Base):
    """What the dashboard stream carries: every change of a user's alerts, in order; the id
    is the SSE event id a reconnecting client resumes from."""

    __tablename__ = "alert_stream"
    __table_args__ = (Index("ix_alert_stream_user", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    alert_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    change: Mapped[str] = mapped_column(String(16))  # created, retriggered, updated, acknowledged, deleted
    payload: Mapped[str] = mapped_column(Text)
    created_us: Mapped[int] = mapped_column(BigInteger)


class DashboardRow(Base):
    """A user's dashboard: the widgets and their order, as JSON (see ``http.web.dashboards``)."""

    __tablename__ = "dashboards"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    layout: Mapped[str] = mapped_column(Text)


class MergePositionRow(Base):
    """An alerting node's place in the stream of collectors' partials: the alerts of every
    partial up to ``seq`` are recorded (written in the same transaction as those records, so
    that partials merged again after a crash do not record them twice)."""

    __tablename__ = "alert_merge_positions"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
