"""Step 3 of 5: dispatch. Starting jobs, and the per-user cap on jobs running at once (SPEC section 3, fair use).

before: `api.jobs.submit` committed the job and its hold. after: the worker runs it (`api.worker.runner`).

A job is "taken" when it is running or queued with a dispatch id (started somewhere, not yet claimed). Each user
may have at most `settings.max_running_jobs_per_user` taken jobs; the rest wait queued without a dispatch id until
`dispatch_ready` (run by the reaper loop, and woken whenever a local run ends) starts them. Deciding and
dispatching happen under a per-user advisory lock, so two API processes never both start the user's last slot.
The dispatchers themselves (local pool, Modal) are in `api.dispatchers`.
"""

from __future__ import annotations

import logging
from uuid import UUID

from api.jobs.settle import fail_dispatch
from api.state import AppState
from db import jobs as db_jobs

log = logging.getLogger("studio.dispatch")


class DispatchError(Exception):
    """The job could not be started; it has been failed and its hold released (nothing is charged)."""


async def dispatch_job(state: AppState, job_id: UUID) -> None:
    """Start a freshly submitted (committed) job now if its user has a free slot, else leave it queued.

    Raises DispatchError when the dispatcher refuses and the job is still queued: the job is then failed and its
    hold released, so a submit that answers with an error leaves nothing held. When a worker claimed the job
    despite the error, it returns normally (logged as an error) and the job runs as any other.
    """
    failure: Exception | None = None
    async with state.pool.connection() as conn:
        async with conn.transaction():
            user_id = await db_jobs.owner(conn, job_id)
            if user_id is None:
                raise LookupError(f"job {job_id} does not exist")
            await db_jobs.lock_user_dispatch(conn, user_id)
            # Re-read under the lock: another dispatcher may have started it meanwhile.
            task = await db_jobs.undispatched_task(conn, job_id)
            if task is None or await db_jobs.taken_count(conn, user_id) >= state.settings.max_running_jobs_per_user:
                return
            try:
                dispatch_id = await state.dispatcher.dispatch(job_id, task)
            except Exception as exc:  # any dispatcher failure (Modal outage, pool down) fails the submit
                failure = exc
            else:
                await db_jobs.set_dispatch_id(conn, job_id, dispatch_id)
                return
        if not await fail_dispatch(conn, job_id):
            # The dispatcher raised, yet a worker already claimed the job (the call was created before the error):
            # it runs and is charged as usual, so the submit must not answer "nothing charged".
            log.error(
                "dispatch of job %s raised %r but a worker already claimed it; the job is left to run", job_id, failure
            )
            return
        log.error("dispatch of job %s failed: %r", job_id, failure)
    raise DispatchError(str(failure)) from failure


async def dispatch_ready(state: AppState) -> int:
    """Start queued jobs that have no dispatch, oldest first, as far as their users' slots allow.

    Returns how many were started. A dispatcher failure leaves the job queued for the next pass (its deadline
    bounds the retries: the reaper fails it then).
    """
    started = 0
    now = state.clock()
    async with state.pool.connection() as conn:
        for user_id in await db_jobs.users_with_ready_jobs(conn, now):
            async with conn.transaction():
                await db_jobs.lock_user_dispatch(conn, user_id)
                slots = state.settings.max_running_jobs_per_user - await db_jobs.taken_count(conn, user_id)
                if slots <= 0:
                    continue
                for job_id, task in await db_jobs.ready_jobs(conn, user_id, now, slots):
                    try:
                        dispatch_id = await state.dispatcher.dispatch(job_id, task)
                    except Exception:
                        log.exception("dispatch of queued job %s failed; will retry", job_id)
                        break
                    await db_jobs.set_dispatch_id(conn, job_id, dispatch_id)
                    started += 1
    return started
