"""The state database's schema: every Alembic migration runs, up and down, on both engines
(SQLite by default, PostgreSQL 15 for a cluster)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from sluice.state.db import MIGRATIONS, open_state
from sluice.state.models import Base


def alembic(db, *step: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, step[0])(config, step[1])


def test_every_migration_runs_up_and_down_and_matches_the_models(tmp_path, state_url):
    db = open_state(tmp_path, state_url)  # up to the newest
    tables = set(sa.inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    for table in Base.metadata.tables.values():  # every column the models use is there
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns(table.name)}
        assert {c.name for c in table.columns} == columns, table.name
    alembic(db, "downgrade", "base")
    assert set(sa.inspect(db.engine).get_table_names()) <= {"alembic_version"}
    alembic(db, "upgrade", "head")
    assert set(Base.metadata.tables) <= set(sa.inspect(db.engine).get_table_names())
    db.engine.dispose()
