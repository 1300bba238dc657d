"""OpenAI's audio API (`POST /v1/audio/transcriptions|translations`) as a `transcribe` job. No HTTP here.

A call is read into a normal `JobRequest` (`parse_audio_request`), submitted through `api.jobs.submit.submit_once`
like any POST /v1/jobs (probe, price, hold, same job row, Idempotency-Key), then `await_answer` waits for the job to
end (`JobEvents.wait_until_final`, bounded by settings.audio_api_wait_seconds) and renders its transcript in the
asked `response_format`:

- json: `{"text": ...}`; text: the text (text/plain); srt / vtt: the job's transcript.srt / .vtt.
- verbose_json: task, language, duration, text, segments (OpenAI's segment fields) and, with the `word`
  granularity, words.

Ways a call can end without a transcript, each an OpenAI error object (`api.errors.openai_error`) with
`x-should-retry: false`, so the SDK does not resubmit (a new job, charged again) on its own:
- still running at the wait bound: 504 `job_pending`, with `job_id` and `Location: /v1/jobs/{id}` to poll (the
  job goes on and is charged when it succeeds; the transcript is among its outputs);
- failed: 500 with the job's error code (nothing charged); canceled: 409 `job_canceled` (nothing charged);
- any other error once the job exists (a storage read, a bad transcript, a database error): the route answers it
  through `api.jobs.submit.naming_job`, with the job id, its Location and `x-should-retry: false` too.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from api.errors import NO_RETRY, Problem
from api.jobs.inputs import check_content_length, read_multipart
from api.jobs.request import JobCreate, JobRequest, validate_current
from api.state import AppState
from db import jobs as db_jobs
from inference.params import WHISPER_LANGUAGE_NAMES

PATH_PREFIX = "/v1/audio/"  # the routes whose errors use OpenAI's error object (api.main)
WHISPER_1 = "whisper-1"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
GRANULARITIES_FIELD = "timestamp_granularities[]"
TEXT_FIELDS = {"model", "language", "prompt", "response_format", "temperature"}
# Where a transcribe param came from, so a validation error names the OpenAI field the client sent.
_PARAM_FIELDS = {
    "model": "model",
    "language": "language",
    "initial_prompt": "prompt",
    "temperature": "temperature",
    "word_timestamps": GRANULARITIES_FIELD,
}
_TEXT_TYPES = {"text": "text/plain; charset=utf-8", "srt": "application/x-subrip", "vtt": "text/vtt; charset=utf-8"}


@dataclass
class AudioRequest:
    job: JobRequest
    response_format: str
    granularities: tuple[str, ...]


@dataclass
class AudioAnswer:
    body: dict[str, Any] | str
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _invalid(param: str, message: str, code: str = "invalid_request") -> Problem:
    return Problem(422, code, "The request is not valid", message, param=param)


def whisper_1_model(state: AppState) -> str:
    return state.settings.audio_api_whisper_1_model or state.settings.transcribe_model


async def parse_audio_request(
    headers: Mapping[str, str], stream: AsyncIterator[bytes], state: AppState, workdir: Path, *, translate: bool
) -> AudioRequest:
    """Read the multipart body (streamed and capped, the upload into `workdir`) and map it to a transcribe job."""
    content_type = headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise Problem(415, "unsupported_media_type", "Unsupported request body", "Send multipart/form-data.")
    check_content_length(headers.get("content-length"), state.settings.max_upload_bytes)
    # Names outside these end the read as their headers arrive (a hostile body cannot make us buffer it).
    body = await read_multipart(
        content_type, stream, workdir, state.settings.max_upload_bytes, TEXT_FIELDS | {GRANULARITIES_FIELD}
    )
    allowed = TEXT_FIELDS - {"language"} if translate else TEXT_FIELDS
    unknown = sorted(set(body.fields) - allowed) + sorted(set(body.lists) - {GRANULARITIES_FIELD})
    if unknown:
        raise _invalid(unknown[0], f"`{unknown[0]}` is not supported on this endpoint.")
    if body.file is None:
        raise _invalid("file", "Send the audio as the multipart `file`.", "missing_input")
    fields = body.fields
    model = fields.get("model")
    if not model:
        raise _invalid("model", "`model` is required: `whisper-1` or a transcription model of GET /v1/tasks.")
    response_format = fields.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise _invalid("response_format", f"`response_format` is one of {', '.join(RESPONSE_FORMATS)}.")
    granularities = tuple(dict.fromkeys(body.lists.get(GRANULARITIES_FIELD, [])))
    if any(value not in GRANULARITIES for value in granularities):
        raise _invalid(GRANULARITIES_FIELD, f"`{GRANULARITIES_FIELD}` takes {' and '.join(GRANULARITIES)}.")
    if granularities and response_format != "verbose_json":
        raise _invalid(GRANULARITIES_FIELD, f"`{GRANULARITIES_FIELD}` needs `response_format=verbose_json`.")
    params: dict[str, Any] = {
        "model": whisper_1_model(state) if model == WHISPER_1 else model,
        "task": "translate" if translate else "transcribe",
        "word_timestamps": "word" in granularities,
    }
    if fields.get("language"):
        params["language"] = fields["language"]
    if fields.get("prompt"):
        params["initial_prompt"] = fields["prompt"]
    if fields.get("temperature"):
        try:
            params["temperature"] = float(fields["temperature"])
        except ValueError:
            raise _invalid("temperature", "`temperature` must be a number from 0 to 1.") from None
    try:
        job = await validate_current(JobCreate(task="transcribe", params=params), body.file, state, quote=False)
    except Problem as problem:
        problem.extra.setdefault("param", _param_of(problem))
        raise
    return AudioRequest(job=job, response_format=response_format, granularities=granularities)


def _param_of(problem: Problem) -> str | None:
    if problem.code == "model_not_enabled":
        return "model"
    for error in problem.extra.get("errors") or []:
        loc = error.get("loc") or []
        if len(loc) >= 2 and loc[0] == "params":
            return _PARAM_FIELDS.get(str(loc[1]))
        if loc == ["params"]:
            return "model"  # the whole-params checks: an English-only model asked for another language or task
    return None


async def await_answer(state: AppState, job_id: UUID, request: AudioRequest) -> AudioAnswer:
    """Wait (bounded) for the job to end, then render its transcript, or raise the documented Problem."""
    assert state.events is not None  # every API process runs the hub (api.wiring.background_services)
    await state.events.wait_until_final(job_id, state.settings.audio_api_wait_seconds)
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, job_id)
    assert row is not None
    headers = {"X-Studio-Job-Id": str(job_id)}
    status = row["status"]
    if status == db_jobs.JobStatus.SUCCEEDED:
        return await _render(state, row, request, headers)
    if status == db_jobs.JobStatus.FAILED:
        error = row.get("error") or {}
        raise Problem(
            500,
            str(error.get("code") or "job_failed"),
            "The transcription failed",
            f"{error.get('message') or 'The job failed.'} Nothing was charged.",
            headers={**headers, **NO_RETRY},
            job_id=str(job_id),
        )
    if status == db_jobs.JobStatus.CANCELED:
        raise Problem(
            409, "job_canceled", "The job was canceled", "Nothing was charged.", headers={**headers, **NO_RETRY},
            job_id=str(job_id),
        )  # fmt: skip
    raise Problem(
        504,
        "job_pending",
        "The transcription is still running",
        f"No result within {state.settings.audio_api_wait_seconds:g} s. The job goes on: poll GET /v1/jobs/{job_id} "
        "(its outputs carry the transcript files); do not resubmit.",
        headers={**headers, **NO_RETRY, "Location": f"/v1/jobs/{job_id}"},
        job_id=str(job_id),
    )


async def _output_text(state: AppState, row: Mapping[str, Any], name: str) -> str:
    refs = {out["name"]: out["ref"] for out in row.get("outputs") or []}
    if row.get("outputs_deleted_at") is not None or name not in refs:
        raise Problem(500, "output_missing", "The transcript is missing", f"The job has no {name}.")
    with tempfile.TemporaryDirectory(prefix="studio-openai-") as tmp:
        path = await state.storage.get_file(state.settings.outputs_bucket, refs[name], Path(tmp) / name)
        return path.read_text(encoding="utf-8")


async def _render(
    state: AppState, row: Mapping[str, Any], request: AudioRequest, headers: dict[str, str]
) -> AudioAnswer:
    fmt = request.response_format
    if fmt in ("srt", "vtt"):
        return AudioAnswer(await _output_text(state, row, f"transcript.{fmt}"), _TEXT_TYPES[fmt], headers)
    transcript = json.loads(await _output_text(state, row, "transcript.json"))
    if fmt == "text":
        return AudioAnswer(transcript["text"] + "\n", _TEXT_TYPES["text"], headers)
    if fmt == "json":
        return AudioAnswer({"text": transcript["text"]}, "application/json", headers)
    return AudioAnswer(
        verbose_json(transcript, dict(row["params"]), request.granularities), "application/json", headers
    )


def verbose_json(transcript: Mapping[str, Any], params: Mapping[str, Any], granularities: tuple[str, ...]) -> dict:
    """OpenAI's verbose_json from our transcript.json: the language by name, as OpenAI gives it ("english"; our
    transcript.json keeps the ISO code), and each segment's decoder figures as the engine recorded them. A transcript
    without them (the builtin engine's, or one written before they were recorded) gives nulls, no tokens, and the
    segment start in Whisper's 10 ms mel frames for `seek`."""
    segments = transcript.get("segments") or []
    language = transcript.get("language")
    body: dict[str, Any] = {
        "task": transcript.get("task") or params.get("task", "transcribe"),
        "language": WHISPER_LANGUAGE_NAMES.get(language, language) if isinstance(language, str) else language,
        "duration": transcript.get("duration"),
        "text": transcript.get("text", ""),
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {
                "id": segment.get("id", index),
                "seek": segment.get("seek", round(float(segment["start"]) * 100)),
                "start": segment["start"],
                "end": segment["end"],
                "text": segment["text"],
                "tokens": segment.get("tokens", []),
                "temperature": segment.get("temperature", params.get("temperature", 0.0)),
                "avg_logprob": segment.get("avg_logprob"),
                "compression_ratio": segment.get("compression_ratio"),
                "no_speech_prob": segment.get("no_speech_prob"),
            }
            for index, segment in enumerate(segments)
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": word["word"], "start": word["start"], "end": word["end"]}
            for segment in segments
            for word in segment.get("words") or []
        ]
    return body
