"""Step 1 of 5: request. A submit's (or quote's) body, read streamed and capped, then validated: task, params,
model, input and webhook. Nothing is stored yet.

before: the route (`api.routes.jobs`) hands over the headers and the body stream. after: `api.jobs.submit`.

Request bodies, for submits and quotes alike:
- multipart/form-data: `task`, `params` (a JSON object as text), `file`, `input_url` or `input_upload` (a finished
  resumable upload's id, `api.jobs.uploads`), optional `prompt`,
  `webhook_url`, `webhook_events` (JSON array or comma-separated); quotes also take `duration_s`.
- application/json: the same members, `params` as an object and `webhook_events` as an array.
- `deadline_s` (either form), or the `Cancel-After` header (Replicate's form: `90`, `30s`, `5m`, `1h30m`): the job's
  own deadline, counted from the submit; a job not finished by then ends `canceled` with reason `deadline`.

Second inputs (`TaskSpec.extra_inputs`, e.g. master's `reference`): a multipart file part under the input's name or
`<name>_url`, accepted only by the tasks that declare that input (422 `unexpected_input` naming the field otherwise).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import Problem
from api.jobs.inputs import MAX_FORM_BYTES, ReceivedInput, check_content_length, read_multipart
from api.jobs.view import WEBHOOK_EVENTS
from api.outbound import validate_webhook_url
from api.settings import Settings
from api.state import AppState
from inference.models import DEFAULT_LOCK_PATH, LOCK_ENV, ModelEntry, ModelsLock, load_lock, status
from inference.registry import TASKS

# Every second input any task declares: the multipart reader accepts these file parts, then `validate` refuses one
# the chosen task does not take.
EXTRA_INPUT_NAMES = frozenset(name for spec in TASKS.values() for name in spec.extra_inputs)


MIN_DEADLINE_SECONDS = 1
MAX_DEADLINE_SECONDS = 24 * 3600
# Replicate's duration form (https://replicate.com/changelog/2025-10-16-prediction-deadlines shows `Cancel-After: 1m`):
# hours, minutes and seconds in that order, each optional; a bare number is seconds.
_CANCEL_AFTER = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?", re.ASCII)


def parse_cancel_after(raw: str) -> float:
    """Seconds from a `Cancel-After` value; 422 `invalid_cancel_after` for anything else or out of range."""
    text = raw.strip()
    match = _CANCEL_AFTER.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise invalid(
            "invalid_cancel_after",
            "Invalid Cancel-After",
            "Use seconds (`90`) or a duration such as `30s`, `5m`, `1h30m`.",
        )
    hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not MIN_DEADLINE_SECONDS <= total <= MAX_DEADLINE_SECONDS:
        raise invalid(
            "invalid_cancel_after",
            "Invalid Cancel-After",
            f"The deadline must be between {MIN_DEADLINE_SECONDS} s and {MAX_DEADLINE_SECONDS} s.",
        )
    return total


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
                {
                    "task": "song",
                    "prompt": "upbeat synth pop, female vocals",
                    "params": {"lyrics": "[verse]\nNeon on the water\n[chorus]\nWe run all night", "duration_s": 60},
                },
            ]
        },
    )

    # The enum is stated in the schema only: the server's own check answers 422 `unknown_task` with the list.
    task: str = Field(description="One of the tasks listed by GET /v1/tasks.", json_schema_extra={"enum": list(TASKS)})
    params: dict[str, Any] = Field(default_factory=dict, description="The task's params (see GET /v1/tasks).")
    input_url: str | None = Field(default=None, description="An https URL of the input audio.")
    input_upload: UUID | None = Field(
        default=None, description="The id of a finished resumable upload (POST /v1/uploads); a job consumes it."
    )
    reference_url: str | None = Field(
        default=None, description="master only: an https URL of a reference track (or a multipart `reference` file)."
    )
    prompt: str | None = Field(default=None, description="Same as params.prompt (text tasks: generate, song).")
    webhook_url: str | None = None
    webhook_events: list[str] | None = Field(
        default=None,
        description=f"Subset of {list(WEBHOOK_EVENTS)}; default: all but job.output (partial results, opt-in).",
    )
    duration_s: float | None = Field(default=None, gt=0, description="Quotes only: price this much audio.")
    deadline_s: float | None = Field(
        default=None,
        ge=MIN_DEADLINE_SECONDS,
        le=MAX_DEADLINE_SECONDS,
        description="Cancel the job if it has not finished this many seconds after the submit (reason `deadline`,"
        " nothing charged). The `Cancel-After` header says the same.",
    )


@dataclass
class JobRequest:
    task: str
    params: BaseModel
    input_url: str | None
    upload: ReceivedInput | None
    input_upload: UUID | None  # a resumable upload's id: fetched from storage by the submit (`api.jobs.uploads`)
    extra_urls: dict[str, str]  # second inputs by name: each is either a URL here or an upload below
    extra_uploads: dict[str, ReceivedInput]
    webhook_url: str | None
    webhook_events: list[str] | None
    duration_s: float | None
    deadline_s: float | None = None  # the job's own deadline, from the body or the Cancel-After header


# The text fields of a form body (multipart adds `file`).
FORM_FIELDS = frozenset(
    {
        "task",
        "params",
        "input_url",
        "input_upload",
        "reference_url",
        "prompt",
        "webhook_url",
        "webhook_events",
        "duration_s",
        "deadline_s",
    }
)


def check_input_fits(task: str, params: BaseModel, audio_seconds: float) -> None:
    """422 when the params cannot run on an input this long (e.g. a repaint span past its end): before any hold."""
    check = TASKS[task].input_problem
    problem = check(params, audio_seconds) if check is not None else None
    if problem is not None:
        raise invalid(problem[0], "The params do not fit the input", problem[1])


def invalid(code: str, title: str, detail: str, **extra: Any) -> Problem:
    return Problem(422, code, title, detail, **extra)


def _field_errors(exc: ValidationError, prefix: str) -> list[dict[str, Any]]:
    return [{"loc": [prefix, *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]


def _json_field(raw: str, name: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise invalid("invalid_request", "Invalid form field", f"`{name}` must be JSON.") from exc


def _events_field(raw: str) -> list[str]:
    text = raw.strip()
    value = _json_field(text, "webhook_events") if text.startswith("[") else [p.strip() for p in text.split(",")]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid("invalid_request", "Invalid form field", "`webhook_events` must be a list of event names.")
    return value


async def _read_body(
    headers: Mapping[str, str], stream: AsyncIterator[bytes], workdir: Path, max_bytes: int
) -> tuple[JobCreate, ReceivedInput | None, dict[str, ReceivedInput]]:
    content_type = headers.get("content-type", "")
    main_type = content_type.split(";", 1)[0].strip().lower()
    if main_type == "multipart/form-data":
        # Each file is capped at max_bytes; the body may carry the main input and one of each second input.
        check_content_length(headers.get("content-length"), max_bytes * (1 + len(EXTRA_INPUT_NAMES)))
        body = await read_multipart(content_type, stream, workdir, max_bytes, FORM_FIELDS, EXTRA_INPUT_NAMES)
        return _from_fields(body.fields), body.file, body.extra_files
    if main_type in ("application/json", "application/x-www-form-urlencoded"):
        check_content_length(headers.get("content-length"), 0)
        raw = bytearray()
        async for chunk in stream:
            raw += chunk
            if len(raw) > MAX_FORM_BYTES:
                raise Problem(
                    413,
                    "payload_too_large",
                    "The body is too large",
                    f"JSON and form bodies are limited to {MAX_FORM_BYTES} bytes; upload audio as multipart.",
                )
        if main_type == "application/x-www-form-urlencoded":
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
            if len({key for key, _ in pairs}) != len(pairs):
                raise invalid("invalid_request", "Repeated form field", "Each field may appear once.")
            return _from_fields(dict(pairs)), None, {}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise Problem(400, "bad_request", "Malformed JSON body", "The body is not valid JSON.") from exc
        return parse_create(data), None, {}
    raise Problem(
        415,
        "unsupported_media_type",
        "Unsupported request body",
        "Send multipart/form-data (with a file), application/x-www-form-urlencoded or application/json.",
    )


def _from_fields(fields: dict[str, str]) -> JobCreate:
    """Form fields (multipart or urlencoded) to the JSON shape: `params` and `webhook_events` arrive as text."""
    unknown = set(fields) - FORM_FIELDS
    if unknown:
        raise invalid("invalid_request", "Unknown form field", f"Unknown fields: {', '.join(sorted(unknown))}.")
    text = ("task", "input_url", "input_upload", "reference_url", "prompt", "webhook_url", "duration_s", "deadline_s")
    data: dict[str, Any] = {key: value for key, value in fields.items() if key in text}
    if "params" in fields:
        data["params"] = _json_field(fields["params"] or "{}", "params")
    if "webhook_events" in fields:
        data["webhook_events"] = _events_field(fields["webhook_events"])
    return parse_create(data)


def parse_create(data: Any) -> JobCreate:
    if not isinstance(data, dict):
        raise invalid("invalid_request", "The request is not valid", "The body must be an object.")
    try:
        return JobCreate.model_validate(data)
    except ValidationError as exc:
        raise invalid(
            "invalid_request",
            "The request is not valid",
            "See `errors` for each invalid field.",
            errors=[{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()],
        ) from exc


def lock_entries() -> dict[str, ModelEntry]:
    """The models.lock rows in force ($STUDIO_MODELS_LOCK, else the repository's), parsed once per file."""
    return _lock_entries_at(os.environ.get(LOCK_ENV) or str(DEFAULT_LOCK_PATH))


@cache
def _lock_entries_at(path: str) -> dict[str, ModelEntry]:
    return dict(load_lock(Path(path)).models)


def model_enabled(entry: ModelEntry, settings: Settings) -> bool:
    """The one licence gate, for every task: restricted weights (models.lock `commercial_use = false` or a
    `restriction`) only where the deployment allows them (local mode, or STUDIO_ALLOW_NONCOMMERCIAL_MODELS=true)."""
    return not entry.restricted or settings.restricted_models_allowed


def licence_refusal(entry: ModelEntry) -> str:
    terms = entry.restriction or "not for commercial use"
    return (
        f"{entry.key}'s weights are licensed {entry.licence}: {terms}"
        + (f" ({entry.licence_url})" if entry.licence_url else "")
        + ". This deployment does not use them; its operator may allow them with "
        "STUDIO_ALLOW_NONCOMMERCIAL_MODELS=true where the terms permit (see GET /v1/tasks)."
    )


def not_enabled(entry: ModelEntry) -> Problem:
    return invalid(
        "model_not_enabled",
        "Model not enabled",
        licence_refusal(entry),
        model=entry.key,
        licence=entry.licence,
        licence_url=entry.licence_url,
    )


def model_installed(entry: ModelEntry, settings: Settings) -> bool:
    """Whether this deployment holds the model's weights: every file models.lock names is in the weights folder (the
    local cache, or the Modal Volume the API mounts read-only) at its pinned size. Sizes only: hashing gigabytes per
    request is the worker's job, which verifies each file's sha256 as it loads it. Builtin engines need no weights."""
    if settings.engines == "builtin":
        return True
    [model] = status(settings.weights_path, ModelsLock(version=1, models={entry.key: entry}), verify=False)
    return bool(model.files) and all(file.state == "present" for file in model.files)


def install_command(model_key: str) -> str:
    return f"studio models pull {model_key}"


def _extra_inputs(
    create: JobCreate, uploads: dict[str, ReceivedInput], task: str, accepted: tuple[str, ...]
) -> dict[str, str]:
    """The second inputs given as URLs, after refusing any the task does not take or that came twice."""
    urls = {"reference": create.reference_url} if create.reference_url is not None else {}
    for name in sorted({*urls, *uploads}):
        if name not in accepted:
            field = f"{name}_url" if name in urls else name
            raise invalid("unexpected_input", "Unexpected input", f"{task} takes no `{field}`.", field=field)
        if name in urls and name in uploads:
            raise invalid("invalid_request", "Two inputs", f"Send either `{name}` or `{name}_url`, not both.")
    return urls


def deployment_defaults(task: str, settings: Settings) -> dict[str, Any]:
    """Params whose default is this deployment's choice rather than the task's (GET /v1/tasks shows them)."""
    return {"model": settings.transcribe_model} if task == "transcribe" else {}


def validate(
    create: JobCreate,
    upload: ReceivedInput | None,
    state: AppState,
    *,
    quote: bool,
    extra_uploads: dict[str, ReceivedInput] | None = None,
) -> JobRequest:
    spec = TASKS.get(create.task)
    if spec is None:
        raise invalid("unknown_task", "Unknown task", f"Tasks: {', '.join(TASKS)}.", tasks=list(TASKS))
    raw_params = {**deployment_defaults(create.task, state.settings), **create.params}
    if create.prompt is not None:
        if spec.input_kind != "text":
            raise invalid("invalid_params", "Invalid params", f"`prompt` is not a parameter of {create.task}.")
        if raw_params.get("prompt", create.prompt) != create.prompt:
            raise invalid("invalid_params", "Invalid params", "`prompt` and `params.prompt` differ.")
        raw_params["prompt"] = create.prompt
    try:
        params = spec.params_model.model_validate(raw_params)
    except ValidationError as exc:
        raise invalid(
            "invalid_params",
            "Invalid params",
            "See `errors` for each invalid parameter.",
            errors=_field_errors(exc, "params"),
        ) from exc
    entry = lock_entries().get(spec.model_key(params)) if spec.needs_weights else None
    if spec.needs_weights and entry is None:
        raise invalid(
            "model_not_enabled",
            "Model not enabled",
            f"{spec.model_key(params)} is not in this deployment's models.lock.",
        )
    if entry is not None and not model_enabled(entry, state.settings):
        raise not_enabled(entry)
    # Quotes still price a model that is not installed (the price does not depend on it); a submit is refused here,
    # before any hold, rather than failing in the worker after charging.
    if not quote and entry is not None and not model_installed(entry, state.settings):
        key = entry.key
        raise invalid(
            "model_not_installed",
            "Model not installed",
            f"The weights of {key} are not installed on this deployment. The operator installs them with "
            f"`{install_command(key)}` (on Modal: `modal run modal_app.py::download_models --names {key}`).",
            install=install_command(key),
        )
    if not quote and create.duration_s is not None:
        raise invalid("invalid_request", "The request is not valid", "`duration_s` is only for quotes.")
    given = [
        name
        for name, value in (("file", upload), ("input_url", create.input_url), ("input_upload", create.input_upload))
        if value is not None
    ]
    has_input = bool(given)
    if spec.input_kind != "audio":
        if has_input or create.duration_s is not None:
            raise invalid("unexpected_input", "Unexpected input", f"{create.task} takes no audio input.")
    else:
        if len(given) > 1:
            raise invalid(
                "invalid_request", "Two inputs", f"Send one of `file`, `input_url` or `input_upload`, not {given}."
            )
        if not has_input and create.duration_s is None:
            raise invalid(
                "missing_input",
                "Missing input",
                f"{create.task} needs audio: a multipart `file`, an `input_url` or an `input_upload`"
                + (", or `duration_s` for a quote." if quote else "."),
            )
    extra_uploads = extra_uploads or {}
    extra_urls = _extra_inputs(create, extra_uploads, create.task, spec.extra_inputs)
    if create.webhook_events is not None and create.webhook_url is None:
        raise invalid("invalid_request", "The request is not valid", "`webhook_events` needs a `webhook_url`.")
    events = None
    if create.webhook_events is not None:
        unknown = [event for event in create.webhook_events if event not in WEBHOOK_EVENTS]
        if unknown or not create.webhook_events:
            raise invalid(
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
        input_upload=create.input_upload,
        extra_urls=extra_urls,
        extra_uploads=extra_uploads,
        webhook_url=webhook_url,
        webhook_events=events,
        duration_s=create.duration_s,
        deadline_s=create.deadline_s,
    )


async def validate_current(
    create: JobCreate,
    upload: ReceivedInput | None,
    state: AppState,
    *,
    quote: bool,
    extra_uploads: dict[str, ReceivedInput] | None = None,
) -> JobRequest:
    """`validate`, after bringing the weights Volume up to date when its view says a model is not installed."""
    try:
        return validate(create, upload, state, quote=quote, extra_uploads=extra_uploads)
    except Problem as problem:
        if problem.code != "model_not_installed" or state.weights is None or not await state.weights.refresh():
            raise
    return validate(create, upload, state, quote=quote, extra_uploads=extra_uploads)


async def parse_request(
    headers: Mapping[str, str],
    stream: AsyncIterator[bytes],
    state: AppState,
    workdir: Path,
    *,
    quote: bool,
    header_deadline: float | None = None,
) -> JobRequest:
    """Read (streamed, capped) and validate a submit or quote body; an upload lands in `workdir`.
    `header_deadline` is a submit's `Cancel-After` (`parse_cancel_after`), which must agree with any `deadline_s`."""
    create, upload, extra_uploads = await _read_body(headers, stream, workdir, state.settings.max_upload_bytes)
    if header_deadline is not None:
        if create.deadline_s is not None and create.deadline_s != header_deadline:
            raise invalid(
                "invalid_request", "Two deadlines", "`deadline_s` and the Cancel-After header differ: send one."
            )
        create = create.model_copy(update={"deadline_s": header_deadline})
    return await validate_current(create, upload, state, quote=quote, extra_uploads=extra_uploads)
