"""OpenAI-compatible audio routes, HTTP only: POST /v1/audio/transcriptions and POST /v1/audio/translations.

The official `openai` SDK works unchanged with `base_url=<api>/v1` and a personal API key. Each call is a normal
`transcribe` job (see `api.jobs.openai_audio` for the mapping and every way a call ends); errors are OpenAI's error
object (rendered by `api.main` for these paths) with the status codes of the rest of the API.

Modal cuts a web request at 150 s with a 303 to a result URL the client must follow; these routes answer by
settings.audio_api_wait_seconds (140 s by default, always under 150 s), with a 504 `job_pending` naming the job
to poll when the transcription needs longer, so a client never meets Modal's 303 here.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, State
from api.jobs import idempotency
from api.jobs.inputs import SUPPORTED_FORMATS
from api.jobs.openai_audio import GRANULARITIES, RESPONSE_FORMATS, WHISPER_1, await_answer, parse_audio_request
from api.jobs.submit import naming_job, submit_once
from api.routes.responses import AUTH_RESPONSES

router = APIRouter(tags=["openai"])


def _body(translate: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": f"The audio ({', '.join(SUPPORTED_FORMATS)})."},
        "model": {"type": "string", "description": f"`{WHISPER_1}` (the default model) or a transcription model key."},
        "prompt": {"type": "string", "description": "Conditions the first window (names, spelling, style)."},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    }
    if not translate:
        properties["language"] = {"type": "string", "description": "ISO 639-1 code; none = detect."}
        properties["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": list(GRANULARITIES)},
            "description": "`word` needs `response_format=verbose_json`.",
        }
    schema = {"type": "object", "required": ["file", "model"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _error_doc(description: str) -> dict[str, Any]:
    example = {"error": {"message": description, "type": "invalid_request_error", "param": None, "code": "..."}}
    return {"description": description, "content": {"application/json": {"example": example}}}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript: JSON for json/verbose_json, text for text/srt/vtt.",
        "content": {
            "application/json": {"example": {"text": "Hello there."}},
            "text/plain": {},
            "application/x-subrip": {},
            "text/vtt": {},
        },
    },
    **{status: _error_doc(doc["description"]) for status, doc in AUTH_RESPONSES.items()},
    402: _error_doc(
        "Not enough credits (`required` and `available` in the error object), or the API key's spend cap would be"
        " passed (`key_daily_cap` / `key_monthly_cap`, with `cap` and `spent`)"
    ),
    403: _error_doc("The API key may not submit transcriptions (`task_not_allowed_for_key`)"),
    409: _error_doc("The job was canceled, or a request with this Idempotency-Key is in progress"),
    413: _error_doc("The upload is larger than the limit"),
    415: _error_doc("Not multipart/form-data, or not an accepted audio format"),
    422: _error_doc("Invalid field (`param` names it), undecodable audio or a model not enabled"),
    500: _error_doc("The transcription failed; nothing was charged"),
    504: _error_doc("Still running at the wait bound: poll the job named by `job_id` (Location); do not resubmit"),
}


async def _transcribe(
    request: Request, user: CurrentUser, state: State, idempotency_key: str | None, *, translate: bool
) -> Response:
    key = idempotency.check_key(idempotency_key) if idempotency_key is not None else None
    workdir = Path(tempfile.mkdtemp(prefix="studio-openai-"))
    try:
        audio = await parse_audio_request(request.headers, request.stream(), state, workdir, translate=translate)
        submitted = await submit_once(state, user.id, audio.job, key, workdir, api_key_id=user.api_key_id)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job_id = UUID(submitted.body["id"])
    with naming_job(job_id):
        answer = await await_answer(state, job_id, audio)
    if submitted.replayed:
        answer.headers[idempotency.REPLAY_HEADER] = "true"
    if isinstance(answer.body, str):
        return Response(answer.body, media_type=answer.content_type, headers=answer.headers)
    return JSONResponse(answer.body, headers=answer.headers)


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


@router.post(
    "/audio/transcriptions",
    summary="Transcribe audio (OpenAI-compatible)",
    openapi_extra=_body(translate=False),
    responses=_RESPONSES,
)
async def create_transcription(
    request: Request, user: CurrentUser, state: State, idempotency_key: IdempotencyKey = None
) -> Response:
    """A `transcribe` job that the response waits for (see GET /v1/jobs for the job row)."""
    return await _transcribe(request, user, state, idempotency_key, translate=False)


@router.post(
    "/audio/translations",
    summary="Translate audio into English text (OpenAI-compatible)",
    openapi_extra=_body(translate=True),
    responses=_RESPONSES,
)
async def create_translation(
    request: Request, user: CurrentUser, state: State, idempotency_key: IdempotencyKey = None
) -> Response:
    """A `transcribe` job with `task=translate` that the response waits for."""
    return await _transcribe(request, user, state, idempotency_key, translate=True)
