"""Users, passwords (argon2), API tokens, web login sessions and login throttling."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select

from .db import StateDB
from .models import ApiToken, LoginSession, User

_hasher = PasswordHasher()
# verified against when a user does not exist, so both cases take the same time
_DUMMY_HASH = _hasher.hash("not a real password")
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
LOGIN_HOURS = 12


class UserError(ValueError):
    """A user operation that cannot be done, with a message that says why."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_username(name: str) -> str:
    if not USERNAME.match(name or ""):
        raise UserError("a username is 1-64 letters, digits or . _ @ -")
    return name


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise UserError("a password may have at most 1024 characters")
    return password


class Users:
    def __init__(self, db: StateDB):
        self.db = db

    # -- accounts --------------------------------------------------------------------------

    def create(self, username: str, password: str, is_admin: bool = False) -> User:
        check_username(username)
        check_password(password)
        with self.db.session() as session:
            if session.scalar(select(User).where(User.username == username)) is not None:
                raise UserError(f"user {username!r} already exists")
            user = User(username=username, password_hash=_hasher.hash(password), is_admin=is_admin)
            session.add(user)
        return user

    def get(self, username: str) -> User | None:
        with self.db.session() as session:
            return session.scalar(select(User).where(User.username == username))

    def by_id(self, user_id: int) -> User | None:
        with self.db.session() as session:
            return session.get(User, user_id)

    def all(self) -> list[User]:
        with self.db.session() as session:
            return list(session.scalars(select(User).order_by(User.username)))

    def authenticate(self, username: str, password: str) -> User | None:
        user = self.get(username) if isinstance(username, str) else None
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password or "")
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            self.set_password(username, password)
        return user

    def set_password(self, username: str, password: str) -> None:
        check_password(password)
        with self.db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise UserError(f"no user {username!r}")
            user.password_hash = _hasher.hash(password)
            session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))  # log out everywhere

    def set_admin(self, username: str, is_admin: bool) -> User:
        with self.db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise UserError(f"no user {username!r}")
            if user.is_admin and not is_admin and self._admins(session) <= 1:
                raise UserError(f"{username!r} is the last administrator: make another user administrator first")
            user.is_admin = is_admin
            return user

    def delete(self, username: str) -> None:
        with self.db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise UserError(f"no user {username!r}")
            if user.is_admin and self._admins(session) <= 1:
                raise UserError(f"{username!r} is the last administrator and cannot be deleted")
            session.delete(user)

    @staticmethod
    def _admins(session) -> int:
        return int(session.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True))))

    def ensure_admin(self, password: str | None) -> str | None:
        """On first start, create ``admin``. Returns the password when one was generated."""
        with self.db.session() as session:
            if session.scalar(select(func.count()).select_from(User)):
                return None
        generated = None
        if not password:
            password = generated = secrets.token_urlsafe(12)
        self.create("admin", password, is_admin=True)
        return generated

    # -- API tokens ------------------------------------------------------------------------

    def create_token(self, username: str, name: str = "cli") -> str:
        token = "sl_" + secrets.token_urlsafe(32)
        with self.db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise UserError(f"no user {username!r}")
            session.add(ApiToken(user_id=user.id, name=name[:64], token_hash=_sha(token)))
        return token

    def by_token(self, token: str) -> User | None:
        with self.db.session() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _sha(token)))
            return session.get(User, row.user_id) if row else None

    # -- web login sessions ----------------------------------------------------------------

    def login(self, user: User) -> tuple[str, str]:
        """A new login session: (cookie value, CSRF token)."""
        session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.db.session() as session:
            session.add(
                LoginSession(
                    id_hash=_sha(session_id),
                    user_id=user.id,
                    csrf_token=csrf,
                    expires_at=datetime.now(UTC) + timedelta(hours=LOGIN_HOURS),
                )
            )
        return session_id, csrf

    def by_login(self, session_id: str) -> tuple[User, str] | None:
        """The user and CSRF token of a live login session."""
        with self.db.session() as session:
            row = session.get(LoginSession, _sha(session_id))
            if row is None:
                return None
            expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
            if expires < datetime.now(UTC):
                session.delete(row)
                return None
            user = session.get(User, row.user_id)
            return (user, row.csrf_token) if user else None

    def logout(self, session_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(LoginSession).where(LoginSession.id_hash == _sha(session_id)))


class LoginThrottle:
    """At most ``attempts`` failed logins per (user name, client) in ``window_s``; then wait."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0):
        self.attempts = attempts
        self.window_s = window_s
        self._failures: defaultdict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def retry_after(self, username: str, client: str) -> float:
        """Seconds to wait before another attempt is allowed (0: go ahead)."""
        with self._lock:
            failures = self._failures.get((username, client))
            if not failures:
                return 0.0
            now = time.monotonic()
            while failures and now - failures[0] > self.window_s:
                failures.popleft()
            if len(failures) < self.attempts:
                return 0.0
            return max(0.0, self.window_s - (now - failures[0]))

    def failed(self, username: str, client: str) -> None:
        with self._lock:
            if len(self._failures) > 100_000:  # bounded under a spraying attack
                self._failures.clear()
            self._failures[(username, client)].append(time.monotonic())

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username, client), None)
