"""The job as users see it: one shape for GET /v1/jobs/{id}, the job list, SSE `done` events and webhook bodies.

`job_resource` is pure (row in, JSON-safe dict out) and never exposes storage keys; `with_download_urls` adds
signed URLs, minted on each call, for the places that hand out downloads (GET, list, webhooks).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from api.state import AppState
from db.jobs import JobStatus, get_job

WEBHOOK_EVENTS = ("job.started", "job.progress", "job.output", "job.succeeded", "job.failed", "job.canceled")
# Without a `webhook_events` filter a webhook gets every event but job.output (partial results, many per job): that
# one is delivered only when the filter names it.
DEFAULT_WEBHOOK_EVENTS = tuple(event for event in WEBHOOK_EVENTS if event != "job.output")
_INPUT_KEYS = (
    "source",
    "filename",
    "bytes",
    "content_type",
    "duration_s",
    "sample_rate",
    "channels",
    "codec",
    "container",
    "url",
    "upload_id",
    "sha256",
    "extra_inputs",  # second inputs (e.g. master's `reference`): name -> the same keys as the main input
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max((end - start).total_seconds(), 0.0), 3)


# settle.CANCELED_AT_DEADLINE's code: a job its own deadline canceled. Every other cancel is the user's.
DEADLINE_CODE = "deadline"


def cancel_reason(status: str, error: Mapping[str, Any] | None) -> Literal["user", "deadline"] | None:
    if status != JobStatus.CANCELED:
        return None
    return "deadline" if error and error.get("code") == DEADLINE_CODE else "user"


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


def job_resource(row: Mapping[str, Any]) -> dict[str, Any]:
    """The public view of a jobs row (as db.jobs reads it). Pure: no clock, no I/O."""
    job_id = str(row["id"])
    created, started, finished = row["created_at"], row.get("started_at"), row.get("finished_at")
    metrics = dict(row.get("metrics") or {})
    outputs_deleted = row.get("outputs_deleted_at") is not None
    outputs = (
        []
        if outputs_deleted
        else [
            {
                "name": out["name"],
                "content_type": out.get("content_type"),
                "bytes": out.get("bytes"),
                "metadata": out.get("metadata") or {},
            }
            for out in row.get("outputs") or []
        ]
    )
    input_meta = row.get("input_meta") or {}
    error = row.get("error")
    webhook = None
    if row.get("webhook_url"):
        webhook = {
            "url": row["webhook_url"],
            "events": list(row.get("webhook_events") or DEFAULT_WEBHOOK_EVENTS),
            "last_delivery": row.get("last_delivery"),
        }
    return {
        "id": job_id,
        "object": "job",
        "task": row["task"],
        "status": row["status"],
        "progress": float(row.get("progress") or 0.0),
        "stage": row.get("stage"),
        "cancel_requested": bool(row.get("cancel_requested")),
        "cancel_reason": cancel_reason(row["status"], error),
        "params": dict(row["params"]),
        "cost": int(row["cost"]),
        "input": {key: input_meta[key] for key in _INPUT_KEYS if key in input_meta} or None,
        "outputs": outputs,
        "outputs_expire_at": _iso(row.get("outputs_expire_at")),
        "outputs_deleted": outputs_deleted,
        "error": {"code": error.get("code"), "message": error.get("message")} if error else None,
        "timings": {
            "created_at": _iso(created),
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "deadline_at": _iso(row.get("deadline_at")),
            "cancel_after": _iso(row.get("cancel_after")),
            "queued_seconds": _seconds(created, started or finished),
            "running_seconds": _seconds(started, finished),
        },
        "metrics": {
            **metrics,
            "audio_seconds": metrics.get("audio_seconds"),
            "compute_seconds": metrics.get("compute_seconds"),
        },
        "webhook": webhook,
        "links": job_links(job_id),
    }


def partial_output(row: Mapping[str, Any]) -> dict[str, Any]:
    """A job_outputs row as clients see it (SSE `output` events, job.output webhooks): a transcript segment as
    transcript.json has it, or a finished output file (no storage key; GET /v1/jobs/{id} signs its URL)."""
    data = row["data"]
    if row["kind"] == "segment":
        return {"seq": row["seq"], "kind": "segment", "segment": data}
    file = {key: data.get(key) for key in ("name", "content_type", "bytes")} | {"metadata": data.get("metadata") or {}}
    return {"seq": row["seq"], "kind": "file", "file": file}


async def with_download_urls(
    state: AppState, resource: dict[str, Any], row: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`resource` with a fresh signed `url` and `expires_at` on each output. `row` (the jobs row the resource was
    built from) supplies the storage keys; without it the row is read from the database."""
    if not resource.get("outputs"):  # also a batch's resource (`batch.completed`), which has none
        return resource
    if row is None:
        async with state.pool.connection() as conn:
            row = await get_job(conn, UUID(resource["id"]))
        if row is None:
            return resource
    refs = {out["name"]: out["ref"] for out in row.get("outputs") or []}
    seconds = state.settings.signed_url_seconds
    expires_at = _iso(state.clock() + timedelta(seconds=seconds))
    outputs = []
    for out in resource["outputs"]:
        ref = refs.get(out["name"])
        if ref is None:
            outputs.append(out)
            continue
        url = await state.storage.signed_url(state.settings.outputs_bucket, ref, seconds, out["name"])
        outputs.append({**out, "url": url, "expires_at": expires_at})
    return {**resource, "outputs": outputs}


# ---- response models (OpenAPI) ----


class JobError(BaseModel):
    code: str | None = Field(description="Stable machine-readable code, e.g. `undecodable_audio`.")
    message: str | None


def batch_resource(row: Mapping[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """The public view of a batches row and its items counted by status. Pure: no clock, no I/O."""
    batch_id = str(row["id"])
    completed = row["completed_at"]
    return {
        "id": batch_id,
        "object": "batch",
        "task": row["task"],
        "params": row["params"],
        "item_count": row["item_count"],
        "cost": row["cost"],
        "counts": counts,
        "remaining": row["remaining"],
        "created_at": row["created_at"].isoformat(),
        "completed_at": None if completed is None else completed.isoformat(),
        "links": {"self": f"/v1/batches/{batch_id}", "jobs": f"/v1/batches/{batch_id}/jobs"},
    }


class JobOutput(BaseModel):
    name: str
    content_type: str | None
    bytes: int | None
    metadata: dict[str, Any] = {}
    url: str | None = Field(default=None, description="Signed download URL, minted on each GET.")
    expires_at: str | None = None


class JobTimings(BaseModel):
    created_at: str
    started_at: str | None
    finished_at: str | None
    deadline_at: str | None = Field(description="The deployment's limit on the running attempt (ends it `failed`).")
    cancel_after: str | None = Field(
        default=None, description="The job's own deadline (`deadline_s`, Cancel-After): unfinished by then, canceled."
    )
    queued_seconds: float | None
    running_seconds: float | None


class JobMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    audio_seconds: float | None = None
    compute_seconds: float | None = None


class JobWebhook(BaseModel):
    url: str
    events: list[str]
    last_delivery: dict[str, Any] | None


class JobLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    self_: str = Field(alias="self")
    events: str
    cancel: str


_EXAMPLE_ID = "5f0c6a3e-9a53-4c4e-9a0f-1d2f9b7c8e11"
JOB_EXAMPLE: dict[str, Any] = {
    "id": _EXAMPLE_ID,
    "object": "job",
    "task": "separate",
    "status": "succeeded",
    "progress": 1.0,
    "stage": "done",
    "cancel_requested": False,
    "cancel_reason": None,
    "params": {
        "model": "htdemucs",
        "two_stems": "vocals",
        "shifts": 1,
        "overlap": 0.25,
        "format": "wav",
        "stems": None,
    },
    "cost": 8,
    "input": {
        "source": "upload",
        "filename": "song.mp3",
        "bytes": 3145728,
        "duration_s": 121.4,
        "sample_rate": 44100,
        "channels": 2,
        "codec": "mp3",
        "container": "mp3",
    },
    "outputs": [
        {
            "name": "vocals.wav",
            "content_type": "audio/wav",
            "bytes": 21420044,
            "metadata": {},
            "url": "https://api.example.com/v1/files/outputs/...",
            "expires_at": "2026-01-01T13:00:00+00:00",
        }
    ],
    "outputs_expire_at": "2026-01-08T12:03:10+00:00",
    "outputs_deleted": False,
    "error": None,
    "timings": {
        "created_at": "2026-01-01T12:00:00+00:00",
        "started_at": "2026-01-01T12:00:02+00:00",
        "finished_at": "2026-01-01T12:03:10+00:00",
        "deadline_at": "2026-01-01T14:00:00+00:00",
        "cancel_after": None,
        "queued_seconds": 2.0,
        "running_seconds": 188.0,
    },
    "metrics": {"audio_seconds": 121.4, "compute_seconds": 185.2},
    "webhook": None,
    "links": job_links(_EXAMPLE_ID),
}


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: UUID
    object: Literal["job"] = "job"
    task: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    stage: str | None
    cancel_requested: bool
    cancel_reason: Literal["user", "deadline"] | None = Field(
        default=None, description="For a canceled job: `user` (a cancel request) or `deadline` (its `deadline_s`)."
    )
    params: dict[str, Any]
    cost: int = Field(description="Credits held at submit; captured on success, released otherwise.")
    input: dict[str, Any] | None
    outputs: list[JobOutput] = Field(
        description="The job's files with signed URLs; while it runs, those already finished (e.g. each stem as"
        " written)."
    )
    outputs_expire_at: str | None
    outputs_deleted: bool
    error: JobError | None
    timings: JobTimings
    metrics: JobMetrics
    webhook: JobWebhook | None
    links: JobLinks


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobOut]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next (older) page.")
