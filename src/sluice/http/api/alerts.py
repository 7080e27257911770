"""Alert definitions and alert records over HTTP (``/api/v1/alert-definitions``, ``/api/v1/alerts``).

A user sees and changes only their own definitions and alerts; an administrator may manage
anyone's (``?user=NAME`` to list them), but acknowledging stays with the owner.
Other users' objects answer 404, as if they did not exist.
"""

import time
from typing import Annotated, Literal, Optional

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from pydantic import BaseModel, Field

from ...alerts.definition import Definition, DefinitionIn, Severity
from ...alerts.engine import AlertEngine
from ...alerts.records import STATES, AlertOut, AlertStore
from ...state.users import Users
from ..auth import Principal, User
from .common import PREFIX

MAX_ID = 2**62
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
TimeMs = Annotated[Optional[int], Query(ge=0, le=2**53, description="milliseconds since the epoch")]


class DefinitionOut(Definition):
    active_entities: int = Field(0, description="entities with data in the window now")
    state_bytes: int = Field(0, description="memory the window state takes")
    spread_steps: int = Field(
        0,
        description=(
            "oldest steps of the window held as an even spread, because its past steps outgrew "
            "alerts.step_bytes_per_definition (0: the window is exact)"
        ),
    )
    cpu_seconds: float = Field(
        0.0,
        description=(
            "CPU time evaluating the definition took since the server started: its rows folded, its "
            "window slid (its entity type's rows, made once for all of the type's definitions, apart)"
        ),
    )
    status: Literal["active", "disabled", "failed"] = Field(
        "active", description="failed: set aside (the others go on) until changed or retried; see error"
    )
    error: Optional[str] = Field(None, description="why the definition failed, when it did")


class AckRequest(BaseModel):
    ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(..., min_length=1, max_length=10_000)


class AckResult(BaseModel):
    acknowledged: list[int]


def build_alerts_router(users: Users, store: AlertStore, engine: Optional[AlertEngine] = None) -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    def whose(principal: Principal, username: Optional[str]) -> int:
        """The user id a listing is about: yourself, or (administrators) anyone."""
        if not username or username == principal.username:
            return principal.user_id
        if not principal.is_admin:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only administrators may see other users' alerts")
        other = users.get(username)
        if other is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {username!r}")
        return other.id

    def out(definition: Definition) -> DefinitionOut:
        mem = engine.memory().get(f"definition:{definition.id}", 0) if engine else 0
        active = engine.active_entities(definition.id) if engine else 0
        failure = engine.failure(definition.id) if engine and definition.enabled else None
        status = "failed" if failure else ("active" if definition.enabled else "disabled")
        return DefinitionOut(
            **definition.model_dump(),
            active_entities=active,
            state_bytes=mem,
            spread_steps=engine.spread_steps(definition.id) if engine else 0,
            cpu_seconds=engine.cpu_seconds().get(f"definition:{definition.id}", 0.0) if engine else 0.0,
            status=status,
            error=failure.reason if failure else None,
        )

    def owned(principal: Principal, definition_id: int) -> Definition:
        definition = store.definition(definition_id)
        if definition is None or (definition.user_id != principal.user_id and not principal.is_admin):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert definition {definition_id}")
        return definition

    # -- definitions ----------------------------------------------------------------------

    @router.get("/alert-definitions", response_model=list[DefinitionOut], tags=["alerts"])
    def list_definitions(principal: User, user: Optional[str] = None) -> list[DefinitionOut]:
        """Your alert definitions (administrators: ``user`` names whose)."""
        return [out(definition) for definition in store.definitions(whose(principal, user))]

    @router.post("/alert-definitions", response_model=DefinitionOut, status_code=201, tags=["alerts"])
    def create_definition(body: DefinitionIn, principal: User) -> DefinitionOut:
        """Define an alert: *trigger when the number of [metric] for any one [entity]
        exceeds [threshold] over [interval]*."""
        return out(store.create(principal.user_id, body))

    @router.get("/alert-definitions/{definition_id}", response_model=DefinitionOut, tags=["alerts"])
    def get_definition(definition_id: Id, principal: User) -> DefinitionOut:
        return out(owned(principal, definition_id))

    @router.put("/alert-definitions/{definition_id}", response_model=DefinitionOut, tags=["alerts"])
    def put_definition(definition_id: Id, body: DefinitionIn, principal: User) -> DefinitionOut:
        """Replace a definition. Changing only title, description, threshold, severity or
        threshold overrides keeps its window; any other change starts the window afresh."""
        owned(principal, definition_id)
        definition = store.update(definition_id, body)
        assert definition is not None
        return out(definition)

    @router.delete("/alert-definitions/{definition_id}", status_code=204, tags=["alerts"])
    def delete_definition(definition_id: Id, principal: User) -> Response:
        """Delete a definition and its alert records."""
        owned(principal, definition_id)
        store.delete_definition(definition_id)
        return Response(status_code=204)

    # -- alert records --------------------------------------------------------------------

    @router.get("/alerts", response_model=list[AlertOut], tags=["alerts"])
    def list_alerts(
        principal: User,
        user: Optional[str] = None,
        start_ms: TimeMs = None,
        end_ms: TimeMs = None,
        min_severity: Optional[Severity] = None,
        state: Annotated[Optional[str], Query(pattern="^(NOT-ACKNOWLEDGED|ACKNOWLEDGED)$")] = None,
        definition: Annotated[Optional[int], Query(ge=1, le=MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> list[AlertOut]:
        """Alert records, the most recently triggered first."""
        assert state is None or state in STATES
        return store.alerts(
            whose(principal, user),
            None if start_ms is None else start_ms * 1000,
            None if end_ms is None else end_ms * 1000,
            min_severity,
            state,
            definition,
            limit,
        )

    @router.post("/alerts/acknowledge", response_model=AckResult, tags=["alerts"])
    def acknowledge(body: AckRequest, principal: User) -> AckResult:
        """Acknowledge your alerts; a new trigger puts one back to NOT-ACKNOWLEDGED."""
        owners = store.owner_of(body.ids)
        foreign = [i for i in body.ids if owners.get(i) != principal.user_id]
        if foreign:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"no alert(s) of yours with id {', '.join(map(str, foreign[:20]))}"
            )
        done = store.acknowledge(body.ids, principal.username, int(time.time() * 1_000_000))
        return AckResult(acknowledged=done)

    @router.delete("/alerts/{alert_id}", status_code=204, tags=["alerts"])
    def delete_alert(alert_id: Id, principal: User) -> Response:
        owner = store.owner_of([alert_id]).get(alert_id)
        if owner is None or (owner != principal.user_id and not principal.is_admin):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alert {alert_id}")
        store.delete_alerts([alert_id])
        return Response(status_code=204)

    @router.delete("/alerts", tags=["alerts"])
    def clear_alerts(
        principal: User,
        definition: Annotated[Optional[int], Query(ge=1, le=MAX_ID)] = None,
        state: Annotated[Optional[str], Query(pattern="^(NOT-ACKNOWLEDGED|ACKNOWLEDGED)$")] = None,
    ) -> dict[str, int]:
        """Clear your alerts (of one definition, or in one state)."""
        return {"deleted": store.clear(principal.user_id, definition, state)}

    return router
