"""Who is asking: bearer token, HTTP Basic, or a web login cookie (with CSRF on changes)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from ..state.users import LoginThrottle, Users

#: password checks (argon2, 64 MiB each) running at once at most; more wait for a turn
CONCURRENT_CHECKS = max(2, min(4, os.cpu_count() or 2))
#: how long a request waits for a turn before it is told to come back (503)
CHECK_WAIT_S = 10.0
#: a password checked once is taken as right for this long (scripts send it with each request)
VERIFIED_TTL_S = 60.0
VERIFIED_MAX = 10_000

COOKIE = "sluice_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@dataclass
class Principal:
    user_id: int
    username: str
    is_admin: bool


def unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": 'Basic realm="sluice", charset="UTF-8"'}
    )


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class Authenticator:
    """Checks passwords (argon2: 64 MiB and a few tens of ms each) with a bound on how many
    run at once, remembers rightly checked ones for ``VERIFIED_TTL_S`` (keyed by a keyed hash,
    never the password itself), and throttles failures per user name and client address and
    per client address."""

    def __init__(self, users: Users, throttle: LoginThrottle):
        self.users = users
        self.throttle = throttle
        self._turns = threading.BoundedSemaphore(CONCURRENT_CHECKS)
        self._key = secrets.token_bytes(32)  # this process's: the cache means nothing elsewhere
        self._verified: dict[bytes, tuple[int, str, float]] = {}  # key -> (user id, its hash, until)
        self._verified_lock = threading.Lock()

    def check_throttle(self, username: str, client: str) -> None:
        for wait, whose in (
            (self.throttle.retry_after(username, client), f"for {username!r}"),
            (self.throttle.client_retry_after(client), f"from {client}"),
        ):
            if wait > 0:
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"too many failed logins {whose}: try again in {int(wait) + 1} s",
                    headers={"Retry-After": str(int(wait) + 1)},
                )

    def password(self, username: str, password: str, client: str) -> Principal:
        key = hmac.new(self._key, f"{username}\0{password}".encode(), hashlib.sha256).digest()
        remembered = self._remembered(key)
        if remembered is not None:
            return remembered
        self.check_throttle(username, client)
        if not self._turns.acquire(timeout=CHECK_WAIT_S):
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "too many logins are being checked at once: try again in a few seconds",
                headers={"Retry-After": "2"},
            )
        try:
            user = self.users.authenticate(username, password)
        finally:
            self._turns.release()
        if user is None:
            self.throttle.failed(username, client)
            raise unauthorized("wrong user name or password")
        self.throttle.succeeded(username, client)
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            self._verified[key] = (user.id, user.password_hash, time.monotonic() + VERIFIED_TTL_S)
        return Principal(user.id, user.username, user.is_admin)

    def _remembered(self, key: bytes) -> Principal | None:
        """The user of a password checked within ``VERIFIED_TTL_S`` whose password has not
        changed since (a change on another server sharing the database counts too)."""
        with self._verified_lock:
            entry = self._verified.get(key)
        if entry is None:
            return None
        user_id, password_hash, until = entry
        user = self.users.by_id(user_id) if time.monotonic() < until else None
        if user is None or user.password_hash != password_hash:
            with self._verified_lock:
                self._verified.pop(key, None)
            return None
        return Principal(user.id, user.username, user.is_admin)

    def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            user = self.users.by_token(value.strip())
            if user is None:
                raise unauthorized("unknown, expired or revoked API token")
            return Principal(user.id, user.username, user.is_admin)
        if scheme.lower() == "basic" and value:
            try:
                username, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise unauthorized("malformed HTTP Basic credentials") from None
            return self.password(username, password, client_of(request))
        cookie = request.cookies.get(COOKIE)
        if cookie:
            found = self.users.by_login(cookie)
            if found is None:
                raise unauthorized("your login has expired: log in again")
            user, csrf = found
            if request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER, "")
                if not secrets.compare_digest(sent, csrf):
                    raise HTTPException(
                        status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER} header (given at login)"
                    )
            return Principal(user.id, user.username, user.is_admin)
        raise unauthorized("authentication required: log in, or send HTTP Basic credentials or a bearer token")


def require_admin(principal: Principal) -> Principal:
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an administrator")
    return principal


def signed_in(request: Request) -> Principal:
    """The caller, by the application's ``Authenticator`` (``app.state.auth``, set by ``create_app``)."""
    authenticator: Authenticator = request.app.state.auth
    return authenticator(request)


def administrator(principal: Principal = Depends(signed_in)) -> Principal:
    return require_admin(principal)


#: a route's caller, as a parameter type: ``principal: User`` (any signed-in user) or ``principal: Admin``
User = Annotated[Principal, Depends(signed_in)]
Admin = Annotated[Principal, Depends(administrator)]
