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
from .models import ApiToken, LoginSession, User, as_utc

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
            # log out everywhere, and void the API tokens: a password reset ends every way in
            session.execute(delete(LoginSession).where(LoginSession.user_id == user.id))
            session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))

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

    def create_token(
        self, username: str, name: str = "cli", expires_in_days: float | None = None
    ) -> tuple[str, ApiToken]:
        """A new bearer token (shown once: only its hash is kept) and its record;
        ``expires_in_days`` None: until revoked or the password changes."""
        token = "sl_" + secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
        with self.db.session() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                raise UserError(f"no user {username!r}")
            row = ApiToken(user_id=user.id, name=name[:64], token_hash=_sha(token), expires_at=expires)
            session.add(row)
            session.flush()  # its id
        return token, row

    def tokens(self, user_id: int) -> list[ApiToken]:
        """The user's tokens, newest first (expired ones included, marked by their time)."""
        with self.db.session() as session:
            rows = session.scalars(
                select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc())
            ).all()
            session.expunge_all()
            return list(rows)

    def revoke_token(self, user_id: int, token_id: int) -> bool:
        """Delete one of the user's tokens; False if the user has no such token."""
        with self.db.session() as session:
            done = session.execute(delete(ApiToken).where(ApiToken.user_id == user_id, ApiToken.id == token_id))
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def by_token(self, token: str) -> User | None:
        with self.db.session() as session:
            row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _sha(token)))
            if row is None:
                return None
            now = datetime.now(UTC)
            if row.expires_at is not None and as_utc(row.expires_at) <= now:
                return None
            # when it was last used, to the minute (not a write per request)
            if row.last_used_at is None or now - as_utc(row.last_used_at) > timedelta(minutes=1):
                row.last_used_at = now
            return session.get(User, row.user_id)

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
            if as_utc(row.expires_at) < datetime.now(UTC):
                session.delete(row)
                return None
            user = session.get(User, row.user_id)
            return (user, row.csrf_token) if user else None

    def logout(self, session_id: str) -> None:
        with self.db.session() as session:
            session.execute(delete(LoginSession).where(LoginSession.id_hash == _sha(session_id)))


class LoginThrottle:
    """At most ``attempts`` failed logins per (user name, client) in ``window_s``, and at most
    ``client_attempts`` per client whatever the names (made-up names cost a password check
    each too); then wait. A user is never locked out from the other addresses."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0, client_attempts: int = 30):
        self.attempts = attempts
        self.client_attempts = client_attempts
        self.window_s = window_s
        self._failures: defaultdict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._by_client: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _wait(self, failures: deque[float] | None, attempts: int) -> float:
        if not failures:
            return 0.0
        now = time.monotonic()
        while failures and now - failures[0] > self.window_s:
            failures.popleft()
        if len(failures) < attempts:
            return 0.0
        return max(0.0, self.window_s - (now - failures[-attempts]))

    def retry_after(self, username: str, client: str) -> float:
        """Seconds to wait before another attempt is allowed (0: go ahead)."""
        with self._lock:
            return self._wait(self._failures.get((username, client)), self.attempts)

    def client_retry_after(self, client: str) -> float:
        """Seconds the client waits before another attempt with any name."""
        with self._lock:
            return self._wait(self._by_client.get(client), self.client_attempts)

    def failed(self, username: str, client: str) -> None:
        with self._lock:
            if len(self._failures) > 100_000 or len(self._by_client) > 100_000:  # bounded under a spraying attack
                self._failures.clear()
                self._by_client.clear()
            now = time.monotonic()
            self._failures[(username, client)].append(now)
            by_client = self._by_client[client]
            by_client.append(now)
            while len(by_client) > self.client_attempts:
                by_client.popleft()

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username, client), None)
