"""The batches surface, HTTP only: POST /v1/batches, GET /v1/batches[/{id}], GET /v1/batches/{id}/jobs,
POST /v1/batches/{id}/cancel. The work is in `api.jobs.batches`."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, State
from api.errors import Problem
from api.jobs import cancel, idempotency
from api.jobs.batches import (
    BatchCreate,
    BatchOut,
    BatchQuote,
    batch_resource,
    cancel_batch,
    not_found,
    quote_batch,
    submit_batch_once,
)
from api.jobs.request import invalid
from api.jobs.view import batch_resource as batch_view
from api.jobs.view import job_resource
from api.routes.jobs import decode_cursor, encode_cursor
from api.routes.responses import AUTH_RESPONSES, SPEND_RESPONSES, problem_doc
from db import batches as db_batches
from db import jobs as db_jobs

router = APIRouter(prefix="/batches", tags=["batches"])

_NOT_FOUND = {404: problem_doc(404, "batch_not_found", "No such batch for this user")}


def _batch_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise not_found() from None


@router.post(
    "",
    status_code=202,
    summary="Submit a batch of jobs",
    responses={
        200: {"model": BatchQuote, "description": "`?dry_run=true`: the whole batch priced, nothing held."},
        202: {"model": BatchOut, "description": "Accepted: every item held and queued or started."},
        **AUTH_RESPONSES,
        **SPEND_RESPONSES,
        409: problem_doc(409, "idempotency_in_flight", "A request with this Idempotency-Key is in progress"),
        422: problem_doc(422, "invalid_params", "An item is invalid (`item_index` names it); nothing was charged"),
    },
)
async def submit_batch(
    body: BatchCreate,
    user: CurrentUser,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    dry_run: Annotated[
        bool, Query(description="Price the whole batch (200, `batch_quote`): validated and probed, nothing held.")
    ] = False,
) -> JSONResponse:
    """Every item validated, priced and held in one transaction, or none (402 for the whole batch)."""
    if dry_run:
        return JSONResponse(await quote_batch(state, user.id, body))
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    submitted = await submit_batch_once(state, user.id, body, key, api_key_id=user.api_key_id)
    headers = {"Location": submitted.body["links"]["self"]}
    if submitted.replayed:
        headers[idempotency.REPLAY_HEADER] = "true"
    return JSONResponse(submitted.body, status_code=submitted.status, headers=headers)


@router.get("", summary="Your batches, newest first", responses=AUTH_RESPONSES)
async def list_batches(
    user: CurrentUser,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JSONResponse:
    after = decode_cursor(cursor) if cursor else None
    async with state.pool.connection() as conn:
        rows = await db_batches.list_batches(conn, user.id, limit=limit + 1, after=after)
        page, more = rows[:limit], len(rows) > limit
        data = [batch_view(row, await db_batches.status_counts(conn, row["id"])) for row in page]
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return JSONResponse({"object": "list", "data": data, "has_more": more, "next_cursor": next_cursor})


@router.get(
    "/{batch_id}",
    summary="A batch, with its items counted by status",
    responses={200: {"model": BatchOut}, **AUTH_RESPONSES, **_NOT_FOUND},
)
async def get_batch(batch_id: str, user: CurrentUser, state: State) -> JSONResponse:
    return JSONResponse(await batch_resource(state, _batch_id(batch_id), user.id))


@router.get("/{batch_id}/jobs", summary="A batch's jobs in item order", responses={**AUTH_RESPONSES, **_NOT_FOUND})
async def list_batch_jobs(
    batch_id: str,
    user: CurrentUser,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JSONResponse:
    parsed = _batch_id(batch_id)
    after: int | None = None
    if cursor is not None:
        if not cursor.isdecimal():
            raise invalid("invalid_cursor", "Invalid cursor", "Pass `next_cursor` from a previous page.")
        after = int(cursor)
    async with state.pool.connection() as conn:
        if await db_batches.get_batch(conn, parsed, user.id) is None:
            raise not_found()
        rows = await db_jobs.jobs_of_batch(conn, parsed, limit=limit + 1, after_index=after)
    page, more = rows[:limit], len(rows) > limit
    data: list[dict[str, Any]] = [{**job_resource(row), "batch_index": row["batch_index"]} for row in page]
    next_cursor = str(page[-1]["batch_index"]) if more else None
    return JSONResponse({"object": "list", "data": data, "has_more": more, "next_cursor": next_cursor})


@router.post(
    "/{batch_id}/cancel",
    summary="Cancel every unfinished item",
    responses={200: {"model": BatchOut}, **AUTH_RESPONSES, **_NOT_FOUND},
)
async def cancel_all(batch_id: str, user: CurrentUser, state: State) -> JSONResponse:
    """Queued items: canceled and released now. Running items: signalled; they end canceled."""
    try:
        return JSONResponse(await cancel_batch(state, _batch_id(batch_id), user.id))
    except cancel.CancelRaced as exc:
        raise Problem(
            409, "conflict", "An item is changing state", "Retry the cancel.", headers={"Retry-After": "1"}
        ) from exc
