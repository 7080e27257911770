"""The persistent outbox and the dashboard stream, written in the alert change's transaction.

``Outbox.on_change`` is an ``AlertStore`` hook: when an alert record is created, triggers
again after acknowledgement, or keeps triggering past its re-notify interval, it writes one
notification per channel the owner has switched on, in the same transaction as the record
itself. A crash therefore loses no notification and invents none. Workers (``worker.py``)
take due notifications per channel, deliver them, and mark them delivered; failures are
retried with exponential backoff until ``dead_after_s``, then marked dead with the last
error kept.

Several workers may share the database (nodes of a cluster on PostgreSQL): a worker *claims*
the notifications it takes, in one statement (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite
has one writer at a time), so no two take the same one. A claim lasts ``CLAIM_LEASE_S``: if
its worker dies, another takes the notification after that; a node that restarts gives back
its own earlier claims at once.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from ..alerts.definition import INTERVALS
from ..alerts.records import ACKED, DELETED, UPDATED, definition_row
from ..state.db import StateDB
from ..state.models import (
    AlertDefinitionRow,
    AlertRecordRow,
    AlertStreamRow,
    NotificationRow,
    SystemSettings,
    User,
    UserPreferences,
)
from .channel import Channel
from .message import REPEAT, Notice

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
#: retries: 5 s, 10 s, 20 s … at most 10 minutes apart
BACKOFF_FIRST_S, BACKOFF_MAX_S = 5.0, 600.0
#: how long a claimed notification stays its worker's: longer than any delivery takes (the
#: channels' timeouts are tens of seconds), short enough that a dead worker's wait is bounded
CLAIM_LEASE_S = 300.0


def now_us() -> int:
    return int(time.time() * 1_000_000)


@dataclass
class Due:
    id: int
    user_id: int
    notice: Notice
    attempts: int
    created_us: int


class Outbox:
    def __init__(
        self,
        db: StateDB,
        channels: Sequence[Channel],
        link: str = "",
        dead_after_s: float = 86_400.0,
        stream_min_gap_s: float = 1.0,
        backoff_first_s: float = BACKOFF_FIRST_S,
        node: str | None = None,
    ):
        """``node`` names this process's place among the workers sharing the database, the
        same across its restarts (default: the host name)."""
        self.db = db
        self.node = node or socket.gethostname()
        self.claimant = f"{self.node}/{os.getpid()}/{secrets.token_hex(4)}"
        self._give_back_earlier_claims()
        self.backoff_first_s = backoff_first_s
        self.channels = list(channels)
        self.link = link
        self.dead_after_s = dead_after_s
        self.stream_min_gap_s = stream_min_gap_s
        self.wake = threading.Condition()  # notified after commits that add work or stream events
        self._stream_last: dict[int, int] = {}  # alert id -> time of its last "updated" stream event

    # -- writing (inside the alert change's transaction) -----------------------------------

    def on_change(self, session: Session, row: AlertRecordRow, change: str) -> None:
        if change in (ACKED, DELETED):
            self.stream_event(session, row, change)  # the dashboard hears of it; no one is notified
            return
        now = now_us()
        definition = definition_row(session, row)
        notice = self._notice_of(session, row, definition, change)
        # the dashboard hears of every change (a busy record at most once a stream gap)
        if change != UPDATED or now - self._stream_last.get(row.id, 0) >= self.stream_min_gap_s * 1e6:
            self._stream_last[row.id] = now
            _add_stream_row(session, row, notice, now)
        if change == UPDATED:
            # still triggering: tell again once per re-notify interval (default: the window,
            # at least a minute: a ten-second flood window must not mail every ten seconds)
            renotify_s = (
                definition.renotify_s if definition is not None and definition.renotify_s else None
            ) or _interval_s(definition)
            if row.last_notified_us is not None and now - row.last_notified_us < renotify_s * 1_000_000:
                return
            notice.change = REPEAT
        row.last_notified_us = now
        prefs = session.get(UserPreferences, row.user_id)
        system = SystemSettings.current(session)
        payload = json.dumps(notice.payload())
        for ch in self.channels:
            if ch.destination(prefs, system) is not None:
                session.add(
                    NotificationRow(
                        user_id=row.user_id,
                        alert_id=row.id,
                        channel=ch.name,
                        change=notice.change,
                        payload=payload,
                        state=PENDING,
                        attempts=0,
                        created_us=now,
                        next_attempt_us=now,
                    )
                )

    def stream_event(self, session: Session, row: AlertRecordRow, change: str) -> None:
        """A stream event for changes that notify no one (acknowledged, deleted)."""
        definition = definition_row(session, row)
        _add_stream_row(session, row, self._notice_of(session, row, definition, change), now_us())

    def _notice_of(
        self, session: Session, row: AlertRecordRow, definition: Optional[AlertDefinitionRow], change: str
    ) -> Notice:
        user = session.get(User, row.user_id)
        return self.notice(row, definition.title if definition else "", user.username if user else "", change)

    def notice(self, row: AlertRecordRow, title: str, username: str, change: str) -> Notice:
        return Notice.of(row, username, title, change=change, link=self.link)

    def committed(self) -> None:
        """Wake the workers and streams (call after the transaction commits)."""
        with self.wake:
            self.wake.notify_all()

    # -- delivery ---------------------------------------------------------------------------

    def due(self, channel: str, limit: int = 200) -> list[Due]:
        """Claim up to ``limit`` notifications of ``channel`` that are due, for this worker."""
        now = now_us()
        free = select(NotificationRow.id).where(
            NotificationRow.channel == channel,
            NotificationRow.state == PENDING,
            NotificationRow.next_attempt_us <= now,
            or_(NotificationRow.claimed_until_us.is_(None), NotificationRow.claimed_until_us < now),
        )
        with self.db.session() as session:
            session.execute(
                update(NotificationRow)
                .where(
                    NotificationRow.id.in_(
                        free.order_by(NotificationRow.id).limit(limit).with_for_update(skip_locked=True)
                    )
                )
                .values(claimed_by=self.claimant, claimed_until_us=now + int(CLAIM_LEASE_S * 1e6))
                .execution_options(synchronize_session=False)
            )
        with self.db.session() as session:
            rows = session.scalars(
                select(NotificationRow)
                .where(
                    NotificationRow.claimed_by == self.claimant,
                    NotificationRow.channel == channel,
                    NotificationRow.state == PENDING,
                )
                .order_by(NotificationRow.id)
            ).all()
            return [
                Due(row.id, row.user_id, Notice.from_payload(json.loads(row.payload)), row.attempts, row.created_us)
                for row in rows
            ]

    def release(self, items: Iterable[Due]) -> None:
        """Give back claimed notifications this worker did not get to (it is stopping)."""
        ids = [item.id for item in items]
        if ids:
            with self.db.session() as session:
                session.execute(
                    update(NotificationRow)
                    .where(NotificationRow.id.in_(ids), NotificationRow.claimed_by == self.claimant)
                    .values(claimed_by=None, claimed_until_us=None)
                )

    def _give_back_earlier_claims(self) -> None:
        """Claims of this node's earlier processes (killed before they delivered): free now,
        not after their lease."""
        with self.db.session() as session:
            session.execute(
                update(NotificationRow)
                .where(
                    NotificationRow.state == PENDING,
                    NotificationRow.claimed_by.startswith(self.node + "/", autoescape=True),
                )
                .values(claimed_by=None, claimed_until_us=None)
            )

    def delivered(self, ids: Iterable[int]) -> None:
        with self.db.session() as session:
            session.execute(
                update(NotificationRow)
                .where(NotificationRow.id.in_(list(ids)), NotificationRow.state == PENDING)
                .values(state=DELIVERED, delivered_us=now_us(), claimed_by=None, claimed_until_us=None)
            )

    def failed(self, items: Iterable[Due], error: str) -> None:
        """Retry later with exponential backoff, or give up (dead) after ``dead_after_s``."""
        now = now_us()
        with self.db.session() as session:
            for item in items:
                row = session.get(NotificationRow, item.id)
                if row is None or row.state != PENDING:
                    continue
                row.attempts += 1
                row.last_error = error[:2000]
                row.claimed_by, row.claimed_until_us = None, None
                wait_s = min(self.backoff_first_s * 2 ** (row.attempts - 1), BACKOFF_MAX_S)
                if (now - row.created_us) / 1e6 + wait_s > self.dead_after_s:
                    row.state = DEAD
                else:
                    row.next_attempt_us = now + int(wait_s * 1e6)

    def cancel(self, items: Iterable[Due], reason: str) -> None:
        """The channel was switched off for the user since: nothing to deliver to."""
        with self.db.session() as session:
            session.execute(
                update(NotificationRow)
                .where(NotificationRow.id.in_([i.id for i in items]))
                .values(state=DEAD, last_error=reason, claimed_by=None, claimed_until_us=None)
            )

    def is_admin(self, user_id: int) -> bool:
        """Administrators' destinations are not checked against the destination policy."""
        with self.db.session() as session:
            user = session.get(User, user_id)
            return bool(user is not None and user.is_admin)

    def context(self, user_id: int) -> tuple[Optional[UserPreferences], SystemSettings]:
        with self.db.session() as session:
            prefs = session.get(UserPreferences, user_id)
            system = SystemSettings.current(session)
            session.expunge_all()
        # detached copies: opening their secrets changes nothing stored
        if prefs is not None:
            prefs.webhook_secret = self.db.secrets.open(prefs.webhook_secret)
        system.smtp_password = self.db.secrets.open(system.smtp_password)
        return prefs, system

    # -- reading ----------------------------------------------------------------------------

    def listing(self, user_id: Optional[int], state: Optional[str], limit: int = 1000) -> list[NotificationRow]:
        query = select(NotificationRow)
        if user_id is not None:
            query = query.where(NotificationRow.user_id == user_id)
        if state is not None:
            query = query.where(NotificationRow.state == state)
        with self.db.session() as session:
            rows = session.scalars(query.order_by(NotificationRow.id.desc()).limit(limit)).all()
            session.expunge_all()
            return list(rows)

    def counts(self) -> dict[tuple[str, str], int]:
        with self.db.session() as session:
            return {
                (ch, st): n
                for ch, st, n in session.execute(
                    select(NotificationRow.channel, NotificationRow.state, func.count()).group_by(
                        NotificationRow.channel, NotificationRow.state
                    )
                )
            }

    def stream(self, user_id: int, after_id: int, limit: int = 500) -> list[AlertStreamRow]:
        with self.db.session() as session:
            rows = session.scalars(
                select(AlertStreamRow)
                .where(AlertStreamRow.user_id == user_id, AlertStreamRow.id > after_id)
                .order_by(AlertStreamRow.id)
                .limit(limit)
            ).all()
            session.expunge_all()
            return list(rows)

    def last_stream_id(self, user_id: int) -> int:
        with self.db.session() as session:
            return session.scalar(select(func.max(AlertStreamRow.id)).where(AlertStreamRow.user_id == user_id)) or 0

    def prune(self, keep_s: float = 7 * 86_400) -> None:
        """Forget delivered notifications and stream events older than ``keep_s``."""
        cutoff = now_us() - int(keep_s * 1e6)
        with self.db.session() as session:
            session.execute(
                delete(NotificationRow).where(NotificationRow.state == DELIVERED, NotificationRow.created_us < cutoff)
            )
            session.execute(delete(AlertStreamRow).where(AlertStreamRow.created_us < cutoff))


def _add_stream_row(session: Session, row: AlertRecordRow, notice: Notice, created_us: int) -> None:
    """What the dashboards' live stream replays: the change and the alert as it is now."""
    session.add(
        AlertStreamRow(
            user_id=row.user_id,
            alert_id=row.id,
            change=notice.change,
            payload=json.dumps(notice.payload()),
            created_us=created_us,
        )
    )


def _interval_s(definition: Optional[AlertDefinitionRow]) -> int:
    return max(60, INTERVALS.get(definition.interval, 300)) if definition is not None else 300
