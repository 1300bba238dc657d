"""The jobs surface: GET /v1/tasks, POST /v1/quotes, POST /v1/jobs, GET /v1/jobs[/{id}], POST /v1/jobs/{id}/cancel.

A submit either creates the job, its hold and its dispatch, or answers an error and leaves nothing behind
(SPEC section 4). The order that guarantees it:
  parse (streamed, capped) -> validate task/params/webhook -> claim the Idempotency-Key -> fetch the URL input ->
  probe -> price -> store the input under the new job id -> ONE transaction: insert the job + hold ->
  dispatch (api.dispatch fails the job and releases the hold itself when the dispatcher refuses).
Any failure before the commit deletes the stored input; the key is freed on every error path.

Request bodies, for submits and quotes alike:
- multipart/form-data: `task`, `params` (a JSON object as text), `file` or `input_url`, optional `prompt`,
  `webhook_url`, `webhook_events` (JSON array or comma-separated); quotes also take `duration_s`.
- application/json: the same members, `params` as an object and `webhook_events` as an array.
Quotes price audio tasks from `duration_s` when given (nothing is uploaded), else from the file or URL, probed
exactly as a submit would.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api import idempotency
from api.app import AppState, get_state
from api.auth import AUTH_RESPONSES, CurrentUser, problem_doc
from api.dispatch import DispatchError, dispatch_job
from api.errors import Problem
from api.inputs import (
    MAX_FIELD_BYTES,
    SUPPORTED_FORMATS,
    FetchPolicy,
    ProbedInput,
    ReceivedInput,
    check_content_length,
    fetch_url,
    probe_input,
    read_multipart,
)
from api.job_view import WEBHOOK_EVENTS, JobList, JobOut, JobStatus, job_resource, with_download_urls
from api.pricing import RATES, price
from api.webhooks import enqueue_job_event, validate_webhook_url
from db import jobs as db_jobs
from db import ledger
from inference.models import ModelEntry, load_lock
from inference.registry import TASKS

log = logging.getLogger("studio.jobs")
router = APIRouter(prefix="/v1", tags=["jobs"])
State = Annotated[AppState, Depends(get_state)]

HOLD_MARGIN = timedelta(hours=1)  # holds outlive the job deadline so the reaper, not the hold sweeper, settles them
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
TaskName = Literal["separate", "enhance", "transcribe", "midi", "generate"]


# ---- models ----


class JobCreate(BaseModel):
    """The JSON form of a job (or quote) body. Multipart bodies carry the same members as form fields."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "task": "transcribe",
                    "params": {"model": "large-v3-turbo"},
                    "input_url": "https://example.com/talk.mp3",
                },
                {"task": "generate", "params": {"prompt": "warm analog synth pad", "duration_s": 8}},
            ]
        },
    )

    task: str = Field(description="One of the tasks listed by GET /v1/tasks.")
    params: dict[str, Any] = Field(default_factory=dict, description="The task's params (see GET /v1/tasks).")
    input_url: str | None = Field(default=None, description="An https URL of the input audio.")
    prompt: str | None = Field(default=None, description="Same as params.prompt (generate only).")
    webhook_url: str | None = None
    webhook_events: list[str] | None = Field(default=None, description=f"Subset of {list(WEBHOOK_EVENTS)}.")
    duration_s: float | None = Field(default=None, gt=0, description="Quotes only: price this much audio.")


class Price(BaseModel):
    rate: float = Field(description="Credits per unit.")
    unit: Literal["audio_minute", "variant_second"]
    minimum: int


class ModelInfo(BaseModel):
    key: str
    licence: str
    licence_note: str
    commercial_use: bool
    licence_unresolved: bool
    enabled: bool = Field(description="Whether this deployment accepts jobs for the model.")
    source: str


class Limits(BaseModel):
    max_upload_bytes: int
    max_duration_s: float
    formats: list[str]


class TaskInfo(BaseModel):
    task: str
    description: str
    input_kind: Literal["audio", "text"]
    params_schema: dict[str, Any]
    price: Price
    limits: Limits
    models: list[ModelInfo]


class TaskList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TaskInfo]


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
    unit: Literal["audio_minute", "variant_second"]
    units: float
    minimum: int
    duration_s: float | None = Field(description="The audio duration priced (audio tasks).")
    available: int = Field(description="The caller's available credits now.")
    sufficient: bool


# ---- body parsing and validation ----


@dataclass
class JobRequest:
    task: str
    params: BaseModel
    input_url: str | None
    upload: ReceivedInput | None
    webhook_url: str | None
    webhook_events: list[str] | None
    duration_s: float | None


def _invalid(code: str, title: str, detail: str, **extra: Any) -> Problem:
    return Problem(422, code, title, detail, **extra)


def _field_errors(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    return [{"loc": [prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]


def _json_field(raw: str, name: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _invalid("invalid_request", "Invalid form field", f"`{name}` must be JSON.") from exc


def _events_field(raw: str) -> list[str]:
    text = raw.strip()
    value = _json_field(text, "webhook_events") if text.startswith("[") else [p.strip() for p in text.split(",")]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid("invalid_request", "Invalid form field", "`webhook_events` must be a list of event names.")
    return value


async def _read_body(request: Request, workdir: Path, max_bytes: int) -> JobCreate | tuple[JobCreate, ReceivedInput]:
    content_type = request.headers.get("content-type", "")
    main_type = content_type.split(";", 1)[0].strip().lower()
    if main_type == "multipart/form-data":
        check_content_length(request.headers.get("content-length"), max_bytes)
        body = await read_multipart(content_type, request.stream(), workdir, max_bytes)
        parsed = _from_fields(body.fields)
        return (parsed, body.file) if body.file is not None else parsed
    if main_type in ("application/json", "application/x-www-form-urlencoded"):
        check_content_length(request.headers.get("content-length"), 0)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_FIELD_BYTES:
                raise Problem(
                    413,
                    "payload_too_large",
                    "The body is too large",
                    f"JSON and form bodies are limited to {MAX_FIELD_BYTES} bytes; upload audio as multipart.",
                )
        if main_type == "application/x-www-form-urlencoded":
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
            if len({key for key, _ in pairs}) != len(pairs):
                raise _invalid("invalid_request", "Repeated form field", "Each field may appear once.")
            return _from_fields(dict(pairs))
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise Problem(400, "bad_request", "Malformed JSON body", "The body is not valid JSON.") from exc
        return _parse_create(data)
    raise Problem(
        415,
        "unsupported_media_type",
        "Unsupported request body",
        "Send multipart/form-data (with a file), application/x-www-form-urlencoded or application/json.",
    )


def _from_fields(fields: dict[str, str]) -> JobCreate:
    """Form fields (multipart or urlencoded) to the JSON shape: `params` and `webhook_events` arrive as text."""
    unknown = set(fields) - {"task", "params", "input_url", "prompt", "webhook_url", "webhook_events", "duration_s"}
    if unknown:
        raise _invalid("invalid_request", "Unknown form field", f"Unknown fields: {', '.join(sorted(unknown))}.")
    text = ("task", "input_url", "prompt", "webhook_url", "duration_s")
    data: dict[str, Any] = {key: value for key, value in fields.items() if key in text}
    if "params" in fields:
        data["params"] = _json_field(fields["params"] or "{}", "params")
    if "webhook_events" in fields:
        data["webhook_events"] = _events_field(fields["webhook_events"])
    return _parse_create(data)


def _parse_create(data: Any) -> JobCreate:
    if not isinstance(data, dict):
        raise _invalid("invalid_request", "The request is not valid", "The body must be an object.")
    try:
        return JobCreate.model_validate(data)
    except ValidationError as exc:
        raise _invalid(
            "invalid_request",
            "The request is not valid",
            "See `errors` for each invalid field.",
            errors=[{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()],
        ) from exc


@cache
def _lock_entries() -> dict[str, ModelEntry]:
    return dict(load_lock().models)


def model_enabled(entry: ModelEntry, state: AppState) -> bool:
    # Non-commercial weights (AudioLDM2) stay off unless the operator opts in for non-commercial use.
    return entry.enabled_by_default or state.settings.allow_noncommercial_models


def _validate(create: JobCreate, upload: ReceivedInput | None, state: AppState, *, quote: bool) -> JobRequest:
    spec = TASKS.get(create.task)
    if spec is None:
        raise _invalid("unknown_task", "Unknown task", f"Tasks: {', '.join(TASKS)}.", tasks=list(TASKS))
    raw_params = dict(create.params)
    if create.prompt is not None:
        if spec.input_kind != "text":
            raise _invalid("invalid_params", "Invalid params", f"`prompt` is not a parameter of {create.task}.")
        if raw_params.get("prompt", create.prompt) != create.prompt:
            raise _invalid("invalid_params", "Invalid params", "`prompt` and `params.prompt` differ.")
        raw_params["prompt"] = create.prompt
    try:
        params = spec.params_model.model_validate(raw_params)
    except ValidationError as exc:
        raise _invalid(
            "invalid_params",
            "Invalid params",
            "See `errors` for each invalid parameter.",
            errors=_field_errors(exc, "params"),
        ) from exc
    entry = _lock_entries().get(spec.model_key(params))
    if entry is None or not model_enabled(entry, state):
        raise _invalid(
            "model_not_enabled",
            "Model not enabled",
            f"{spec.model_key(params)} is not enabled on this deployment (see its licence in GET /v1/tasks).",
        )
    if not quote and create.duration_s is not None:
        raise _invalid("invalid_request", "The request is not valid", "`duration_s` is only for quotes.")
    has_input = upload is not None or create.input_url is not None
    if spec.input_kind == "text":
        if has_input or create.duration_s is not None:
            raise _invalid("unexpected_input", "Unexpected input", f"{create.task} takes no audio input.")
    else:
        if upload is not None and create.input_url is not None:
            raise _invalid("invalid_request", "Two inputs", "Send either `file` or `input_url`, not both.")
        if not has_input and create.duration_s is None:
            raise _invalid(
                "missing_input",
                "Missing input",
                f"{create.task} needs audio: a multipart `file` or an `input_url`"
                + (", or `duration_s` for a quote." if quote else "."),
            )
    if create.webhook_events is not None and create.webhook_url is None:
        raise _invalid("invalid_request", "The request is not valid", "`webhook_events` needs a `webhook_url`.")
    events = None
    if create.webhook_events is not None:
        unknown = [event for event in create.webhook_events if event not in WEBHOOK_EVENTS]
        if unknown or not create.webhook_events:
            raise _invalid(
                "invalid_webhook_events",
                "Invalid webhook events",
                f"Choose a non-empty subset of {', '.join(WEBHOOK_EVENTS)}.",
            )
        events = list(dict.fromkeys(create.webhook_events))
    webhook_url = None
    if create.webhook_url is not None and not quote:
        webhook_url = validate_webhook_url(create.webhook_url, state.settings)
    return JobRequest(
        task=create.task,
        params=params,
        input_url=create.input_url,
        upload=upload,
        webhook_url=webhook_url,
        webhook_events=events,
        duration_s=create.duration_s,
    )


async def _parse_request(request: Request, state: AppState, workdir: Path, *, quote: bool) -> JobRequest:
    body = await _read_body(request, workdir, state.settings.max_upload_bytes)
    create, upload = body if isinstance(body, tuple) else (body, None)
    return _validate(create, upload, state, quote=quote)


async def _obtain_input(state: AppState, job: JobRequest, workdir: Path) -> tuple[ReceivedInput, ProbedInput]:
    settings = state.settings
    received = job.upload
    if received is None:
        assert job.input_url is not None
        insecure = settings.input_url_allow_insecure
        policy = FetchPolicy(allow_http=insecure, allow_private=insecure)
        received = await fetch_url(
            job.input_url,
            workdir,
            max_bytes=settings.max_upload_bytes,
            timeout=settings.input_fetch_timeout_seconds,
            policy=policy,
        )
    probed = await probe_input(received.path, settings.max_duration_seconds)
    return received, probed


def _input_meta(received: ReceivedInput, probed: ProbedInput, input_url: str | None) -> dict[str, Any]:
    info = probed.info
    meta: dict[str, Any] = {
        "source": "url" if input_url else "upload",
        "filename": received.filename,
        "bytes": received.bytes,
        "sha256": received.sha256,
        "content_type": probed.content_type,
        "duration_s": round(info.duration_s, 3),
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "codec": info.codec,
        "container": info.container,
    }
    if input_url:
        meta["url"] = input_url
    return meta


def _fingerprint(job: JobRequest) -> str:
    return idempotency.request_hash(
        {
            "task": job.task,
            "params": job.params.model_dump(mode="json"),
            "input_sha256": job.upload.sha256 if job.upload else None,
            "input_url": job.input_url,
            "webhook_url": job.webhook_url,
            "webhook_events": job.webhook_events,
        }
    )


def _prefer_wait(header: str | None, maximum: int) -> int | None:
    if not header:
        return None
    match = _PREFER_WAIT.search(header)
    return None if match is None else min(int(match.group(1)), maximum)


def _job_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise _not_found() from None


def _not_found() -> Problem:
    return Problem(404, "job_not_found", "Job not found", "No job with this id belongs to you.")


# ---- routes ----

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
                        "prompt": {"type": "string"},
                        "webhook_url": {"type": "string"},
                        "webhook_events": {"type": "string", "description": "JSON array or comma-separated."},
                    },
                }
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
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
        "audio_too_long, unknown_task, model_not_enabled, idempotency_key_reused...)",
    ),
}


@router.get("/tasks", response_model=TaskList, summary="Tasks, params, prices, limits and model licences")
async def list_tasks(state: State) -> TaskList:
    """Public. Every task with its params JSON schema, price, input limits and the models (with licences) it uses."""
    settings = state.settings
    limits = Limits(
        max_upload_bytes=settings.max_upload_bytes,
        max_duration_s=settings.max_duration_seconds,
        formats=list(SUPPORTED_FORMATS),
    )
    data = []
    for spec in TASKS.values():
        rate = RATES[spec.task]
        models = [
            ModelInfo(
                key=entry.key,
                licence=entry.licence,
                licence_note=entry.licence_note,
                commercial_use=entry.commercial_use,
                licence_unresolved=entry.licence_unresolved,
                enabled=model_enabled(entry, state),
                source=entry.source,
            )
            for entry in _lock_entries().values()
            if entry.task == spec.task
        ]
        data.append(
            TaskInfo(
                task=spec.task,
                description=spec.description,
                input_kind=spec.input_kind,
                params_schema=spec.params_model.model_json_schema(),
                price=Price(rate=rate.rate, unit=rate.unit, minimum=rate.minimum),
                limits=limits,
                models=models,
            )
        )
    return TaskList(data=data)


@router.post(
    "/quotes",
    response_model=Quote,
    openapi_extra=_SUBMIT_BODY,
    summary="Price a job without running it",
    responses={**AUTH_RESPONSES, **_INPUT_ERRORS},
)
async def create_quote(request: Request, user: CurrentUser, state: State) -> Quote:
    """The same body as POST /v1/jobs; audio tasks may send `duration_s` instead of the audio."""
    workdir = Path(tempfile.mkdtemp(prefix="studio-quote-"))
    try:
        job = await _parse_request(request, state, workdir, quote=True)
        seconds: float | None = None
        if TASKS[job.task].input_kind == "audio":
            if job.duration_s is not None:
                if job.duration_s > state.settings.max_duration_seconds:
                    raise _invalid(
                        "audio_too_long",
                        "The audio is too long",
                        f"The limit is {state.settings.max_duration_seconds:g} s.",
                    )
                seconds = job.duration_s
            else:
                _, probed = await _obtain_input(state, job, workdir)
                seconds = probed.info.duration_s
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
        402: problem_doc(402, "insufficient_credits", "Not enough credits (see `required` and `available`)"),
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
) -> JSONResponse:
    """Create a job: the input is probed, priced and held before the job is accepted."""
    settings = state.settings
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    workdir = Path(tempfile.mkdtemp(prefix="studio-submit-"))
    claimed = False
    try:
        job = await _parse_request(request, state, workdir, quote=False)
        if key is not None:
            async with state.pool.connection() as conn:
                replay = await idempotency.claim(
                    conn,
                    user.id,
                    key,
                    _fingerprint(job),
                    settings.idempotency_ttl_seconds,
                    in_flight_lease_seconds=settings.idempotency_in_flight_lease_seconds,
                )
            if replay is not None:
                return JSONResponse(replay.body, status_code=replay.status, headers={idempotency.REPLAY_HEADER: "true"})
            claimed = True
        body = await _create_job(state, user.id, job, workdir)
        if key is not None:
            async with state.pool.connection() as conn:
                await idempotency.complete(conn, user.id, key, 202, body)
            claimed = False  # the job exists: from here on the key must replay it, never be freed
    except BaseException:
        if claimed:
            async with state.pool.connection() as conn:
                await idempotency.abandon(conn, user.id, key)  # type: ignore[arg-type]
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job_id = UUID(body["id"])
    headers = {"Location": body["links"]["self"]}
    wait = _prefer_wait(prefer, settings.prefer_wait_max_seconds)
    if wait is None:
        return JSONResponse(body, status_code=202, headers=headers)
    headers["Preference-Applied"] = f"wait={wait}"
    if wait > 0:
        await state.services["events"].wait_until_final(job_id, float(wait))
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, job_id)
    assert row is not None
    final = row["status"] in db_jobs.FINAL_STATES
    resource = await with_download_urls(state, job_resource(row), row)
    return JSONResponse(resource, status_code=200 if final else 202, headers=headers)


async def _create_job(state: AppState, user_id: UUID, job: JobRequest, workdir: Path) -> dict[str, Any]:
    """Probe, price, store, hold, dispatch. Returns the job resource; leaves nothing held or stored on error."""
    settings = state.settings
    spec = TASKS[job.task]
    job_id = uuid4()
    input_ref: str | None = None
    input_meta: dict[str, Any] = {}
    seconds: float | None = None
    if spec.input_kind == "audio":
        received, probed = await _obtain_input(state, job, workdir)
        seconds = probed.info.duration_s
        input_meta = _input_meta(received, probed, job.input_url)
        cost = price(job.task, job.params, seconds)
        # Upload first under the fresh job id: if the transaction then fails, the object is deleted and no job
        # row ever pointed at it; if the upload fails, nothing was written to the database at all.
        input_ref = f"{user_id}/{job_id}/input{probed.extension}"
        await state.storage.put_file(settings.inputs_bucket, input_ref, received.path, probed.content_type)
    else:
        cost = price(job.task, job.params, None)
    deadline_at: datetime = state.clock() + timedelta(seconds=settings.job_deadline_seconds)
    try:
        async with state.pool.connection() as conn, conn.transaction():
            await db_jobs.insert_job(
                conn,
                job_id=job_id,
                user_id=user_id,
                task=job.task,
                params=job.params.model_dump(mode="json"),
                model_key=spec.model_key(job.params),
                cost=cost,
                input_ref=input_ref,
                input_meta=input_meta,
                webhook_url=job.webhook_url,
                webhook_events=job.webhook_events,
                deadline_at=deadline_at,
            )
            await ledger.hold(conn, user_id, job_id, cost, deadline_at + HOLD_MARGIN)
    except BaseException as exc:
        if input_ref is not None:
            await state.storage.delete(settings.inputs_bucket, [input_ref])
        if isinstance(exc, ledger.InsufficientCredits):
            raise Problem(
                402,
                "insufficient_credits",
                "Not enough credits",
                f"This job costs {exc.required} credits and {exc.available} are available.",
                required=exc.required,
                available=exc.available,
            ) from exc
        raise
    try:
        await dispatch_job(state, job_id)
    except DispatchError as exc:
        # dispatch_job has failed the job and released its hold; the input is no longer needed.
        if input_ref is not None:
            await state.storage.delete(settings.inputs_bucket, [input_ref])
            async with state.pool.connection() as conn:
                await db_jobs.clear_input(conn, job_id)
        raise Problem(
            503,
            "dispatch_failed",
            "The job could not be started",
            "No worker could take the job; nothing was charged. Retry shortly.",
            headers={"Retry-After": "5"},
            job_id=str(job_id),
        ) from exc
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, job_id)
    assert row is not None
    return job_resource(row)


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
    after = _decode_cursor(cursor) if cursor else None
    async with state.pool.connection() as conn:
        rows = await db_jobs.list_jobs(conn, user.id, limit=limit + 1, status=status, task=task, after=after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = _encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    return JobList(
        data=[JobOut.model_validate(job_resource(row)) for row in page], has_more=more, next_cursor=next_cursor
    )


def _encode_cursor(created_at: datetime, job_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _invalid("invalid_cursor", "Invalid cursor", "Pass `next_cursor` from a previous page.") from exc


_NOT_FOUND = {404: problem_doc(404, "job_not_found", "No such job for this user")}


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    summary="A job, with fresh download URLs",
    responses={**AUTH_RESPONSES, **_NOT_FOUND},
)
async def get_job(job_id: str, user: CurrentUser, state: State) -> JSONResponse:
    """Status, progress, params, cost, outputs (signed URLs minted on each call), error, timings, metrics."""
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, _job_id(job_id), user.id)
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
    uid = _job_id(job_id)
    async with state.pool.connection() as conn:
        # A job only moves forward, except that the reaper may requeue a running job whose worker vanished:
        # retry the two guarded updates a few times rather than misreport that rare race.
        for _ in range(3):
            async with conn.transaction():
                canceled = await db_jobs.cancel_queued(conn, uid, user.id)
                if canceled:
                    await ledger.release(conn, uid)
                    await enqueue_job_event(conn, uid, "job.canceled")
            if canceled:
                row = await db_jobs.get_job(conn, uid, user.id)
                assert row is not None
                if row["dispatch_id"]:
                    await state.dispatcher.cancel(row["dispatch_id"])  # dispatched, not yet claimed by a worker
                if row["input_ref"]:
                    await state.storage.delete(state.settings.inputs_bucket, [row["input_ref"]])
                    await db_jobs.clear_input(conn, uid)
                return JSONResponse(job_resource(row), status_code=200)
            dispatch_id = await db_jobs.request_cancel(conn, uid, user.id)
            if dispatch_id is not None:
                if dispatch_id:
                    await state.dispatcher.cancel(dispatch_id)
                row = await db_jobs.get_job(conn, uid, user.id)
                assert row is not None
                return JSONResponse(job_resource(row), status_code=202)
            row = await db_jobs.get_job(conn, uid, user.id)
            if row is None:
                raise _not_found()
            if row["status"] in db_jobs.FINAL_STATES:
                raise Problem(
                    409,
                    "job_final",
                    "The job has already finished",
                    f"The job is {row['status']}; final states never change.",
                    job_status=row["status"],
                )
    raise Problem(409, "conflict", "The job is changing state", "Retry the cancel.", headers={"Retry-After": "1"})
