"""The jobs surface, HTTP only: POST /v1/quotes, POST /v1/jobs, GET /v1/jobs[/{id}], POST /v1/jobs/{id}/cancel.

Each handler reads the request, makes one call into `api.jobs` (request -> submit -> dispatch; cancel; view) and
maps the result to a status. Quotes price audio tasks from `duration_s` when given (nothing is uploaded), else from
the file or URL, probed exactly as a submit would.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import ratelimit
from api.deps import CurrentUser, State
from api.errors import Problem
from api.jobs import cancel, idempotency
from api.jobs.inputs import SUPPORTED_FORMATS, lazy_workdir
from api.jobs.pricing import RATES, price
from api.jobs.request import JobCreate, check_input_fits, invalid, parse_cancel_after, parse_request
from api.jobs.submit import naming_job, obtain_extra_inputs, obtain_input, submit_once
from api.jobs.view import JobList, JobOut, JobStatus, job_resource, with_download_urls
from api.routes.responses import AUTH_RESPONSES, SPEND_RESPONSES, problem_doc
from db import jobs as db_jobs
from db import ledger
from inference.registry import TASKS, PriceUnit, TaskName

router = APIRouter(tags=["jobs"])

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]+)", re.IGNORECASE | re.ASCII)


class Quote(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "task": "separate",
                    "credits": 8,
                    "rate": 4.0,
                    "unit": "audio_minute",
                    "units": 2.0,
                    "minimum": 2,
                    "duration_s": 120.0,
                    "available": 100,
                    "sufficient": True,
                }
            ]
        }
    )

    task: str
    credits: int
    rate: float
    unit: PriceUnit
    units: float
    minimum: int
    duration_s: float | None = Field(description="The audio duration priced (audio tasks).")
    available: int = Field(description="The caller's available credits now.")
    sufficient: bool


def _prefer_wait(header: str | None, maximum: int) -> int | None:
    """`wait=N` saturated at `maximum` (any number of digits: more than fit an int mean "as long as you allow")."""
    if not header:
        return None
    match = _PREFER_WAIT.search(header)
    if match is None:
        return None
    digits = match.group(1).lstrip("0") or "0"
    return maximum if len(digits) > len(str(maximum)) else min(int(digits), maximum)


def _job_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise _not_found() from None


def _not_found() -> Problem:
    return Problem(404, "job_not_found", "Job not found", "No job with this id belongs to you.")


_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["task"],
                    "properties": {
                        "task": {"type": "string", "enum": list(TASKS)},
                        "params": {"type": "string", "description": "The task's params as a JSON object."},
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": f"The input audio ({', '.join(SUPPORTED_FORMATS)}).",
                        },
                        "input_url": {"type": "string"},
                        "reference": {
                            "type": "string",
                            "format": "binary",
                            "description": "master only: a reference track whose tone and loudness to match.",
                        },
                        "reference_url": {"type": "string", "description": "master only: the reference as a URL."},
                        "prompt": {"type": "string"},
                        "webhook_url": {"type": "string"},
                        "webhook_events": {
                            "type": "string",
                            "description": "JSON array or comma-separated; default: every event but job.output.",
                        },
                        "deadline_s": {
                            "type": "number",
                            "minimum": 1,
                            "maximum": 86400,
                            "description": "Cancel the job if it has not finished this many seconds after the submit.",
                        },
                    },
                }
            },
            # Inline: nothing else registers JobCreate under components, so a $ref to it would dangle.
            "application/json": {"schema": JobCreate.model_json_schema()},
        },
    }
}
_INPUT_ERRORS: dict[int | str, dict[str, Any]] = {
    413: problem_doc(413, "payload_too_large", "The upload is larger than the limit"),
    415: problem_doc(415, "unsupported_media_type", "Not an accepted audio format or body type"),
    422: problem_doc(
        422,
        "invalid_params",
        "Invalid task, params or input (undecodable_audio, empty_file, "
        "audio_too_long, too_many_channels, sample_rate_too_high, unknown_task, model_not_enabled, "
        "model_not_installed, unexpected_input, idempotency_key_reused, invalid_cancel_after...). Also for requests the"
        " schema allows: the audio must decode, params are checked per task, and a model must be enabled and (for a"
        " submit) installed on this deployment (GET /v1/tasks lists each task's params and models)",
    ),
}


@router.post(
    "/quotes",
    response_model=Quote,
    openapi_extra=_SUBMIT_BODY,
    summary="Price a job without running it",
    responses={**AUTH_RESPONSES, **_INPUT_ERRORS},
)
async def create_quote(request: Request, user: CurrentUser, state: State) -> Quote:
    """The same body as POST /v1/jobs; audio tasks may send `duration_s` instead of the audio."""
    workdir = lazy_workdir("studio-quote-")
    try:
        job = await parse_request(request.headers, request.stream(), state, workdir, quote=True)
        seconds: float | None = None
        if TASKS[job.task].input_kind == "audio":
            if job.duration_s is not None:
                if job.duration_s > state.settings.max_duration_seconds:
                    raise invalid(
                        "audio_too_long",
                        "The audio is too long",
                        f"The limit is {state.settings.max_duration_seconds:g} s.",
                    )
                seconds = job.duration_s
            else:
                if job.input_url is not None:
                    # The download is what a submit would do, and a quote is free: it pays in rate budget.
                    async with state.pool.connection() as conn:
                        await ratelimit.enforce(
                            conn,
                            user.id,
                            now=state.clock(),
                            limit=state.settings.rate_limit_per_minute,
                            cost=state.settings.quote_fetch_rate_cost,
                        )
                _, probed = await obtain_input(state, user.id, job, workdir)
                seconds = probed.info.duration_s
            await obtain_extra_inputs(state, user.id, job, workdir)  # checked as a submit would, never priced
            check_input_fits(job.task, job.params, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    credits = price(job.task, job.params, seconds)
    rate = RATES[job.task]
    async with state.pool.connection() as conn:
        available = (await ledger.balance(conn, user.id)).available
    return Quote(
        task=job.task,
        credits=credits,
        rate=rate.rate,
        unit=rate.unit,
        units=round(TASKS[job.task].price_units(job.params, seconds), 6),
        minimum=rate.minimum,
        duration_s=None if seconds is None else round(seconds, 3),
        available=available,
        sufficient=available >= credits,
    )


@router.post(
    "/jobs",
    status_code=202,
    openapi_extra=_SUBMIT_BODY,
    summary="Submit a job",
    responses={
        200: {"model": JobOut, "description": "The job finished within `Prefer: wait`."},
        202: {"model": JobOut, "description": "Accepted: follow it by polling, SSE or webhook."},
        **AUTH_RESPONSES,
        **SPEND_RESPONSES,
        409: problem_doc(409, "idempotency_in_flight", "A request with this Idempotency-Key is in progress"),
        **_INPUT_ERRORS,
        503: problem_doc(503, "dispatch_failed", "The job could not be started; nothing was charged"),
    },
)
async def submit_job(
    request: Request,
    user: CurrentUser,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    prefer: Annotated[str | None, Header(description="`wait=N` (N <= 60): answer when done or after N s.")] = None,
    cancel_after: Annotated[
        str | None,
        Header(
            alias="Cancel-After",
            description="The job's deadline, as Replicate takes it: seconds (`90`) or a duration (`30s`, `5m`,"
            " `1h30m`), 1 s to 24 h from the submit. Not finished by then, it ends `canceled` with `cancel_reason`"
            " `deadline`, nothing charged. Same as `deadline_s` in the body.",
        ),
    ] = None,
) -> JSONResponse:
    """Create a job: the input is probed, priced and held before the job is accepted."""
    settings = state.settings
    # Every header is read before any work: a bad one must not fail after the job was created and charged.
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    wait = _prefer_wait(prefer, settings.prefer_wait_max_seconds)
    header_deadline = parse_cancel_after(cancel_after) if cancel_after is not None else None
    workdir = lazy_workdir("studio-submit-")
    try:
        job = await parse_request(
            request.headers, request.stream(), state, workdir, quote=False, header_deadline=header_deadline
        )
        submitted = await submit_once(state, user.id, job, key, workdir, api_key_id=user.api_key_id)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    body = submitted.body
    if submitted.replayed:
        return JSONResponse(body, status_code=submitted.status, headers={idempotency.REPLAY_HEADER: "true"})
    job_id = UUID(body["id"])
    headers = {"Location": body["links"]["self"]}
    if wait is None:
        return JSONResponse(body, status_code=202, headers=headers)
    headers["Preference-Applied"] = f"wait={wait}"
    with naming_job(job_id):
        if wait > 0:
            assert state.events is not None  # every API process runs the hub (api.wiring.background_services)
            await state.events.wait_until_final(job_id, float(wait))
        async with state.pool.connection() as conn:
            row = await db_jobs.get_job(conn, job_id)
        assert row is not None
        final = row["status"] in db_jobs.FINAL_STATES
        resource = await with_download_urls(state, job_resource(row), row)
    return JSONResponse(resource, status_code=200 if final else 202, headers=headers)


@router.get("/jobs", response_model=JobList, summary="Your jobs, newest first", responses=AUTH_RESPONSES)
async def list_jobs(
    user: CurrentUser,
    state: State,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[JobStatus | None, Query()] = None,
    task: Annotated[TaskName | None, Query()] = None,
) -> JobList:
    """Cursor-paginated on (created_at, id). Outputs here carry no download URLs: GET the job for those."""
    after = decode_cursor(cursor) if cursor else None
    async with state.pool.connection() as conn:
        rows = await db_jobs.list_jobs(conn, user.id, limit=limit + 1, status=status, task=task, after=after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return JobList(
        data=[JobOut.model_validate(job_resource(row)) for row in page], has_more=more, next_cursor=next_cursor
    )


def encode_cursor(created_at: datetime, job_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise invalid("invalid_cursor", "Invalid cursor", "Pass `next_cursor` from a previous page.") from exc


_NOT_FOUND = {404: problem_doc(404, "job_not_found", "No such job for this user")}


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="A job, with fresh download URLs",
    responses={**AUTH_RESPONSES, **_NOT_FOUND},
)
async def get_job(job_id: str, user: CurrentUser, state: State) -> JSONResponse:
    """Status, progress, params, cost, outputs (signed URLs minted on each call; while running, the output files
    already finished), error, timings, metrics."""
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, _job_id(job_id), user.id)
        if row is not None and row["status"] == db_jobs.JobStatus.RUNNING:
            # Finished output files are downloadable before the job ends (separation's stems as each is written).
            files = await db_jobs.partial_outputs(conn, row["id"], kind="file")
            row = {**row, "outputs": [file["data"] for file in files]}
    if row is None:
        raise _not_found()
    return JSONResponse(await with_download_urls(state, job_resource(row), row))


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    responses={
        202: {"model": JobOut, "description": "Running: cancellation requested; it ends as `canceled`."},
        **AUTH_RESPONSES,
        **_NOT_FOUND,
        409: problem_doc(409, "job_final", "The job has already finished"),
    },
)
async def cancel_job(job_id: str, user: CurrentUser, state: State) -> JSONResponse:
    """Queued: canceled now and the hold released (200). Running: the worker is signalled and ends the job as
    canceled, releasing the hold (202). Already final: 409."""
    try:
        outcome = await cancel.cancel_job(state, _job_id(job_id), user.id)
    except cancel.CancelRaced as exc:
        raise Problem(
            409, "conflict", "The job is changing state", "Retry the cancel.", headers={"Retry-After": "1"}
        ) from exc
    if outcome is None:
        raise _not_found()
    if isinstance(outcome, cancel.AlreadyFinal):
        status = outcome.job["status"]
        raise Problem(
            409,
            "job_final",
            "The job has already finished",
            f"The job is {status}; final states never change.",
            job_status=status,
        )
    code = 200 if isinstance(outcome, cancel.Canceled) else 202
    return JSONResponse(job_resource(outcome.job), status_code=code)
