"""The reaper and the retention sweep: plain functions a schedule calls (Modal Cron), and `ReaperLoop`, the
background service that runs them in local mode together with `dispatch_ready`.

Safe to run twice at once: each job is settled in its own transaction that re-checks the reason under
`FOR UPDATE SKIP LOCKED`, and the ledger's release is a guarded transition, so a job is reaped once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.app import stop_background_task
from api.protocols import Dispatcher, Storage
from api.settings import Settings
from db import ledger

if TYPE_CHECKING:
    from api.app import AppState

log = logging.getLogger("studio.reaper")

DEADLINE_EXCEEDED = {"code": "deadline_exceeded", "message": "The job did not finish in time; no credits were charged."}
WORKER_LOST = {
    "code": "worker_lost",
    "message": "The worker running this job stopped unexpectedly; no credits were charged.",
}
_FINAL = "('succeeded', 'failed', 'canceled')"


@dataclass
class ReapReport:
    failed: list[UUID] = field(default_factory=list)
    canceled: list[UUID] = field(default_factory=list)
    requeued: list[UUID] = field(default_factory=list)  # queued jobs whose dispatch vanished: dispatched again


@dataclass
class RetentionReport:
    inputs_deleted: int = 0
    outputs_deleted: int = 0  # jobs whose outputs were removed
    idempotency_records_deleted: int = 0


@contextlib.asynccontextmanager
async def _connection(conn_or_pool: AsyncConnection | AsyncConnectionPool) -> AsyncIterator[AsyncConnection]:
    if isinstance(conn_or_pool, AsyncConnectionPool):
        async with conn_or_pool.connection() as conn:
            yield conn
    else:
        yield conn_or_pool


async def _settle(
    conn: AsyncConnection,
    job_id: UUID,
    guard: str,
    args: dict[str, Any],
    status: str,
    error: dict[str, str] | None,
    now: datetime,
    *,
    expired: bool = False,
) -> bool:
    """Finalise one job if `guard` still holds; False when another reaper or the worker got there first."""
    from api.webhooks import enqueue_job_event

    async with conn.transaction():
        cursor = await conn.execute(
            f"SELECT id FROM jobs WHERE id = %(id)s AND {guard} FOR UPDATE SKIP LOCKED", {"id": job_id, **args}
        )
        if await cursor.fetchone() is None:
            return False
        await conn.execute(
            "UPDATE jobs SET status = %s, error = %s, stage = NULL, finished_at = %s WHERE id = %s",
            (status, Jsonb(error) if error else None, now, job_id),
        )
        await ledger.release(conn, job_id, expired=expired)
        await enqueue_job_event(conn, job_id, f"job.{status}")
    return True


async def reap(
    conn_or_pool: AsyncConnection | AsyncConnectionPool, dispatcher: Dispatcher, settings: Settings, now: datetime
) -> ReapReport:
    """Fail jobs past their deadline, with a stale heartbeat, or whose dispatch has ended; cancel jobs whose
    cancel can no longer be honoured by a worker; requeue queued jobs whose dispatch vanished."""
    report = ReapReport()
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_seconds)
    async with _connection(conn_or_pool) as conn:
        cursor = await conn.execute(
            "SELECT id, dispatch_id FROM jobs WHERE status IN ('queued', 'running') AND deadline_at <= %s", (now,)
        )
        for job_id, dispatch_id in await cursor.fetchall():
            guard = "status IN ('queued', 'running') AND deadline_at <= %(now)s"
            if await _settle(conn, job_id, guard, {"now": now}, "failed", DEADLINE_EXCEEDED, now, expired=True):
                report.failed.append(job_id)
                if dispatch_id:
                    await _cancel_quietly(dispatcher, dispatch_id)

        cursor = await conn.execute(
            "SELECT id, attempts FROM jobs WHERE status = 'running'"
            " AND coalesce(heartbeat_at, started_at, created_at) < %s",
            (stale_before,),
        )
        for job_id, attempts in await cursor.fetchall():
            guard = (
                "status = 'running' AND attempts = %(attempts)s"
                " AND coalesce(heartbeat_at, started_at, created_at) < %(before)s"
            )
            args = {"attempts": attempts, "before": stale_before}
            if await _settle(conn, job_id, guard, args, "failed", WORKER_LOST, now):
                report.failed.append(job_id)

        # Liveness is asked outside any transaction (on Modal it is a network call); the settle re-checks that
        # the job is still in the state we judged.
        cursor = await conn.execute(
            "SELECT id, status::text, attempts, dispatch_id, cancel_requested FROM jobs"
            " WHERE status IN ('queued', 'running') AND dispatch_id IS NOT NULL"
        )
        for job_id, status, attempts, dispatch_id, cancel_requested in await cursor.fetchall():
            if await dispatcher.is_alive(dispatch_id):
                continue
            guard = "status = %(status)s AND attempts = %(attempts)s AND dispatch_id = %(dispatch)s"
            args = {"status": status, "attempts": attempts, "dispatch": dispatch_id}
            if cancel_requested:
                if await _settle(conn, job_id, guard, args, "canceled", None, now):
                    report.canceled.append(job_id)
            elif status == "running":
                if await _settle(conn, job_id, guard, args, "failed", WORKER_LOST, now):
                    report.failed.append(job_id)
            else:
                # Never claimed (e.g. the API restarted with it waiting in its pool): start it again.
                cursor = await conn.execute(
                    "UPDATE jobs SET dispatch_id = NULL WHERE id = %s AND status = 'queued' AND dispatch_id = %s"
                    " RETURNING id",
                    (job_id, dispatch_id),
                )
                if await cursor.fetchone() is not None:
                    report.requeued.append(job_id)

        # A queued job with a cancel request is never dispatched; settle it rather than let it wait for its deadline.
        cursor = await conn.execute(
            "SELECT id FROM jobs WHERE status = 'queued' AND cancel_requested AND dispatch_id IS NULL"
        )
        for (job_id,) in await cursor.fetchall():
            guard = "status = 'queued' AND cancel_requested AND dispatch_id IS NULL"
            if await _settle(conn, job_id, guard, {}, "canceled", None, now):
                report.canceled.append(job_id)
    return report


async def _cancel_quietly(dispatcher: Dispatcher, dispatch_id: str) -> None:
    try:
        await dispatcher.cancel(dispatch_id)
    except Exception:
        log.warning("could not cancel dispatch %s", dispatch_id, exc_info=True)


async def clean_retention(
    conn_or_pool: AsyncConnection | AsyncConnectionPool,
    storage: Storage,
    settings: Settings,
    now: datetime,
    *,
    batch: int = 500,
) -> RetentionReport:
    """Delete inputs of final jobs and outputs past `outputs_expire_at` (storage first, then the record), and
    idempotency records past their 24 h."""
    from api.idempotency import purge_expired

    report = RetentionReport()
    async with _connection(conn_or_pool) as conn:
        cursor = await conn.execute(
            f"SELECT id, input_ref FROM jobs WHERE status IN {_FINAL} AND input_ref IS NOT NULL LIMIT %s", (batch,)
        )
        for job_id, ref in await cursor.fetchall():
            await storage.delete(settings.inputs_bucket, [ref])
            await conn.execute("UPDATE jobs SET input_ref = NULL WHERE id = %s AND input_ref = %s", (job_id, ref))
            report.inputs_deleted += 1

        cursor = await conn.execute(
            "SELECT id, outputs FROM jobs WHERE outputs_expire_at <= %s AND outputs_deleted_at IS NULL"
            " ORDER BY outputs_expire_at LIMIT %s",
            (now, batch),
        )
        for job_id, outputs in await cursor.fetchall():
            refs = [item["ref"] for item in outputs or [] if item.get("ref")]
            if refs:
                await storage.delete(settings.outputs_bucket, refs)
            await conn.execute(
                "UPDATE jobs SET outputs_deleted_at = %s WHERE id = %s AND outputs_deleted_at IS NULL", (now, job_id)
            )
            report.outputs_deleted += 1
        report.idempotency_records_deleted = await purge_expired(conn)
    return report


class ReaperLoop:
    """Local mode's scheduler: reap, start waiting jobs, sweep retention; every `reaper_interval_seconds`, and at
    once whenever a local run ends (its user has a free slot)."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> None:
        from api.dispatch import dispatch_ready

        state = self.state
        report = await reap(state.pool, state.dispatcher, state.settings, state.clock())
        if report.failed or report.canceled:
            log.info("reaped jobs: failed %s, canceled %s", report.failed, report.canceled)
        await dispatch_ready(state)
        await clean_retention(state.pool, state.storage, state.settings, state.clock())

    async def start(self) -> None:
        from api.local_pool import LocalDispatcher

        wake = self._wake = asyncio.Event()
        self._stopping.clear()
        if isinstance(self.state.dispatcher, LocalDispatcher):
            self.state.dispatcher.on_finished(wake.set)
        self._task = asyncio.create_task(self._run(wake))

    async def _run(self, wake: asyncio.Event) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("reaper pass failed; retrying next interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.state.settings.reaper_interval_seconds)
            wake.clear()

    async def stop(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()  # end the wait for the next interval now
        await stop_background_task(self._task, self._stopping)
        self._task = None
