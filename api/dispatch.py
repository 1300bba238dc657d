"""Starting jobs: the per-user cap on jobs running at once (SPEC section 3, fair use).

A job is "taken" when it is running or queued with a dispatch id (started somewhere, not yet claimed). Each user
may have at most `settings.max_running_jobs_per_user` taken jobs; the rest wait queued without a dispatch id until
`dispatch_ready` (run by the reaper loop, and woken whenever a local run ends) starts them. Deciding and
dispatching happen under a per-user advisory lock, so two API processes never both start the user's last slot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from api.settings import Settings
from db import ledger

if TYPE_CHECKING:
    from api.app import AppState

log = logging.getLogger("studio.dispatch")


class DispatchError(Exception):
    """The job could not be started; it has been failed and its hold released (nothing is charged)."""


async def _lock_user(conn: AsyncConnection, user_id: UUID) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('dispatch:' || %s::text, 0))", (user_id,))


async def _free_slots(conn: AsyncConnection, user_id: UUID, settings: Settings) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM jobs WHERE user_id = %s"
        " AND (status = 'running' OR (status = 'queued' AND dispatch_id IS NOT NULL))",
        (user_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    return settings.max_running_jobs_per_user - int(row[0])


async def dispatch_job(state: AppState, job_id: UUID) -> None:
    """Start a freshly submitted (committed) job now if its user has a free slot, else leave it queued.

    Raises DispatchError when the dispatcher refuses: the job is then failed and its hold released, so a submit
    that answers with an error leaves nothing held.
    """
    failure: Exception | None = None
    async with state.pool.connection() as conn:
        async with conn.transaction():
            row = await (await conn.execute("SELECT user_id FROM jobs WHERE id = %s", (job_id,))).fetchone()
            if row is None:
                raise LookupError(f"job {job_id} does not exist")
            await _lock_user(conn, row[0])
            # Re-read under the lock: another dispatcher may have started it meanwhile.
            cursor = await conn.execute(
                "SELECT task FROM jobs WHERE id = %s AND status = 'queued' AND dispatch_id IS NULL"
                " AND NOT cancel_requested",
                (job_id,),
            )
            job = await cursor.fetchone()
            if job is None or await _free_slots(conn, row[0], state.settings) <= 0:
                return
            try:
                dispatch_id = await state.dispatcher.dispatch(job_id, job[0])
            except Exception as exc:  # any dispatcher failure (Modal outage, pool down) fails the submit
                failure = exc
            else:
                await conn.execute("UPDATE jobs SET dispatch_id = %s WHERE id = %s", (dispatch_id, job_id))
                return
        log.error("dispatch of job %s failed: %r", job_id, failure)
        async with conn.transaction():
            await conn.execute(
                "UPDATE jobs SET status = 'failed', error = %s, finished_at = now()"
                " WHERE id = %s AND status = 'queued'",
                (
                    Jsonb({"code": "dispatch_failed", "message": "The job could not be started; nothing was charged."}),
                    job_id,
                ),
            )
            await ledger.release(conn, job_id)
    raise DispatchError(str(failure)) from failure


async def dispatch_ready(state: AppState) -> int:
    """Start queued jobs that have no dispatch, oldest first, as far as their users' slots allow.

    Returns how many were started. A dispatcher failure leaves the job queued for the next pass (its deadline
    bounds the retries: the reaper fails it then).
    """
    started = 0
    now = state.clock()
    async with state.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT DISTINCT user_id FROM jobs WHERE status = 'queued' AND dispatch_id IS NULL"
            " AND NOT cancel_requested AND deadline_at > %s",
            (now,),
        )
        users = [row[0] for row in await cursor.fetchall()]
        for user_id in users:
            async with conn.transaction():
                await _lock_user(conn, user_id)
                slots = await _free_slots(conn, user_id, state.settings)
                if slots <= 0:
                    continue
                cursor = await conn.execute(
                    "SELECT id, task FROM jobs WHERE user_id = %s AND status = 'queued' AND dispatch_id IS NULL"
                    " AND NOT cancel_requested AND deadline_at > %s ORDER BY created_at, id LIMIT %s",
                    (user_id, now, slots),
                )
                for job_id, task in await cursor.fetchall():
                    try:
                        dispatch_id = await state.dispatcher.dispatch(job_id, task)
                    except Exception:
                        log.exception("dispatch of queued job %s failed; will retry", job_id)
                        break
                    await conn.execute("UPDATE jobs SET dispatch_id = %s WHERE id = %s", (dispatch_id, job_id))
                    started += 1
    return started
