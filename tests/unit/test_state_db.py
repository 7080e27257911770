"""The state database's schema: every Alembic migration runs, up and down, on both engines
(SQLite by default, PostgreSQL 15 for a cluster)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from sluice.state.db import MIGRATIONS, open_state
from sluice.http.web.dashboards import DEFAULT, Dashboards, Layout
from sluice.state.models import Base, DashboardRow, SystemSettings, UserPreferences
from sluice.state.preferences import Preferences, PreferencesIn, SystemSettingsIn
from sluice.state.users import Users


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


@pytest.mark.parametrize("kind", ["system settings", "user preferences", "dashboard"])
def test_a_first_save_that_races_another_first_save_succeeds(tmp_path, state_url, kind):
    """Two requests (or a request and a background reader, as the retention task was) each
    found no row and inserted one: the second failed on the primary key with a 500."""
    db = open_state(tmp_path, state_url)
    prefs = Preferences(db)
    user = Users(db).create("alice", "correct horse battery")
    if kind == "system settings":
        first, save = SystemSettings(id=1, smtp_host="a.example.org"), lambda: prefs.set_system(
            SystemSettingsIn(smtp_host="b.example.org", smtp_from="sluice@example.org")
        )
    elif kind == "user preferences":
        first, save = UserPreferences(user_id=user.id, email_to="a@example.org"), lambda: prefs.set_user(
            user.id, PreferencesIn(email_to="b@example.org")
        )
    else:
        first = DashboardRow(user_id=user.id, layout=Layout().model_dump_json())
        save = lambda: Dashboards(db).put(user.id, DEFAULT)  # noqa: E731
    with ThreadPoolExecutor(1) as pool:
        with db.session() as other:  # the other first save, not committed yet
            other.add(first)
            other.flush()
            later = pool.submit(save)
            time.sleep(1.0)  # the later save has looked for the row and found none
        later.result(timeout=30)
    if kind == "system settings":
        assert prefs.system().smtp_host == "b.example.org"
    elif kind == "user preferences":
        assert prefs.user(user.id).email_to == "b@example.org"
    else:
        assert Dashboards(db).get(user.id) == DEFAULT
    db.engine.dispose()


def test_reading_the_settings_writes_nothing(tmp_path, state_url):
    db = open_state(tmp_path, state_url)
    assert Preferences(db).system().smtp_port == 25  # the defaults, before any save
    with db.session() as session:
        assert session.get(SystemSettings, 1) is None
    db.engine.dispose()
