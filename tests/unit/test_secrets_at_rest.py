"""Secrets readable by every local user: the data directory is the owner's alone (0700, files
0600), and the SMTP password and webhook secrets are sealed in the state database under a key
file kept outside it."""

import os
import sqlite3
import stat

import pytest

from sluice.datadir import make_private
from sluice.state.db import open_state
from sluice.state.preferences import Preferences, PreferencesIn, SystemSettingsIn
from sluice.state.secrets import SecretBox, SecretUnreadable
from sluice.state.users import Users


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_data_directory_is_private_and_stays_so(tmp_path):
    data = tmp_path / "var"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "old.db").write_text("x")
    (data / "old.db").chmod(0o644)
    (data / "sessions").mkdir()
    (data / "sessions").chmod(0o755)
    old_umask = os.umask(0o022)
    try:
        assert make_private(data) == 3
        assert (mode(data), mode(data / "old.db"), mode(data / "sessions")) == (0o700, 0o600, 0o700)
        Users(open_state(data)).create("alice", "alice-password")
        assert mode(data / "state.db") == 0o600 and mode(data / "secret.key") == 0o600
        (data / "new-file").write_text("y")  # anything made later by the process
        assert mode(data / "new-file") == 0o600
    finally:
        os.umask(old_umask)


def test_secrets_are_sealed_in_the_database_and_open_for_delivery(tmp_path):
    db = open_state(tmp_path)
    prefs = Preferences(db)
    alice = Users(db).create("alice", "alice-password")
    prefs.set_system(SystemSettingsIn(smtp_host="mail.example.org", smtp_username="u", smtp_password="smtp-S3cret"))
    prefs.set_user(alice.id, PreferencesIn(webhook_url="https://hooks.example.org/x", webhook_secret="hook-S3cret"))
    raw = sqlite3.connect(tmp_path / "state.db")
    [(smtp,)] = raw.execute("SELECT smtp_password FROM system_settings").fetchall()
    [(hook,)] = raw.execute("SELECT webhook_secret FROM user_preferences").fetchall()
    assert smtp.startswith("enc1:") and hook.startswith("enc1:") and "S3cret" not in smtp + hook
    assert prefs.system().smtp_password == "smtp-S3cret"  # opened for use
    assert prefs.system_out(prefs.system()).smtp_password_set
    from sluice.notify.outbox import Outbox

    got, system = Outbox(db, []).context(alice.id)
    assert (got.webhook_secret, system.smtp_password) == ("hook-S3cret", "smtp-S3cret")
    [(again,)] = raw.execute("SELECT smtp_password FROM system_settings").fetchall()
    assert again == smtp  # reading did not write the opened value back
    # an earlier version's clear value is sealed at the next start
    raw.execute("UPDATE system_settings SET smtp_password = 'clear-one'")
    raw.commit()
    db2 = open_state(tmp_path)
    [(now,)] = raw.execute("SELECT smtp_password FROM system_settings").fetchall()
    assert now.startswith("enc1:") and Preferences(db2).system().smtp_password == "clear-one"
    # another key cannot open them: said in one line
    other = open_state(tmp_path, key_file=tmp_path / "other.key")
    with pytest.raises(SecretUnreadable, match="same key file"):
        Preferences(other).system()
    raw.close()


def test_a_key_file_that_is_not_a_key_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "secret.key").write_text("hello")
    with pytest.raises(ValueError, match="not a key written by Sluice"):
        SecretBox.from_file(tmp_path / "secret.key")
