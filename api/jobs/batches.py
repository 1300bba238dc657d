"""Batches: one task, shared params, up to MAX_ITEMS items, held all together or not at all.

Each item is validated exactly as a single submit (`api.jobs.request.validate`), then received, probed, priced and
stored (`api.jobs.submit.prepare_job`); a bad item fails the whole batch with 422 naming its index, and whatever
the earlier items stored is deleted. Then ONE transaction inserts the batch row and every item's job and hold
(`api.jobs.submit.insert_prepared`, per-key caps counted across the items since each sees the holds before it);
not enough credits for all of them is one 402 for the whole batch. After the commit each job goes to dispatch,
which leaves the ones past the user's running-job cap queued (`api.jobs.dispatch.dispatch_job`).
"""

from __future__ import annotations

import shutil
from typing import Any
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field

from api.errors import Problem
from api.jobs import cancel, idempotency, view
from api.jobs.dispatch import DispatchError, dispatch_job
from api.jobs.inputs import lazy_workdir
from api.jobs.pricing import price
from api.jobs.request import JobCreate, JobRequest, parse_create, validate_current
from api.jobs.submit import PreparedJob, Submitted, insert_prepared, insufficient, obtain_input, prepare_job
from api.outbound import validate_webhook_url
from api.state import AppState
from db import batches as db_batches
from db import ledger
from inference.registry import TASKS

MAX_ITEMS = 1000


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_url: str | None = None
    input_upload: UUID | None = None
    prompt: str | None = Field(default=None, description="Text tasks: this item's prompt.")
    params: dict[str, Any] = Field(default_factory=dict, description="Merged over the batch's shared params.")


class BatchCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "generate", "params": {"duration_s": 4}, "items": [{"prompt": "rain"}, {"prompt": "wind"}]}
            ]
        },
    )

    task: str
    params: dict[str, Any] = Field(default_factory=dict, description="Shared by every item.")
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_ITEMS)
    webhook_url: str | None = None
    deadline_s: float | None = None


class BatchOut(BaseModel):
    """A batch as GET /v1/batches/{id} returns it (`api.jobs.view.batch_resource`)."""

    id: UUID
    object: str = "batch"
    task: str
    params: dict[str, Any]
    item_count: int
    cost: int = Field(description="Credits held for all items at the submit.")
    counts: dict[str, int] = Field(description="Items by job status.")
    remaining: int = Field(description="Items not yet final.")
    created_at: str
    completed_at: str | None = Field(description="When the last item ended.")
    links: dict[str, str]


class BatchQuoteItem(BaseModel):
    index: int
    credits: int
    duration_s: float | None


class BatchQuote(BaseModel):
    object: str = "batch_quote"
    task: str
    credits: int
    available: int
    sufficient: bool
    items: list[BatchQuoteItem]


def item_create(batch: BatchCreate, item: BatchItem) -> JobCreate:
    """The single-job body an item stands for, validated as a submit's body is (422 problem on a bad field)."""
    body = {
        "task": batch.task,
        "params": {**batch.params, **item.params},
        "input_url": item.input_url,
        "input_upload": item.input_upload,
        "prompt": item.prompt,
        "deadline_s": batch.deadline_s,
    }
    return parse_create(body)


def _naming_item(index: int, problem: Problem) -> Problem:
    problem.extra["item_index"] = index
    problem.detail = f"Item {index}: {problem.detail}"
    return problem


async def _validated(state: AppState, batch: BatchCreate) -> list[JobRequest]:
    """Every item as a single submit would validate it; the first bad one is a 422 naming its index."""
    requests: list[JobRequest] = []
    for index, item in enumerate(batch.items):
        try:
            requests.append(await validate_current(item_create(batch, item), None, state, quote=False))
        except Problem as problem:
            raise _naming_item(index, problem) from None
    return requests


async def quote_batch(state: AppState, user_id: UUID, batch: BatchCreate) -> dict[str, Any]:
    """The whole batch priced before anything runs (`?dry_run=true`): every item validated, URL and upload items
    fetched and probed exactly as the submit would, nothing stored or held."""
    requests = await _validated(state, batch)
    items: list[dict[str, Any]] = []
    workdir = lazy_workdir("studio-batch-quote-")
    try:
        for index, job in enumerate(requests):
            seconds: float | None = None
            if TASKS[job.task].input_kind == "audio":
                try:
                    _, probed = await obtain_input(state, user_id, job, workdir)
                except Problem as problem:
                    raise _naming_item(index, problem) from None
                seconds = probed.info.duration_s
            duration = None if seconds is None else round(seconds, 3)
            items.append({"index": index, "credits": price(job.task, job.params, seconds), "duration_s": duration})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = sum(item["credits"] for item in items)
    async with state.pool.connection() as conn:
        available = (await ledger.balance(conn, user_id)).available
    return {
        "object": "batch_quote",
        "task": batch.task,
        "credits": total,
        "available": available,
        "sufficient": available >= total,
        "items": items,
    }


async def submit_batch_once(
    state: AppState, user_id: UUID, batch: BatchCreate, key: str | None, *, api_key_id: UUID | None
) -> Submitted:
    """`create_batch` behind an optional `Idempotency-Key`, as `api.jobs.submit.submit_once` does for a job: the
    same key and body replay the first batch; a failed attempt frees the key."""
    if key is None:
        return Submitted(await create_batch(state, user_id, batch, api_key_id=api_key_id), 202, replayed=False)
    settings = state.settings
    async with state.pool.connection() as conn:
        replay = await idempotency.claim(
            conn,
            user_id,
            key,
            idempotency.request_hash({"batch": batch.model_dump(mode="json")}),
            settings.idempotency_ttl_seconds,
            in_flight_lease_seconds=settings.idempotency_in_flight_lease_seconds,
        )
    if replay is not None:
        return Submitted(replay.body, replay.status, replayed=True)
    try:
        async with idempotency.kept_alive(state.pool, user_id, key, settings.idempotency_in_flight_lease_seconds):
            body = await create_batch(state, user_id, batch, api_key_id=api_key_id, idempotency_key=key)
    except BaseException:
        async with state.pool.connection() as conn:
            await idempotency.abandon(conn, user_id, key)
        raise
    async with state.pool.connection() as conn:
        await idempotency.complete(conn, user_id, key, 202, body)  # replay this answer, not the in-tx snapshot
    return Submitted(body, 202, replayed=False)


async def create_batch(
    state: AppState,
    user_id: UUID,
    batch: BatchCreate,
    *,
    api_key_id: UUID | None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Validate and prepare every item, then one transaction for the batch and all holds; then dispatch. With
    `idempotency_key` (claimed by the caller) the key is recorded done in that transaction, so no later failure
    can free it and let a retry hold a second batch."""
    requests = await _validated(state, batch)
    # The batch's webhook gets `batch.completed`; its items send none of their own.
    webhook_url = None if batch.webhook_url is None else validate_webhook_url(batch.webhook_url, state.settings)
    batch_id = uuid4()
    prepared: list[PreparedJob] = []
    workdir = lazy_workdir("studio-batch-")
    try:
        for index, job in enumerate(requests):
            try:
                prepared.append(await prepare_job(state, user_id, job, uuid4(), workdir))
            except Problem as problem:
                raise _naming_item(index, problem) from None
        total = sum(item.cost for item in prepared)
        async with state.pool.connection() as conn, conn.transaction():
            await db_batches.insert_batch(
                conn,
                batch_id=batch_id,
                user_id=user_id,
                task=batch.task,
                params=batch.params,
                item_count=len(prepared),
                cost=total,
                webhook_url=webhook_url,
            )
            held = 0
            for index, (job, item) in enumerate(zip(requests, prepared, strict=True)):
                try:
                    await insert_prepared(conn, user_id, job, item, api_key_id=api_key_id, batch_item=(batch_id, index))
                except ledger.InsufficientCredits as exc:
                    # What was available before this batch's own holds, against the whole batch's price.
                    raise insufficient(total, exc.available + held, "batch") from exc
                held += item.cost
            if idempotency_key is not None:
                created = await db_batches.get_batch(conn, batch_id, user_id)
                assert created is not None  # inserted above, in this transaction
                snapshot = view.batch_resource(created, await db_batches.status_counts(conn, batch_id))
                await idempotency.complete(conn, user_id, idempotency_key, 202, snapshot)
    except BaseException:
        await state.storage.delete(state.settings.inputs_bucket, [ref for item in prepared for ref in item.stored])
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for item in prepared:
        try:
            await dispatch_job(state, item.job_id)
        except DispatchError:
            pass  # dispatch_job failed that job and released its hold; the batch shows it as failed
    return await batch_resource(state, batch_id, user_id)


def not_found() -> Problem:
    return Problem(404, "batch_not_found", "Batch not found", "No batch with this id belongs to you.")


async def batch_resource(state: AppState, batch_id: UUID, user_id: UUID) -> dict[str, Any]:
    async with state.pool.connection() as conn:
        row = await db_batches.get_batch(conn, batch_id, user_id)
        if row is None:
            raise not_found()
        return view.batch_resource(row, await db_batches.status_counts(conn, batch_id))


async def cancel_batch(state: AppState, batch_id: UUID, user_id: UUID) -> dict[str, Any]:
    """Cancel-all: each queued item is canceled and released now, each running one signalled (it ends canceled).
    An item that ended meanwhile is left as it ended."""
    async with state.pool.connection() as conn:
        if await db_batches.get_batch(conn, batch_id, user_id) is None:
            raise not_found()
        job_ids = await db_batches.unfinished_jobs(conn, batch_id)
    for job_id in job_ids:
        await cancel.cancel_job(state, job_id, user_id)  # CancelRaced: the route answers 409, retry-safe
    return await batch_resource(state, batch_id, user_id)
