"""Who is asking: bearer token, HTTP Basic, or a web login cookie (with CSRF on changes)."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from ..state.users import LoginThrottle, Users

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
    def __init__(self, users: Users, throttle: LoginThrottle):
        self.users = users
        self.throttle = throttle

    def check_throttle(self, username: str, client: str) -> None:
        wait = self.throttle.retry_after(username, client)
        if wait > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too many failed logins for {username!r}: try again in {int(wait) + 1} s",
                headers={"Retry-After": str(int(wait) + 1)},
            )

    def password(self, username: str, password: str, client: str) -> Principal:
        self.check_throttle(username, client)
        user = self.users.authenticate(username, password)
        if user is None:
            self.throttle.failed(username, client)
            raise unauthorized("wrong user name or password")
        self.throttle.succeeded(username, client)
        return Principal(user.id, user.username, user.is_admin)

    def __call__(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            user = self.users.by_token(value.strip())
            if user is None:
                raise unauthorized("unknown or revoked API token")
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
