"""Step 5 of 5: settle. Every way a job ends, side by side, through one finish path (`_finish`): the final state,
the capture (succeeded) or release (anything else) of its hold, and its webhook row, in one transaction.

before: the worker ran the job (`api.worker.runner`), or it never got there (dispatch failure, cancel, reaper).
after: nothing; final states are final (the trigger of migration 0002 refuses any later change).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection

from api.jobs.outbox import enqueue_batch_completed, enqueue_job_event
from api.jobs.view import DEADLINE_CODE
from db import jobs as db_jobs
from db import ledger
from db.jobs import JobStatus

log = logging.getLogger("studio.settle")

DISPATCH_FAILED = {"code": "dispatch_failed", "message": "The job could not be started; nothing was charged."}
USER_CANCELED = {"code": "canceled", "message": "Canceled by the user."}
# The job's own deadline (`deadline_s` / Cancel-After) passed: canceled, not failed, and told apart from a user's
# cancel by this code (the job view's `cancel_reason`).
CANCELED_AT_DEADLINE = {
    "code": DEADLINE_CODE,
    "message": "The job did not finish within its deadline_s and was canceled; no credits were charged.",
}
DEADLINE_EXCEEDED = {"code": "deadline_exceeded", "message": "The job did not finish in time; no credits were charged."}
WORKER_LOST = {
    "code": "worker_lost",
    "message": "The worker running this job stopped unexpectedly; no credits were charged.",
}
TOO_MANY_ATTEMPTS = {
    "code": "too_many_attempts",
    "message": "The job stopped its worker on every attempt (for example by running out of memory); no credits were"
    " charged. A shorter input may succeed.",
}
ENGINE_TIMEOUT = {
    "code": "engine_timeout",
    "message": "The job ran far longer than its input allows and was stopped; no credits were charged.",
}
WORKER_INTERRUPTED = {
    "code": "worker_interrupted",
    "message": "The worker running this job was interrupted; no credits were charged. Submit the job again.",
}
INTERNAL_ERROR = {
    "code": "internal_error",
    "message": "The job failed because of an error on our side; no credits were charged.",
}


async def _finish(
    conn: AsyncConnection,
    job_id: UUID,
    status: JobStatus,
    *,
    error: dict[str, str] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
    retention_seconds: float = 0,
    finished_at: datetime | None = None,
    expired: bool = False,
    cancel_requested: bool = False,
    webhook: bool = True,
) -> None:
    """The one finish path. Runs inside the caller's transaction, after it locked the row and checked its guard."""
    if status == JobStatus.SUCCEEDED:
        await db_jobs.write_succeeded(conn, job_id, outputs or [], metrics or {}, retention_seconds)
        if not await ledger.capture(conn, job_id):
            # The job succeeded but its hold was already released or expired: it ran free. Some path settled it
            # while it was still running, which is a bug to chase, not a state to pass over quietly.
            log.error("job %s succeeded but its hold was already settled: nothing captured", job_id)
    else:
        await db_jobs.write_ended(
            conn, job_id, status, error, metrics or {}, finished_at, cancel_requested=cancel_requested
        )
        await ledger.release(conn, job_id, expired=expired)
    if webhook:
        await enqueue_job_event(conn, job_id, f"job.{status}")
    await enqueue_batch_completed(conn, job_id, finished_at)


async def finish_attempt(
    conn: AsyncConnection,
    job_id: UUID,
    attempt: int,
    status: JobStatus,
    *,
    retention_seconds: float,
    error: dict[str, str] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    metrics: dict[str, Any] | None = None,
) -> JobStatus | None:
    """A worker's attempt ends. Returns the state written, or None when the job is no longer this attempt's
    (someone else settled it: nothing is written)."""
    try:
        async with conn.transaction():
            row = await db_jobs.lock_attempt(conn, job_id)
            if row is None or row[0] != JobStatus.RUNNING or row[1] != attempt:
                return None
            if status == JobStatus.SUCCEEDED and row[2]:
                status = (
                    JobStatus.CANCELED
                )  # the user canceled while we were storing outputs: honour it, charge nothing
            await _finish(
                conn, job_id, status, error=error, outputs=outputs, metrics=metrics, retention_seconds=retention_seconds
            )
    except psycopg.errors.CheckViolation:
        # The final-state trigger refused: another path settled the job between our check and our write.
        return None
    return status


async def requeue_preempted(conn: AsyncConnection, job_id: UUID, attempt: int) -> bool:
    """Not an ending: a preempted attempt hands its job back (queued again, its hold kept: nothing captured or
    released), so the retry's claim takes it at once instead of finding it `running` under a live heartbeat. False
    when the job is no longer this attempt's."""
    async with conn.transaction():
        return await db_jobs.requeue_attempt(conn, job_id, attempt)


async def fail_out_of_attempts(
    conn: AsyncConnection, job_id: UUID, max_attempts: int, heartbeat_timeout_seconds: float, dispatch_id: str | None
) -> bool:
    """A worker came to claim a job that has used all its attempts: fail it rather than run it once more."""
    async with conn.transaction():
        if not await db_jobs.lock_out_of_attempts(conn, job_id, max_attempts, heartbeat_timeout_seconds, dispatch_id):
            return False
        await _finish(conn, job_id, JobStatus.FAILED, error=TOO_MANY_ATTEMPTS)
    return True


async def fail_dispatch(conn: AsyncConnection, job_id: UUID) -> bool:
    """The dispatcher refused a fresh submit: fail the job and release its hold. No webhook: the submit's own
    error answer is the news. False when the job is no longer queued (a spawn that raised after creating the call
    may already be running it): nothing is written, and the job settles as any run does."""
    async with conn.transaction():
        if not await db_jobs.lock_queued(conn, job_id):
            return False
        await _finish(conn, job_id, JobStatus.FAILED, error=DISPATCH_FAILED, webhook=False)
    return True


async def cancel_queued(conn: AsyncConnection, job_id: UUID, user_id: UUID) -> bool:
    """The user cancels a job no worker has claimed. True only for the call that canceled it."""
    async with conn.transaction():
        if not await db_jobs.lock_queued(conn, job_id, user_id):
            return False
        await _finish(conn, job_id, JobStatus.CANCELED, error=USER_CANCELED, cancel_requested=True)
    return True


async def reap_past_deadline(conn: AsyncConnection, job_id: UUID, now: datetime) -> bool:
    """The reaper fails a job past its deadline (its hold may have expired meanwhile)."""
    async with conn.transaction():
        if not await db_jobs.lock_past_deadline(conn, job_id, now):
            return False
        await _finish(conn, job_id, JobStatus.FAILED, error=DEADLINE_EXCEEDED, finished_at=now, expired=True)
    return True


async def reap_cancel_after(conn: AsyncConnection, job_id: UUID, now: datetime) -> JobStatus | None:
    """The reaper cancels a job past its own deadline: canceled with `CANCELED_AT_DEADLINE`, hold released, webhook
    `job.canceled`. Returns the state the job was in (None: not this call's to settle). A running worker finds the
    job no longer its own at its next heartbeat and stops; a queued job's dispatch is the caller's to cancel."""
    async with conn.transaction():
        was = await db_jobs.lock_past_cancel_after(conn, job_id, now)
        if was is None:
            return None
        # cancel_requested stays as it was: it records a user's request, and `cancel_reason` tells the two apart.
        await _finish(conn, job_id, JobStatus.CANCELED, error=CANCELED_AT_DEADLINE, finished_at=now)
    return was


async def reap_stale(conn: AsyncConnection, job_id: UUID, attempts: int, before: datetime, now: datetime) -> bool:
    """The reaper fails a running job whose heartbeat stopped before `before`."""
    async with conn.transaction():
        if not await db_jobs.lock_stale(conn, job_id, attempts, before):
            return False
        await _finish(conn, job_id, JobStatus.FAILED, error=WORKER_LOST, finished_at=now)
    return True


async def reap_ended_dispatch(
    conn: AsyncConnection,
    job_id: UUID,
    status: str,
    attempts: int,
    dispatch_id: str,
    ending: JobStatus,
    now: datetime,
) -> bool:
    """The reaper settles a job whose execution is gone: `canceled` when a cancel was asked, else `failed`."""
    async with conn.transaction():
        if not await db_jobs.lock_dispatch(conn, job_id, status, attempts, dispatch_id):
            return False
        error = None if ending == JobStatus.CANCELED else WORKER_LOST
        await _finish(conn, job_id, ending, error=error, finished_at=now)
    return True


async def reap_queued_cancel(conn: AsyncConnection, job_id: UUID, now: datetime) -> bool:
    """The reaper cancels a queued job with a cancel request that was never dispatched."""
    async with conn.transaction():
        if not await db_jobs.lock_queued_cancel(conn, job_id):
            return False
        await _finish(conn, job_id, JobStatus.CANCELED, finished_at=now)
    return True
