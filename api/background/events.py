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
from uuid import UUID

import psycopg

from api.database import connect
from api.state import STOP_CHECK_SECONDS, AppState, JobUpdate, stop_background_task
from db.jobs import FINAL_STATES, job_state

log = logging.getLogger("studio.events")

CHANNEL = "job_events"
# Put in a subscriber's queue when notifications may have been missed (reconnect, overflow): re-read the row.
RESYNC = None
_QUEUE_SIZE = 64
_LIVENESS_SECONDS = 30.0  # a silent LISTEN connection is probed this often, so a dead one is noticed

Update = JobUpdate


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
