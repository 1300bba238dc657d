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
from uuid import UUID

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from api.dispatchers.local import LocalDispatcher
from api.jobs import settle
from api.jobs.dispatch import dispatch_ready
from api.jobs.idempotency import purge_expired
from api.protocols import Dispatcher, Liveness, Storage
from api.settings import Settings
from api.state import AppState, stop_background_task
from db import jobs as db_jobs
from db import uploads as db_uploads
from db.jobs import JobStatus

log = logging.getLogger("studio.reaper")


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
    uploads_expired: int = 0  # resumable uploads no job took in time: their objects deleted


@contextlib.asynccontextmanager
async def _connection(conn_or_pool: AsyncConnection | AsyncConnectionPool) -> AsyncIterator[AsyncConnection]:
    if isinstance(conn_or_pool, AsyncConnectionPool):
        async with conn_or_pool.connection() as conn:
            yield conn
    else:
        yield conn_or_pool


async def reap(
    conn_or_pool: AsyncConnection | AsyncConnectionPool, dispatcher: Dispatcher, settings: Settings, now: datetime
) -> ReapReport:
    """Cancel jobs past their own deadline (`deadline_s`); fail jobs past the deployment's deadline, with a stale
    heartbeat, or whose dispatch has ended; cancel jobs whose cancel can no longer be honoured by a worker; requeue
    queued jobs whose dispatch vanished."""
    report = ReapReport()
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_seconds)
    async with _connection(conn_or_pool) as conn:
        # The job's own deadline first: a job past both ends as the user asked (canceled), not failed.
        for job_id, dispatch_id in await db_jobs.past_cancel_after(conn, now):
            was = await settle.reap_cancel_after(conn, job_id, now)
            if was is None:
                continue
            report.canceled.append(job_id)
            if was == JobStatus.QUEUED and dispatch_id:
                # Dispatched, never claimed: drop the call (as a user's cancel does). A running attempt is left to
                # stop at its next heartbeat: cancelling its execution would interrupt it wherever it is.
                await _cancel_quietly(dispatcher, dispatch_id, terminate=False)

        for job_id, dispatch_id in await db_jobs.past_deadline(conn, now):
            if await settle.reap_past_deadline(conn, job_id, now):
                report.failed.append(job_id)
                if dispatch_id:
                    # Terminate: a hung engine reports no progress, so it would never see the job end.
                    await _cancel_quietly(dispatcher, dispatch_id, terminate=True)

        for job_id, attempts in await db_jobs.stale_running(conn, stale_before):
            if await settle.reap_stale(conn, job_id, attempts, stale_before, now):
                report.failed.append(job_id)

        # Liveness is asked outside any transaction (on Modal it is a network call); the settle re-checks that
        # the job is still in the state we judged.
        for job_id, status, attempts, dispatch_id, cancel_requested in await db_jobs.dispatched_unfinished(conn):
            if await dispatcher.is_alive(dispatch_id) is not Liveness.DEAD:
                continue  # alive, or the backend could not be asked this pass (never read as "gone")
            if cancel_requested:
                ending = JobStatus.CANCELED
            elif status == JobStatus.RUNNING:
                ending = JobStatus.FAILED
            else:
                # Never claimed (e.g. the API restarted with it waiting in its pool): start it again.
                if await db_jobs.requeue(conn, job_id, dispatch_id):
                    report.requeued.append(job_id)
                continue
            if await settle.reap_ended_dispatch(conn, job_id, status, attempts, dispatch_id, ending, now):
                (report.canceled if ending == JobStatus.CANCELED else report.failed).append(job_id)

        # A queued job with a cancel request is never dispatched; settle it rather than let it wait for its deadline.
        for job_id in await db_jobs.queued_with_cancel(conn):
            if await settle.reap_queued_cancel(conn, job_id, now):
                report.canceled.append(job_id)
    return report


async def _cancel_quietly(dispatcher: Dispatcher, dispatch_id: str, *, terminate: bool) -> None:
    try:
        await dispatcher.cancel(dispatch_id, terminate=terminate)
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
    """Delete inputs of final jobs and outputs past `outputs_expire_at` (storage first, then the record),
    idempotency records past their 24 h, and resumable uploads unused past `expires_at` (the record first: once it is
    `expired` no submit can take the upload, so its object can go)."""
    report = RetentionReport()
    async with _connection(conn_or_pool) as conn:
        for job_id, refs in await db_jobs.final_inputs(conn, batch):
            await storage.delete(settings.inputs_bucket, refs)
            await db_jobs.clear_input_ref(conn, job_id, refs[0])
            report.inputs_deleted += 1

        for job_id, outputs in await db_jobs.expired_outputs(conn, now, batch):
            refs = [item["ref"] for item in outputs if item.get("ref")]
            if refs:
                await storage.delete(settings.outputs_bucket, refs)
            await db_jobs.mark_outputs_deleted(conn, job_id, now)
            report.outputs_deleted += 1
        report.idempotency_records_deleted = await purge_expired(conn)

        for upload_id, key in await db_uploads.expired(conn, now, batch):
            if await db_uploads.mark_expired(conn, upload_id, now):
                await storage.delete(settings.inputs_bucket, [key])
                report.uploads_expired += 1
    return report


class ReaperLoop:
    """Local mode's scheduler: reap, start waiting jobs, sweep retention; every `reaper_interval_seconds`, at once
    whenever a local run ends (its user has a free slot) or a job with a deadline is submitted, and at the earliest
    job deadline (`deadline_s`) when that comes sooner than the interval."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> None:
        state = self.state
        report = await reap(state.pool, state.dispatcher, state.settings, state.clock())
        if report.failed or report.canceled:
            log.info("reaped jobs: failed %s, canceled %s", report.failed, report.canceled)
        await dispatch_ready(state)
        await clean_retention(state.pool, state.storage, state.settings, state.clock())

    async def next_wait(self) -> float:
        """Seconds until the next pass: the interval, or less when a job's deadline comes first (on the state's
        clock, so tests drive it)."""
        interval = self.state.settings.reaper_interval_seconds
        async with self.state.pool.connection() as conn:
            deadline = await db_jobs.next_cancel_after(conn)
        if deadline is None:
            return interval
        return min(interval, max(0.0, (deadline - self.state.clock()).total_seconds()))

    async def start(self) -> None:
        wake = self._wake = asyncio.Event()
        self._stopping.clear()
        if isinstance(self.state.dispatcher, LocalDispatcher):
            self.state.dispatcher.on_finished(wake.set)
        self.state.wake_reaper = wake.set
        self._task = asyncio.create_task(self._run(wake))

    async def _run(self, wake: asyncio.Event) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("reaper pass failed; retrying next interval")
            wait = self.state.settings.reaper_interval_seconds
            with contextlib.suppress(Exception):  # the database being away only means the plain interval
                wait = await self.next_wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    async def stop(self) -> None:
        self.state.wake_reaper = None
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()  # end the wait for the next interval now
        await stop_background_task(self._task, self._stopping)
        self._task = None
