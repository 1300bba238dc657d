"""/v1/api-keys: create, list and revoke personal API keys."""

from __future__ import annotations

import secrets
from datetime import datetime
from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, field_validator

from api.deps import CurrentUser, State
from api.errors import Problem
from api.routes.responses import AUTH_RESPONSES, problem_doc
from api.security import API_KEY_PREFIX, API_KEY_SHOWN_PREFIX, key_hash
from db import api_keys as db_api_keys

router = APIRouter(tags=["api-keys"])


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="A label to tell your keys apart.")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("name must be non-empty printable text")
        return value


class ApiKeyInfo(BaseModel):
    id: UUID
    name: str
    prefix: str = Field(description="The key's first characters.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")


class ApiKeyCreated(ApiKeyInfo):
    key: str = Field(description="The secret key. Shown only in this response: store it now.")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyInfo]


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, responses=AUTH_RESPONSES)
async def create_api_key(body: ApiKeyCreate, user: CurrentUser, state: State) -> ApiKeyCreated:
    """Create a personal API key. The key is in this response only; we keep just its SHA-256."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    async with state.pool.connection() as conn:
        info = await db_api_keys.create(conn, user.id, body.name, key[:API_KEY_SHOWN_PREFIX], key_hash(key))
    return ApiKeyCreated(key=key, **info)


@router.get("/api-keys", response_model=ApiKeyList, responses=AUTH_RESPONSES)
async def list_api_keys(user: CurrentUser, state: State) -> ApiKeyList:
    """Your active API keys, newest first (never the keys themselves)."""
    async with state.pool.connection() as conn:
        keys = await db_api_keys.list_live(conn, user.id)
    return ApiKeyList(keys=[ApiKeyInfo(**info) for info in keys])


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
    response_class=Response,
    responses={**AUTH_RESPONSES, 404: problem_doc(404, "not_found", "No such API key")},
)
async def revoke_api_key(key_id: UUID, user: CurrentUser, state: State) -> Response:
    """Revoke an API key: it stops working at once. Revoking an already revoked key is a no-op."""
    async with state.pool.connection() as conn:
        if not await db_api_keys.revoke(conn, key_id, user.id):
            raise Problem(404, "not_found", "No such API key")
    return Response(status_code=204)
