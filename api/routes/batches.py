"""The batches surface, HTTP only: POST /v1/batches, GET /v1/batches/{id} (see `api.jobs.batches`)."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, State
from api.errors import Problem
from api.jobs.batches import BatchCreate, batch_resource, create_batch
from api.routes.responses import AUTH_RESPONSES, SPEND_RESPONSES, problem_doc

router = APIRouter(prefix="/batches", tags=["batches"])

_NOT_FOUND = {404: problem_doc(404, "batch_not_found", "No such batch for this user")}


@router.post(
    "",
    status_code=202,
    summary="Submit a batch of jobs",
    responses={
        **AUTH_RESPONSES,
        **SPEND_RESPONSES,
        422: problem_doc(422, "invalid_params", "An item is invalid (`item_index` names it); nothing was charged"),
    },
)
async def submit_batch(body: BatchCreate, user: CurrentUser, state: State) -> JSONResponse:
    """Every item validated, priced and held in one transaction, or none (402 for the whole batch)."""
    resource = await create_batch(state, user.id, body, api_key_id=user.api_key_id)
    return JSONResponse(resource, status_code=202, headers={"Location": resource["links"]["self"]})


@router.get(
    "/{batch_id}", summary="A batch, with its items counted by status", responses={**AUTH_RESPONSES, **_NOT_FOUND}
)
async def get_batch(batch_id: str, user: CurrentUser, state: State) -> JSONResponse:
    try:
        parsed = UUID(batch_id)
    except ValueError:
        raise Problem(404, "batch_not_found", "Batch not found", "No batch with this id belongs to you.") from None
    return JSONResponse(await batch_resource(state, parsed, user.id))
