"""Signing in and out, who you are, and API tokens (``/api/v1/login``, ``/me``, ``/tokens``)."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from pydantic import BaseModel, Field

from ...state.models import as_utc
from ...state.users import Users
from ..auth import COOKIE, Authenticator, User, client_of
from .common import PREFIX


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginResult(BaseModel):
    username: str
    is_admin: bool
    csrf_token: str = Field(description="send it back as X-CSRF-Token with every change made with the cookie")


class Me(BaseModel):
    username: str
    is_admin: bool


class TokenRequest(BaseModel):
    name: str = Field("cli", min_length=1, max_length=64)
    expires_in_days: float | None = Field(
        None, gt=0, le=3650, description="the token stops working after this many days (none: when revoked)"
    )


class TokenResult(BaseModel):
    token: str = Field(description="shown this once: only its hash is kept")
    id: int
    expires_at: datetime | None


class TokenInfo(BaseModel):
    id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="to the minute")
    expired: bool


def build_account_router(users: Users, auth: Authenticator, secure_cookies: bool = False) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["auth"])

    @router.post("/login", response_model=LoginResult)
    def login(credentials: Credentials, request: Request, response: Response) -> LoginResult:
        principal = auth.password(credentials.username, credentials.password, client_of(request))
        user = users.by_id(principal.user_id)
        assert user is not None
        session_id, csrf = users.login(user)
        response.set_cookie(
            COOKIE, session_id, httponly=True, samesite="strict", secure=secure_cookies, max_age=12 * 3600, path="/"
        )
        return LoginResult(username=user.username, is_admin=user.is_admin, csrf_token=csrf)

    @router.post("/logout", status_code=204)
    def logout(request: Request, response: Response, principal: User) -> Response:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            users.logout(cookie)
        response.delete_cookie(COOKIE, path="/")
        response.status_code = 204
        return response

    @router.get("/me", response_model=Me)
    def me(principal: User) -> Me:
        return Me(username=principal.username, is_admin=principal.is_admin)

    @router.post("/tokens", response_model=TokenResult)
    def new_token(body: TokenRequest, principal: User) -> TokenResult:
        """A bearer token for scripts; it ends when it expires, is revoked, or the password changes."""
        token, row = users.create_token(principal.username, body.name, body.expires_in_days)
        return TokenResult(token=token, id=row.id, expires_at=as_utc(row.expires_at) if row.expires_at else None)

    @router.get("/tokens", response_model=list[TokenInfo])
    def list_tokens(principal: User) -> list[TokenInfo]:
        """Your API tokens (never the tokens themselves)."""
        now = datetime.now(UTC)
        return [
            TokenInfo(
                id=t.id,
                name=t.name,
                created_at=as_utc(t.created_at),
                expires_at=as_utc(t.expires_at) if t.expires_at else None,
                last_used_at=as_utc(t.last_used_at) if t.last_used_at else None,
                expired=t.expires_at is not None and as_utc(t.expires_at) <= now,
            )
            for t in users.tokens(principal.user_id)
        ]

    @router.delete("/tokens/{token_id}", status_code=204)
    def revoke_token(token_id: Annotated[int, Path(ge=1, le=2**63 - 1)], principal: User) -> Response:
        """Revoke one of your tokens: it stops working at once."""
        if not users.revoke_token(principal.user_id, token_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"you have no API token {token_id}")
        return Response(status_code=204)

    return router
