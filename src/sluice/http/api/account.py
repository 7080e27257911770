"""Signing in and out, who you are, and API tokens (``/api/v1/login``, ``/me``, ``/tokens``)."""

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

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


class TokenResult(BaseModel):
    token: str


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
        return TokenResult(token=users.create_token(principal.username, body.name))

    return router
