"""Opening the state database: SQLAlchemy engine, schema kept current by Alembic migrations.
SQLite in the data directory by default; PostgreSQL (``[state] url``) when several nodes share it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .secrets import PREFIX as SEALED
from .secrets import SecretBox

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 5

Row = TypeVar("Row")


class StateDB:
    def __init__(self, url: str, secrets: SecretBox | None = None):
        """``secrets``: what seals the secrets stored in it (None: a key of this process only,
        for a database that lives as long as the process)."""
        self.url = url
        self.secrets = secrets or SecretBox(os.urandom(32))
        if url.startswith("postgresql"):
            # a connection the server dropped (a restart, a failover) is noticed before use; a
            # server that does not answer fails a request within seconds, not minutes
            self.engine: Engine = create_engine(
                url, future=True, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
            )
        else:
            self.engine = create_engine(url, future=True)
        if url.startswith("sqlite"):

            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(dbapi_connection, _record):
                cur = dbapi_connection.cursor()
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA journal_mode=WAL")
                # in WAL mode NORMAL is still safe against corruption and against a crash of
                # the process; only a power loss may undo the last commits. FULL would fsync
                # on every alert record written
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()

        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        """Bring the schema up to date (creates it on first start)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url)
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            with session.begin():
                yield session


def stored_row(session: Session, model: type[Row], **values: Any) -> Row:
    """The row of ``model`` whose primary key is in ``values``, inserted first with ``values``
    (and the columns' defaults) if there is none. The insert does nothing when a concurrent
    transaction inserted the row first (it waits for that one to end), so two first saves both
    succeed, where a get-then-add failed the later one on the primary key."""
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing())
    key = tuple(values[column.key] for column in inspect(model).primary_key)
    row = session.get(model, key)
    assert row is not None  # inserted above, or by the transaction it waited for
    return row


def open_state(data_dir: Path, url: str | None = None, key_file: Path | None = None) -> StateDB:
    """The state database: ``url`` (e.g. PostgreSQL) or ``DATA_DIR/state.db`` (SQLite), its
    secrets sealed under ``key_file`` (default ``DATA_DIR/secret.key``, made on first start);
    secrets stored in clear by an earlier version are sealed now."""
    Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    if url is None:
        url = f"sqlite:///{Path(data_dir) / 'state.db'}"
    db = StateDB(url, SecretBox.from_file(key_file or Path(data_dir) / "secret.key"))
    db.upgrade()
    seal_stored_secrets(db)
    return db


def seal_stored_secrets(db: StateDB) -> int:
    """Seal the secrets stored in clear (before encryption at rest); returns how many."""
    from .models import SystemSettings, UserPreferences

    sealed = 0
    with db.session() as session:
        for model, column in ((SystemSettings, "smtp_password"), (UserPreferences, "webhook_secret")):
            for row in session.scalars(select(model)):
                value = getattr(row, column)
                if value and not value.startswith(SEALED):
                    setattr(row, column, db.secrets.seal(value))
                    sealed += 1
    return sealed
