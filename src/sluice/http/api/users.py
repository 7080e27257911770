"""Accounts (``/api/v1/users``): administrators manage them; everyone may change their own password."""

from typing import Optional

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from ...state.models import User as UserRow
from ...state.users import UserError, Users
from ..auth import Admin, User
from .common import PREFIX


class NewUser(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=1024)
    is_admin: bool = False


class UserChange(BaseModel):
    password: Optional[str] = Field(None, min_length=8, max_length=1024)
    is_admin: Optional[bool] = None


def _user_json(user: UserRow) -> dict[str, object]:
    return {"username": user.username, "is_admin": user.is_admin, "created_at": user.created_at.isoformat()}


def _refused(exc: UserError) -> HTTPException:
    code = status.HTTP_404_NOT_FOUND if str(exc).startswith("no user") else status.HTTP_409_CONFLICT
    return HTTPException(code, str(exc))


def build_users_router(users: Users) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["users"])

    @router.get("/users")
    def list_users(principal: Admin) -> list[dict[str, object]]:
        return [_user_json(user) for user in users.all()]

    @router.post("/users", status_code=201)
    def create_user(body: NewUser, principal: Admin) -> dict[str, object]:
        try:
            return _user_json(users.create(body.username, body.password, body.is_admin))
        except UserError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    @router.patch("/users/{username}")
    def change_user(username: str, body: UserChange, principal: User) -> dict[str, object]:
        own = username == principal.username
        if not principal.is_admin and (not own or body.is_admin is not None):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "you may change only your own password")
        if users.get(username) is None:  # found by schemathesis: a change of nobody was a 500
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {username!r}")
        try:
            if body.password is not None:
                users.set_password(username, body.password)
            if body.is_admin is not None:
                users.set_admin(username, body.is_admin)
        except UserError as exc:
            raise _refused(exc) from None
        user = users.get(username)
        assert user is not None
        return _user_json(user)

    @router.delete("/users/{username}", status_code=204)
    def delete_user(username: str, principal: Admin) -> Response:
        try:
            users.delete(username)
        except UserError as exc:
            raise _refused(exc) from None
        return Response(status_code=204)

    return router
