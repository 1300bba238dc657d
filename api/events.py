"""Live job updates: one LISTEN connection per API process fanned out to SSE streams and `Prefer: wait`.

Migration 0004 announces every change of a job's status, progress or stage on the `job_events` channel with a
small JSON payload carrying the job's `event_seq`, a per-job counter that is also the SSE event id: a client
resuming with `Last-Event-ID` gets the current state if it is newer, so nothing per-client is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

import psycopg
from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row

from api import job_view
from api.app import STOP_CHECK_SECONDS, AppState, get_state, stop_background_task
from api.auth import CurrentUser, problem_doc
from api.database import connect
from api.errors import Problem
from db.jobs import get_job

log = logging.getLogger("studio.events")

CHANNEL = "job_events"
FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})
# Put in a subscriber's queue when notifications may have been missed (reconnect, overflow): re-read the row.
RESYNC = None
_QUEUE_SIZE = 64
_LIVENESS_SECONDS = 30.0  # a silent LISTEN connection is probed this often, so a dead one is noticed

Update = dict[str, Any] | None


class EventsHub:
    """Background service: owns the LISTEN connection and routes each job's notifications to its subscribers."""

    def __init__(self, state: AppState, *, keepalive_seconds: float = 15.0) -> None:
        self._state = state
        self.keepalive_seconds = keepalive_seconds  # SSE comment interval; proxies drop idle streams
        self._subscribers: dict[UUID, set[asyncio.Queue[Update]]] = {}
        self._listener: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        # Connect before returning, so a subscriber that joins right after startup misses nothing.
        self._listener = await self._listen()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="events-hub")

    async def stop(self) -> None:
        await stop_background_task(self._task, self._stopping)
        self._task = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: UUID) -> AsyncIterator[asyncio.Queue[Update]]:
        """A queue receiving the job's notifications (dicts: id, user_id, status, progress, stage, seq) or
        RESYNC. Subscribe BEFORE reading the job's row, so no change falls between the read and the first event."""
        queue: asyncio.Queue[Update] = asyncio.Queue(_QUEUE_SIZE)
        self._subscribers.setdefault(job_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._subscribers.get(job_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._subscribers[job_id]

    async def wait_until_final(self, job_id: UUID, timeout: float) -> None:
        """Return once the job is final (at once if it already is, or does not exist), or after `timeout` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self.subscribe(job_id) as queue:
                update: Update = RESYNC
                while True:
                    if update is RESYNC:
                        async with self._state.pool.connection() as conn:
                            row = await job_state(conn, job_id)
                        if row is None or row["status"] in FINAL_STATES:
                            return
                    elif update["status"] in FINAL_STATES:
                        return
                    update = await queue.get()

    async def _listen(self) -> psycopg.AsyncConnection:
        conn = await connect(self._state.database_url, self._state.settings)
        await conn.execute(f"LISTEN {CHANNEL}")
        return conn

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 1.0
        next_probe = loop.time() + _LIVENESS_SECONDS
        while not self._stopping.is_set():
            try:
                if self._listener is None:
                    self._listener = await self._listen()
                    # Changes made while we were disconnected were not announced to us.
                    self._broadcast_resync()
                    backoff = 1.0
                async for notify in self._listener.notifies(timeout=STOP_CHECK_SECONDS):
                    self._dispatch(notify.payload)
                if loop.time() >= next_probe:
                    await self._listener.execute("SELECT 1")
                    next_probe = loop.time() + _LIVENESS_SECONDS
            except (psycopg.Error, OSError) as exc:
                log.warning("events hub: LISTEN connection lost (%s); reconnecting in %.0f s", exc, backoff)
                if self._listener is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await self._listener.close()
                    self._listener = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _dispatch(self, payload: str) -> None:
        try:
            update = json.loads(payload)
            job_id = UUID(update["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("events hub: ignoring malformed notification %r", payload[:200])
            return
        for queue in self._subscribers.get(job_id, ()):
            _offer(queue, update)

    def _broadcast_resync(self) -> None:
        for queues in self._subscribers.values():
            for queue in queues:
                _offer(queue, RESYNC)


def _offer(queue: asyncio.Queue[Update], update: Update) -> None:
    try:
        queue.put_nowait(update)
    except asyncio.QueueFull:
        # A slow consumer: everything queued is stale anyway; have it re-read the current state instead.
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(RESYNC)


async def job_state(conn: psycopg.AsyncConnection, job_id: UUID) -> dict[str, Any] | None:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT id, user_id, status::text AS status, progress, stage, event_seq AS seq FROM jobs WHERE id = %s",
        (job_id,),
    )
    return await cursor.fetchone()


# ---- SSE ----

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
State = Annotated[AppState, Depends(get_state)]


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


def _parse_event_id(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


async def _final_resource(state: AppState, job_id: UUID) -> dict[str, Any]:
    async with state.pool.connection() as conn:
        row = await get_job(conn, job_id)
    assert row is not None  # jobs are not deleted while final events are being sent
    return await job_view.with_download_urls(state, job_view.job_resource(row), row)


async def stream_job_events(state: AppState, hub: EventsHub, job_id: UUID, after: int | None) -> AsyncIterator[str]:
    """SSE frames for one job: its current state (if newer than `after`), then each change, keep-alive comments
    while idle, and `done` (the job as GET returns it) after a final state, which ends the stream.

    `status`/`progress` frames carry `id: <seq>`; in a final state the `status` frame has no id and `done` carries
    it, so a client that reconnects before receiving `done` is sent both again."""
    async with hub.subscribe(job_id) as queue:
        sent_seq = after if after is not None else -1
        sent_status: str | None = None
        update: Update = RESYNC
        yield "retry: 3000\n\n"
        while True:
            if update is RESYNC:
                async with state.pool.connection() as conn:
                    update = await job_state(conn, job_id)
                if update is None:
                    return
            if update["seq"] > sent_seq:
                final = update["status"] in FINAL_STATES
                kind = "status" if update["status"] != sent_status else "progress"
                yield _sse(kind, _public(update), None if final else update["seq"])
                sent_seq, sent_status = update["seq"], update["status"]
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
    description="Events `status`, `progress` and `done` (data: the job as GET returns it; the stream then closes). "
    "Send `Last-Event-ID` to resume; `: keep-alive` comments while idle. 204 when resuming after `done`.",
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "example": 'event: progress\nid: 3\ndata: {"id":"...",'
                    '"status":"running","progress":0.4,"stage":"separating"}\n\n'
                }
            }
        },
        204: {"description": "The job is final and the client already received `done`: stop reconnecting."},
        401: problem_doc(401, "unauthorized", "Missing or invalid bearer token"),
        404: problem_doc(404, "not_found", "Job not found"),
        503: problem_doc(503, "events_unavailable", "Live events are not available"),
    },
)
async def job_events(
    job_id: UUID, user: CurrentUser, state: State, last_event_id: Annotated[str | None, Header()] = None
) -> Response:
    hub = state.services.get("events")
    if not isinstance(hub, EventsHub):
        raise Problem(503, "events_unavailable", "Live events are not available", "Poll GET /v1/jobs/{id} instead.")
    async with state.pool.connection() as conn:
        row = await job_state(conn, job_id)
    if row is None or row["user_id"] != user.id:
        raise Problem(404, "not_found", "Job not found", f"No job {job_id} for this account.")
    after = _parse_event_id(last_event_id)
    if after is not None and row["status"] in FINAL_STATES and after >= row["seq"]:
        # EventSource stops reconnecting on 204; a 200 here would have it reconnect forever.
        return Response(status_code=204)
    return StreamingResponse(
        stream_job_events(state, hub, job_id, after),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
