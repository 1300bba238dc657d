"""/v1/api-keys: create, list, edit (name, spend caps, allowed tasks) and revoke personal API keys."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.deps import CurrentUser, State
from api.errors import Problem
from api.routes.responses import AUTH_RESPONSES, problem_doc
from api.security import API_KEY_PREFIX, API_KEY_SHOWN_PREFIX, key_hash
from db import api_keys as db_api_keys
from inference.registry import TaskName

router = APIRouter(tags=["api-keys"])

MAX_CREDIT_CAP = 10**12
CreditCap = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_CREDIT_CAP,
        description="Credits this key may have held or spent per period (UTC); null: no cap. Held counts, released"
        " does not, so racing submits cannot pass it.",
    ),
]
AllowedTasks = Annotated[
    list[TaskName] | None,
    Field(min_length=1, description="The tasks this key may submit; null: every task."),
]
# No control characters and at least one visible one: the label is shown in lists and tables. A pattern rather than a
# validator, so the OpenAPI document states exactly what is accepted.
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
Name = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=NAME_PATTERN, description="A label to tell your keys apart."),
]


def _strip(value: str) -> str:
    return value.strip()


def _distinct_tasks(value: list[TaskName] | None) -> list[TaskName] | None:
    return None if value is None else list(dict.fromkeys(value))


class ApiKeyCreate(BaseModel):
    name: Name
    daily_credit_cap: CreditCap = None
    monthly_credit_cap: CreditCap = None
    allowed_tasks: AllowedTasks = None

    _name = field_validator("name")(_strip)
    _tasks = field_validator("allowed_tasks")(_distinct_tasks)


class ApiKeyUpdate(BaseModel):
    """Only the fields sent change (at least one); `null` clears a cap or the task list, never the name."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    name: Name = None  # type: ignore[assignment]  # absent means unchanged; null is refused by the type
    daily_credit_cap: CreditCap = None
    monthly_credit_cap: CreditCap = None
    allowed_tasks: AllowedTasks = None

    _name = field_validator("name")(_strip)
    _tasks = field_validator("allowed_tasks")(_distinct_tasks)


class ApiKeyInfo(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    daily_credit_cap: int | None = Field(description="Credits per UTC day; null: no cap.")
    monthly_credit_cap: int | None = Field(description="Credits per UTC calendar month; null: no cap.")
    allowed_tasks: list[str] | None = Field(description="Tasks the key may submit; null: every task.")


class ApiKeyCreated(ApiKeyInfo):
    key: str = Field(description="The secret key. Shown only in this response: store it now.")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyInfo]


_NOT_FOUND = {404: problem_doc(404, "not_found", "No such API key")}
_INVALID = {422: problem_doc(422, "invalid_request", "Invalid name, cap or task")}


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, responses={**AUTH_RESPONSES, **_INVALID})
async def create_api_key(body: ApiKeyCreate, user: CurrentUser, state: State) -> ApiKeyCreated:
    """Create a personal API key, optionally with spend caps and allowed tasks. The key is in this response only; we
    keep just its SHA-256."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    async with state.pool.connection() as conn:
        info = await db_api_keys.create(
            conn,
            user.id,
            body.name,
            key[:API_KEY_SHOWN_PREFIX],
            key_hash(key),
            daily_credit_cap=body.daily_credit_cap,
            monthly_credit_cap=body.monthly_credit_cap,
            allowed_tasks=None if body.allowed_tasks is None else [str(task) for task in body.allowed_tasks],
        )
    return ApiKeyCreated(key=key, **info)


@router.get("/api-keys", response_model=ApiKeyList, responses=AUTH_RESPONSES)
async def list_api_keys(user: CurrentUser, state: State) -> ApiKeyList:
    """Your active API keys, newest first (never the keys themselves)."""
    async with state.pool.connection() as conn:
        keys = await db_api_keys.list_live(conn, user.id)
    return ApiKeyList(keys=[ApiKeyInfo(**info) for info in keys])


@router.patch("/api-keys/{key_id}", response_model=ApiKeyInfo, responses={**AUTH_RESPONSES, **_NOT_FOUND, **_INVALID})
async def update_api_key(key_id: UUID, body: ApiKeyUpdate, user: CurrentUser, state: State) -> ApiKeyInfo:
    """Rename a live key or change its spend caps and allowed tasks; the next submit through it obeys them."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise Problem(422, "invalid_request", "Nothing to change", "Send at least one field to change.")
    if changes.get("allowed_tasks") is not None:
        changes["allowed_tasks"] = [str(task) for task in changes["allowed_tasks"]]
    async with state.pool.connection() as conn:
        info = await db_api_keys.update(conn, key_id, user.id, changes)
    if info is None:
        raise Problem(404, "not_found", "No such API key")
    return ApiKeyInfo(**info)


@router.delete(
    "/api-keys/{key_id}", status_code=204, response_class=Response, responses={**AUTH_RESPONSES, **_NOT_FOUND}
)
async def revoke_api_key(key_id: UUID, user: CurrentUser, state: State) -> Response:
    """Revoke an API key: it stops working at once. Revoking an already revoked key is a no-op."""
    async with state.pool.connection() as conn:
        if not await db_api_keys.revoke(conn, key_id, user.id):
            raise Problem(404, "not_found", "No such API key")
    return Response(status_code=204)
