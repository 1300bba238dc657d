"""/v1/credits: the balance and the ledger."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import CurrentUser, State
from api.errors import Problem
from api.routes.responses import AUTH_RESPONSES, problem_doc
from db import ledger

router = APIRouter(tags=["credits"])


class Credits(BaseModel):
    available: int = Field(description="Credits you can spend now.")
    held: int = Field(description="Credits reserved by jobs that have not finished.")


class LedgerEntry(BaseModel):
    id: int
    kind: Literal["grant", "purchase", "hold", "capture", "release", "refund", "adjustment"]
    available_delta: int
    held_delta: int
    job_id: UUID | None
    reference: str | None
    created_at: datetime


class LedgerPage(BaseModel):
    entries: list[LedgerEntry]
    next_cursor: str | None = Field(description="Pass as `cursor` for older entries; null on the last page.")


@router.get("/credits", response_model=Credits, responses=AUTH_RESPONSES)
async def get_credits(user: CurrentUser, state: State) -> Credits:
    """Your balance."""
    async with state.pool.connection() as conn:
        balance = await ledger.balance(conn, user.id)
    return Credits(available=balance.available, held=balance.held)


def _encode_cursor(entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"ledger:{entry_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        entry_id = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        entry_id = 0
        kind = ""
    if kind != "ledger" or entry_id <= 0:
        raise Problem(422, "invalid_cursor", "The cursor is not valid", "Use a `next_cursor` from a previous page.")
    return entry_id


@router.get(
    "/credits/ledger",
    response_model=LedgerPage,
    responses={**AUTH_RESPONSES, 422: problem_doc(422, "invalid_cursor", "The cursor is not valid")},
)
async def get_ledger(
    user: CurrentUser,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> LedgerPage:
    """Your ledger entries, newest first."""
    before = _decode_cursor(cursor) if cursor is not None else None
    async with state.pool.connection() as conn:
        rows = await ledger.entries(conn, user.id, before=before, limit=limit + 1)
    entries = [LedgerEntry(**row) for row in rows[:limit]]
    next_cursor = _encode_cursor(entries[-1].id) if len(rows) > limit else None
    return LedgerPage(entries=entries, next_cursor=next_cursor)
