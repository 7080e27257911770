"""Alert definitions and alert records in the state database.

An alert record exists per (definition, entity). A trigger adds to its COUNT (v1), moves its
last trigger time, and puts an acknowledged record back to NOT-ACKNOWLEDGED. SYSTEM records
(the server about itself, ``system.py``) have no definition: one per administrator and
condition, raised while the condition holds and cleared when it ends. Every change
of a record calls the ``on_change`` hooks inside the same transaction (the notification
outbox writes there, so that a notification exists if and only if the change does).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timezone
from typing import Any, Optional, Self

import structlog
from pydantic import BaseModel, model_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..state.db import StateDB
from ..state.models import AlertDefinitionRow, AlertRecordRow, MergePositionRow, User, utcnow
from .definition import Definition, DefinitionIn, Exceptions, Severity
from .engine import AlertEvent
from .partial import STREAM

log = structlog.get_logger(__name__)

NOT_ACKNOWLEDGED, ACKNOWLEDGED = "NOT-ACKNOWLEDGED", "ACKNOWLEDGED"
STATES = (NOT_ACKNOWLEDGED, ACKNOWLEDGED)
#: what happened to a record: created, triggered again after acknowledgement, counted up;
#: acknowledged and deleted by a user
CREATED, RETRIGGERED, UPDATED = "created", "retriggered", "updated"
ACKED, DELETED = "acknowledged", "deleted"
CLEARED = "cleared"  # a SYSTEM alert's condition ended
ANALYTICAL, SYSTEM = "ANALYTICAL", "SYSTEM"
SYSTEM_TITLE = "System"

ChangeHook = Callable[[Session, AlertRecordRow, str], None]


def definition_row(session: Session, row: AlertRecordRow) -> Optional[AlertDefinitionRow]:
    """The definition of a record (none for a SYSTEM alert, or one deleted meanwhile)."""
    return session.get(AlertDefinitionRow, row.definition_id) if row.definition_id else None


def _raise_again(row: AlertRecordRow, ended: bool = False) -> str:
    """A record that triggers again: RETRIGGERED if it was acknowledged (or its condition had
    ``ended``), which takes the acknowledgement back; else UPDATED."""
    change = RETRIGGERED if ended or row.state == ACKNOWLEDGED else UPDATED
    row.state = NOT_ACKNOWLEDGED
    if change == RETRIGGERED:
        row.acknowledged_us, row.acknowledged_by = None, None
    return change


@dataclass(frozen=True)
class SystemCondition:
    """A condition of the server itself that holds now (a SYSTEM alert while it does)."""

    entity: str  # what it is about, and the record's key: "exporter 192.0.2.1 silent"
    severity: str
    message: str
    value: int  # what was measured (seconds silent, datagrams dropped ...)
    threshold: int  # what it was held against (v2)


class AlertOut(BaseModel):
    """An alert record as everyone outside the database sees it: the API, the CLI line, the
    dashboard stream and every notification (``notify.message.Notice`` adds what changed)."""

    id: int
    alertdef: int
    title: str
    user: str
    entity_type: str
    entity: str
    severity: str
    message: str
    type: str = "ANALYTICAL"
    state: str
    v1: int  # COUNT
    v2: int  # THRESHOLD
    value: int  # the window value at the last trigger
    first_trigger_us: int
    last_trigger_us: int
    first_trigger: str = ""  # ISO 8601 of first_trigger_us (filled in when not given)
    last_trigger: str = ""
    acknowledged_by: Optional[str] = None
    acknowledged_us: Optional[int] = None
    cleared_us: Optional[int] = None  # SYSTEM: when its condition ended (none: it holds)

    @model_validator(mode="after")
    def _times_as_text(self) -> AlertOut:
        self.first_trigger = self.first_trigger or _iso(self.first_trigger_us)
        self.last_trigger = self.last_trigger or _iso(self.last_trigger_us)
        return self

    @classmethod
    def of(cls, row: AlertRecordRow, username: str, title: str, **more: Any) -> Self:
        """The view of a stored record (``more``: fields of a subclass)."""
        return cls(
            id=row.id,
            alertdef=row.definition_id or 0,
            title=title or (SYSTEM_TITLE if row.type == SYSTEM else ""),
            user=username,
            entity_type=row.entity_type,
            entity=row.entity,
            severity=row.severity,
            message=row.message,
            type=row.type or ANALYTICAL,
            state=row.state,
            v1=row.count,
            v2=row.threshold,
            value=row.value,
            first_trigger_us=row.first_trigger_us,
            last_trigger_us=row.last_trigger_us,
            acknowledged_by=row.acknowledged_by,
            acknowledged_us=row.acknowledged_us,
            cleared_us=row.cleared_us,
            **more,
        )

    @property
    def first_trigger_at(self) -> datetime:
        return datetime.fromtimestamp(self.first_trigger_us / 1_000_000, UTC)

    @property
    def last_trigger_at(self) -> datetime:
        return datetime.fromtimestamp(self.last_trigger_us / 1_000_000, UTC)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")


def alert_line(alert: AlertOut, tz: Optional[timezone] = None) -> str:
    """FlowTraq's CLI line (DESIGN.md §5), in the local time zone unless ``tz`` is given."""
    when = datetime.fromtimestamp(alert.last_trigger_us // 1_000_000, tz).replace(
        microsecond=alert.last_trigger_us % 1_000_000
    )
    return (
        f'{when:%m/%d/%Y %H:%M:%S}.{when.microsecond:06d}  {alert.alertdef} {alert.severity} "{alert.message}" '
        f"ID={alert.id} type={alert.type} state={alert.state} user={alert.user} v1={alert.v1} v2={alert.v2}"
    )


def _definition(row: AlertDefinitionRow, username: str) -> Definition:
    return Definition(
        id=row.id,
        user_id=row.user_id,
        username=username,
        title=row.title,
        description=row.description,
        prefilter=row.prefilter,
        metric=row.metric,
        entity=row.entity,
        threshold=row.threshold,
        per_second=bool(row.per_second),
        threshold_type=row.threshold_type or "upper",
        watch=json.loads(row.watch or "[]"),
        min_volume=row.min_volume or 0,
        baseline_days=row.baseline_days or 7,
        interval=row.interval,
        severity=row.severity,
        enabled=row.enabled,
        exceptions=Exceptions.model_validate_json(row.exceptions or "{}"),
        renotify=row.renotify_s,
    )


class AlertStore:
    def __init__(self, db: StateDB):
        self.db = db
        self.on_change: list[ChangeHook] = []
        #: called after a transaction with changes commits (wakes delivery and streams)
        self.after_commit: list[Callable[[], None]] = []
        #: called after definitions change (the engine reloads them)
        self.on_definitions: list[Callable[[], None]] = []
        self._apply_lock = threading.Lock()

    # -- definitions ----------------------------------------------------------------------

    def definitions(self, user_id: Optional[int] = None) -> list[Definition]:
        with self.db.session() as session:
            query = select(AlertDefinitionRow, User.username).join(User, User.id == AlertDefinitionRow.user_id)
            if user_id is not None:
                query = query.where(AlertDefinitionRow.user_id == user_id)
            return [_definition(row, name) for row, name in session.execute(query.order_by(AlertDefinitionRow.id))]

    def definition(self, definition_id: int) -> Optional[Definition]:
        with self.db.session() as session:
            row = session.get(AlertDefinitionRow, definition_id)
            if row is None:
                return None
            return _definition(row, session.get(User, row.user_id).username)  # type: ignore[union-attr]

    def create(self, user_id: int, definition: DefinitionIn) -> Definition:
        with self.db.session() as session:
            row = AlertDefinitionRow(user_id=user_id)
            self._fill(row, definition)
            session.add(row)
            session.flush()
            new_id = row.id
        self._changed()
        return self.definition(new_id)  # type: ignore[return-value]

    def update(self, definition_id: int, definition: DefinitionIn) -> Optional[Definition]:
        with self.db.session() as session:
            row = session.get(AlertDefinitionRow, definition_id)
            if row is None:
                return None
            self._fill(row, definition)
            row.updated_at = utcnow()
        self._changed()
        return self.definition(definition_id)

    def delete_definition(self, definition_id: int) -> bool:
        """Delete a definition and its alert records."""
        with self.db.session() as session:
            session.execute(delete(AlertRecordRow).where(AlertRecordRow.definition_id == definition_id))
            result = session.execute(delete(AlertDefinitionRow).where(AlertDefinitionRow.id == definition_id))
            gone = getattr(result, "rowcount", 0)  # a CursorResult for DELETE
        self._changed()
        return bool(gone)

    @staticmethod
    def _fill(row: AlertDefinitionRow, definition: DefinitionIn) -> None:
        row.title, row.description, row.prefilter = definition.title, definition.description, definition.prefilter
        row.metric, row.entity, row.threshold = definition.metric.value, definition.entity.value, definition.threshold
        row.interval, row.severity, row.enabled = definition.interval, definition.severity.value, definition.enabled
        row.per_second = definition.per_second
        row.threshold_type, row.watch = definition.threshold_type.value, json.dumps(definition.watch)
        row.min_volume, row.baseline_days = definition.min_volume, definition.baseline_days
        row.exceptions = definition.exceptions.model_dump_json()
        row.renotify_s = definition.renotify_s

    def _changed(self) -> None:
        for hook in self.on_definitions:
            hook()

    # -- records --------------------------------------------------------------------------

    def recorded_seq(self, stream: str = STREAM) -> int:
        """An alerting node: the stream sequence through which its alerts are recorded."""
        with self.db.session() as session:
            row = session.get(MergePositionRow, stream)
            return row.seq if row is not None else 0

    def apply(self, events: Iterable[AlertEvent], stream: str = STREAM) -> list[tuple[int, str]]:
        """Record triggers in one transaction; (record id, change) for each record touched.
        Events of collectors' partials (``seq``) move the stream's recorded position in the
        same transaction."""
        events = list(events)
        seq = max((event.seq for event in events), default=0)
        merged: dict[tuple[int, str], AlertEvent] = {}
        for event in events:  # several evaluations may name the same record: add their counts up
            old = merged.get((event.definition_id, event.entity))
            if old is not None:
                event.count += old.count
            merged[(event.definition_id, event.entity)] = event
        if not merged:
            return []
        out: list[tuple[int, str]] = []
        with self._apply_lock, self.db.session() as session:
            def_ids = {definition_id for definition_id, _ in merged}
            alive = set(session.scalars(select(AlertDefinitionRow.id).where(AlertDefinitionRow.id.in_(def_ids))))
            existing = {
                (record.definition_id, record.entity): record
                for record in session.scalars(
                    select(AlertRecordRow).where(
                        AlertRecordRow.definition_id.in_(alive),
                        AlertRecordRow.entity.in_({event for _, event in merged}),
                    )
                )
            }
            for key, event in merged.items():
                if event.definition_id not in alive:
                    continue  # deleted while the event was on its way
                row = existing.get(key)
                if row is None:
                    row = AlertRecordRow(
                        definition_id=event.definition_id,
                        user_id=event.user_id,
                        entity_type=event.entity_type.value,
                        entity=event.entity,
                        severity=event.severity,
                        message=event.message,
                        state=NOT_ACKNOWLEDGED,
                        count=event.count,
                        threshold=event.threshold,
                        value=event.value,
                        first_trigger_us=event.time_us,
                        last_trigger_us=event.time_us,
                    )
                    session.add(row)
                    change = CREATED
                else:
                    change = _raise_again(row)
                    row.count += event.count
                    row.last_trigger_us = max(row.last_trigger_us, event.time_us)
                    row.severity, row.message, row.threshold, row.value = (
                        event.severity,
                        event.message,
                        event.threshold,
                        event.value,
                    )
                out.append(self._tell(session, row, change))
            if seq:
                position = session.get(MergePositionRow, stream)
                if position is None:
                    session.add(MergePositionRow(stream=stream, seq=seq))
                else:
                    position.seq = max(position.seq, seq)
        self._committed()
        return out

    def _tell(self, session: Session, row: AlertRecordRow, change: str) -> tuple[int, str]:
        """Hand a record's change to the hooks, in its transaction; (record id, change)."""
        session.flush()
        for hook in self.on_change:
            hook(session, row, change)
        return row.id, change

    def active_system(self) -> set[str]:
        """The SYSTEM conditions raised and not cleared (their entities)."""
        with self.db.session() as session:
            query = select(AlertRecordRow.entity).where(
                AlertRecordRow.type == SYSTEM, AlertRecordRow.cleared_us.is_(None)
            )
            return set(session.scalars(query))

    def apply_system(
        self, raised: Iterable[SystemCondition], cleared: Iterable[str], now_us: int
    ) -> list[tuple[int, str]]:
        """SYSTEM conditions that hold (each administrator's record raised or counted up) and
        those that ended (their records cleared); (record id, change) for each record touched."""
        raised = list(raised)
        cleared = set(cleared)
        if not raised and not cleared:
            return []
        out: list[tuple[int, str]] = []
        with self._apply_lock, self.db.session() as session:
            admins = list(session.scalars(select(User.id).where(User.is_admin.is_(True))))
            entities = {c.entity for c in raised} | cleared
            existing = {
                (row.user_id, row.entity): row
                for row in session.scalars(
                    select(AlertRecordRow).where(AlertRecordRow.type == SYSTEM, AlertRecordRow.entity.in_(entities))
                )
            }
            for condition in raised:
                for user_id in admins:
                    row = existing.get((user_id, condition.entity))
                    if row is None:
                        row = AlertRecordRow(
                            definition_id=None,
                            user_id=user_id,
                            type=SYSTEM,
                            entity_type="system",
                            entity=condition.entity,
                            state=NOT_ACKNOWLEDGED,
                            count=1,
                            first_trigger_us=now_us,
                        )
                        session.add(row)
                        change = CREATED
                    else:
                        change = _raise_again(row, ended=row.cleared_us is not None)
                        row.count += 1
                        row.cleared_us = None
                    row.severity, row.message = condition.severity, condition.message
                    row.threshold, row.value, row.last_trigger_us = condition.threshold, condition.value, now_us
                    out.append(self._tell(session, row, change))
            for (_, entity), row in existing.items():
                if entity in cleared and row.cleared_us is None:
                    # every channel shows the message: it says that the condition ended
                    row.cleared_us, row.message = now_us, f"Ended: {row.message}"[:400]
                    out.append(self._tell(session, row, CLEARED))
        self._committed()
        return out

    def _committed(self) -> None:
        for hook in self.after_commit:
            hook()

    def alerts(
        self,
        user_id: Optional[int] = None,
        since_us: Optional[int] = None,
        until_us: Optional[int] = None,
        min_severity: Optional[Severity] = None,
        state: Optional[str] = None,
        definition_id: Optional[int] = None,
        limit: int = 1000,
    ) -> list[AlertOut]:
        """Alert records, the most recently triggered first."""
        query = (
            select(AlertRecordRow, User.username, AlertDefinitionRow.title)
            .join(User, User.id == AlertRecordRow.user_id)
            .outerjoin(AlertDefinitionRow, AlertDefinitionRow.id == AlertRecordRow.definition_id)
        )
        if user_id is not None:
            query = query.where(AlertRecordRow.user_id == user_id)
        if since_us is not None:
            query = query.where(AlertRecordRow.last_trigger_us >= since_us)
        if until_us is not None:
            query = query.where(AlertRecordRow.last_trigger_us < until_us)
        if min_severity is not None:
            query = query.where(
                AlertRecordRow.severity.in_(
                    [severity.value for severity in Severity if severity.rank >= min_severity.rank]
                )
            )
        if state is not None:
            query = query.where(AlertRecordRow.state == state)
        if definition_id is not None:
            query = query.where(AlertRecordRow.definition_id == definition_id)
        query = query.order_by(AlertRecordRow.last_trigger_us.desc(), AlertRecordRow.id.desc()).limit(limit)
        with self.db.session() as session:
            return [AlertOut.of(row, name, title) for row, name, title in session.execute(query)]

    def alert(self, alert_id: int) -> Optional[AlertOut]:
        with self.db.session() as session:
            row = session.get(AlertRecordRow, alert_id)
            if row is None:
                return None
            user = session.get(User, row.user_id)
            definition = definition_row(session, row)
            return AlertOut.of(row, user.username if user else "", definition.title if definition else "")

    def acknowledge(self, alert_ids: Iterable[int], by: str, now_us: int) -> list[int]:
        """Acknowledge records (already acknowledged ones stay as they are); the ids changed."""
        changed = []
        with self.db.session() as session:
            for row in session.scalars(select(AlertRecordRow).where(AlertRecordRow.id.in_(list(alert_ids)))):
                if row.state != ACKNOWLEDGED:
                    row.state, row.acknowledged_by, row.acknowledged_us = ACKNOWLEDGED, by, now_us
                    changed.append(row.id)
                    for hook in self.on_change:
                        hook(session, row, ACKED)
        self._committed()
        return changed

    def delete_alerts(self, alert_ids: Iterable[int]) -> int:
        return self._delete(select(AlertRecordRow).where(AlertRecordRow.id.in_(list(alert_ids))))

    def clear(self, user_id: int, definition_id: Optional[int] = None, state: Optional[str] = None) -> int:
        """Delete a user's alert records (of one definition, or in one state)."""
        query = select(AlertRecordRow).where(AlertRecordRow.user_id == user_id)
        if definition_id is not None:
            query = query.where(AlertRecordRow.definition_id == definition_id)
        if state is not None:
            query = query.where(AlertRecordRow.state == state)
        return self._delete(query)

    def _delete(self, query) -> int:
        with self.db.session() as session:
            rows = list(session.scalars(query))
            for row in rows:
                for hook in self.on_change:
                    hook(session, row, DELETED)
                session.delete(row)
        self._committed()
        return len(rows)

    def owner_of(self, alert_ids: Iterable[int]) -> dict[int, int]:
        with self.db.session() as session:
            return {
                record.id: record.user_id
                for record in session.scalars(select(AlertRecordRow).where(AlertRecordRow.id.in_(list(alert_ids))))
            }
