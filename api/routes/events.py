"""GET /v1/jobs/{id}/events: follow a job as server-sent events, fed by the events hub (`api.background.events`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from api.background.events import RESYNC, Update
from api.deps import CurrentUser, State
from api.errors import Problem
from api.jobs import view
from api.ratelimit import UserSlots
from api.routes.responses import problem_doc
from api.state import AppState, JobEvents
from db.jobs import FINAL_STATES, get_job, job_state, partial_outputs

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def _public(update: dict[str, Any]) -> dict[str, Any]:
    # float4 progress reads back as 0.30000001192...; clients want 0.3.
    return {
        "id": str(update["id"]),
        "status": update["status"],
        "progress": round(float(update["progress"]), 4),
        "stage": update["stage"],
    }


_MAX_EVENT_ID_DIGITS = 18  # event ids are a bigint sequence


def _parse_event_id(value: str | None) -> int | None:
    """An id we sent (ASCII digits); anything else is no id, and the stream starts over (never an error)."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= _MAX_EVENT_ID_DIGITS):
        return None
    return int(value)


class _SlotResponse(StreamingResponse):
    """A stream holding one of its user's slots, released however the response ends (done, disconnect, error)."""

    def __init__(self, content: AsyncIterator[str], slots: UserSlots, user_id: UUID, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._slots, self._user_id = slots, user_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release(self._user_id)


async def _public_output(state: AppState, job_id: UUID, row: dict[str, Any]) -> dict[str, Any]:
    """An `output` event's data: the job id and the partial output, a file with a fresh signed URL."""
    output = {"id": str(job_id), **view.partial_output(row)}
    if row["kind"] == "file":
        seconds = state.settings.signed_url_seconds
        url = await state.storage.signed_url(
            state.settings.outputs_bucket, row["data"]["ref"], seconds, row["data"]["name"]
        )
        output["file"]["url"] = url
    return output


async def _final_resource(state: AppState, job_id: UUID) -> dict[str, Any]:
    async with state.pool.connection() as conn:
        row = await get_job(conn, job_id)
    assert row is not None  # jobs are not deleted while final events are being sent
    return await view.with_download_urls(state, view.job_resource(row), row)


async def stream_job_events(state: AppState, hub: JobEvents, job_id: UUID, after: int | None) -> AsyncIterator[str]:
    """SSE frames for one job: its current state (if newer than `after`), then each change, keep-alive comments
    while idle, and `done` (the job as GET returns it) after a final state, which ends the stream.

    `status`/`progress` frames carry `id: <seq>`; in a final state the `status` frame has no id and `done` carries
    it, so a client that reconnects before receiving `done` is sent both again."""
    async with hub.subscribe(job_id) as queue:
        sent_seq = after if after is not None else -1
        sent_status: str | None = None
        sent_state: tuple[Any, ...] | None = None
        update: Update = RESYNC
        yield "retry: 3000\n\n"
        while True:
            if update is RESYNC:
                async with state.pool.connection() as conn:
                    update = await job_state(conn, job_id)
                if update is None:
                    return
            if update["seq"] > sent_seq:
                # Partial outputs share the job's event ids: those announced up to this update, then the state if
                # it changed (an update that only announced outputs repeats no progress frame).
                async with state.pool.connection() as conn:
                    outputs = await partial_outputs(conn, job_id, after_seq=sent_seq, up_to_seq=update["seq"])
                for output in outputs:
                    yield _sse("output", await _public_output(state, job_id, output), output["seq"])
                final = update["status"] in FINAL_STATES
                public = _public(update)
                current = (public["status"], public["progress"], public["stage"])
                if current != sent_state or final:
                    kind = "status" if update["status"] != sent_status else "progress"
                    yield _sse(kind, public, None if final else update["seq"])
                sent_seq, sent_status, sent_state = update["seq"], update["status"], current
                if final:
                    yield _sse("done", await _final_resource(state, job_id), update["seq"])
                    return
            while True:  # wait for the next update, keeping the connection alive meanwhile
                try:
                    update = await asyncio.wait_for(queue.get(), hub.keepalive_seconds)
                    break
                except TimeoutError:
                    yield ": keep-alive\n\n"


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    summary="Follow a job as server-sent events",
    description="Events `status`, `progress`, `output` and `done` (data: the job as GET returns it; the stream then "
    "closes). `output` is a partial result while the job runs: a transcript segment as decoded (`kind: segment`, "
    "`segment` as in transcript.json) or a finished output file (`kind: file`, `file` with a signed `url`), each "
    "once, in order. Send `Last-Event-ID` to resume: outputs and changes after that id follow; `: keep-alive` "
    "comments while idle. 204 when resuming after `done`.",
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'event: progress\nid: 3\ndata: {"id":"...",'
                    '"status":"running","progress":0.4,"stage":"transcribing"}\n\n'
                    'event: output\nid: 4\ndata: {"id":"...","seq":4,"kind":"segment",'
                    '"segment":{"id":0,"start":0.0,"end":2.5,"text":"Hello there."}}\n\n'
                }
            }
        },
        204: {"description": "The job is final and the client already received `done`: stop reconnecting."},
        401: problem_doc(401, "unauthorized", "Missing or invalid bearer token"),
        404: problem_doc(404, "not_found", "Job not found"),
        429: problem_doc(
            429,
            "too_many_streams",
            "Too many open event streams for this user (or `rate_limited`, `too_many_failed_auth`)",
        ),
        503: problem_doc(503, "events_unavailable", "Live events are not available"),
    },
)
async def job_events(
    job_id: UUID, user: CurrentUser, state: State, last_event_id: Annotated[str | None, Header()] = None
) -> Response:
    hub = state.events
    if hub is None:
        raise Problem(503, "events_unavailable", "Live events are not available", "Poll GET /v1/jobs/{id} instead.")
    async with state.pool.connection() as conn:
        row = await job_state(conn, job_id)
    if row is None or row["user_id"] != user.id:
        raise Problem(404, "not_found", "Job not found", f"No job {job_id} for this account.")
    after = _parse_event_id(last_event_id)
    if after is not None and row["status"] in FINAL_STATES and after >= row["seq"]:
        # EventSource stops reconnecting on 204; a 200 here would have it reconnect forever.
        return Response(status_code=204)
    state.event_streams.acquire(user.id, state.settings.max_event_streams_per_user)
    return _SlotResponse(
        stream_job_events(state, hub, job_id, after),
        state.event_streams,
        user.id,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
