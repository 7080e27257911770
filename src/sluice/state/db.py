"""Opening the state database: SQLAlchemy engine, schema kept current by Alembic migrations.
SQLite in the data directory by default; PostgreSQL (``[state] url``) when several nodes share it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 5


class StateDB:
    def __init__(self, url: str):
        self.url = url
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


def open_state(data_dir: Path, url: str | None = None) -> StateDB:
    """The state database: ``url`` (e.g. PostgreSQL) or ``DATA_DIR/state.db`` (SQLite)."""
    if url is None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(data_dir) / 'state.db'}"
    db = StateDB(url)
    db.upgrade()
    return db
