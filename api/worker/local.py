"""A local worker process: claims queued jobs from Postgres itself and runs them (SPEC section 4).

A job is handed to local workers by setting its `dispatch_id` to `LOCAL_READY` (api.jobs.dispatch decides when, under
the per-user running cap); migration 0006 then NOTIFYs `local_work`. Each worker LISTENs there, polls as a
fallback, and claims the oldest handed-over job with `FOR UPDATE SKIP LOCKED` (two workers never wait on or take
the same row) through the runner's `claim`, the same guarded UPDATE every Modal worker uses. The claim records
this worker's own dispatch id, `local:<pid>:<token>`, so the reaper can ask the supervisor (api.dispatchers.local)
whether the process running the job is still alive.

The process exits on its own when the API process that started it is gone, between jobs: an orphan would keep
claiming work that no reaper watches over.

It reports to the supervisor on its pipe: `Claimed` (the job, the attempt and how long it may run, from
`attempt_time_limit`) when it takes a job, then the job's final state when it ends it. A worker still on a job past
its time limit is killed by the supervisor, which fails the job `engine_timeout` (a hung engine cannot be stopped
from inside: its thread ignores everything, and the heartbeat would keep the job "running" until its deadline).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from api.database import connect
from api.jobs.settle import fail_out_of_attempts
from api.settings import Settings
from api.worker.process import worker_context
from api.worker.runner import WorkerContext, attempt_time_limit, claim, run_claimed
from db import jobs as db_jobs
from db.jobs import JobStatus

log = logging.getLogger("studio.worker")

LOCAL_READY = "local"  # dispatch id of a job waiting for any local worker
WORK_CHANNEL = "local_work"  # NOTIFY channel (migration 0006)
PARENT_CHECK_SECONDS = 1.0  # how often an idle worker checks that its API process is still there


@dataclass(frozen=True)
class Claimed:
    """Sent to the supervisor when this worker takes a job: it may run `seconds` from now."""

    job_id: UUID
    attempt: int
    seconds: float


def worker_dispatch_id(pid: int, token: str) -> str:
    return f"{LOCAL_READY}:{pid}:{token}"


def parse_worker_dispatch_id(dispatch_id: str) -> tuple[int, str] | None:
    """(pid, token) of a claiming worker's dispatch id; None for anything else (the ready marker, garbage)."""
    prefix, _, rest = dispatch_id.partition(":")
    pid, _, token = rest.partition(":")
    if prefix != LOCAL_READY or not pid.isdigit() or not token:
        return None
    return int(pid), token


async def claim_next(conn: AsyncConnection, settings: Settings, dispatch_id: str) -> dict[str, Any] | UUID | None:
    """Claim the oldest job handed to local workers: its row; or its id when it is ready but not claimable (out of
    attempts: the caller settles it, or it would be picked again forever); or None when nothing is waiting."""
    async with conn.transaction():
        job_id = await db_jobs.lock_next_ready(conn, LOCAL_READY)
        if job_id is None:
            return None
        # The row stays locked by this transaction, so the claim (a savepoint inside it) cannot lose a race.
        job = await claim(conn, job_id, settings, dispatch_id)
    return job if job is not None else job_id


async def run_next(ctx: WorkerContext, dispatch_id: str, on_claimed: Callable[[Claimed], None]) -> str | None:
    """Claim and run one job on a fresh connection; its final state, or None when nothing was waiting.
    `on_claimed` hears of the claim before the job runs."""
    async with await ctx.connect() as conn:
        job = await claim_next(conn, ctx.settings, dispatch_id)
        if job is None:
            return None
        if isinstance(job, UUID):
            settings = ctx.settings
            failed = await fail_out_of_attempts(
                conn, job, settings.max_attempts, settings.heartbeat_timeout_seconds, LOCAL_READY
            )
            return str(JobStatus.FAILED) if failed else "skipped"
        on_claimed(Claimed(job["id"], job["attempts"], attempt_time_limit(job, ctx.settings)))
        return await run_claimed(ctx, conn, job)


async def _wait_for_work(listener: AsyncConnection, seconds: float, parent_pid: int) -> bool:
    """Wait up to `seconds` for a `local_work` notification; False as soon as the parent process is gone."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        if os.getppid() != parent_pid:
            return False
        async for _ in listener.notifies(timeout=min(left, PARENT_CHECK_SECONDS), stop_after=1):
            return True
    return os.getppid() == parent_pid


async def _serve(
    settings: Settings, database_url: str, signing_key: str, token: str, parent: Connection, parent_pid: int
) -> None:
    ctx = worker_context(settings, database_url, signing_key)
    dispatch_id = worker_dispatch_id(os.getpid(), token)
    async with await connect(database_url, settings) as listener:
        await listener.execute(f"LISTEN {WORK_CHANNEL}")
        while os.getppid() == parent_pid:
            status = await run_next(ctx, dispatch_id, parent.send)
            if status is not None:
                parent.send(status)  # the supervisor wakes the reaper loop: the user's slot is free
                continue
            if not await _wait_for_work(listener, settings.local_worker_poll_seconds, parent_pid):
                break


def worker_main(
    settings: Settings, database_url: str, signing_key: str, token: str, parent: Connection, parent_pid: int
) -> None:
    """Entry point of a spawned worker process (api.dispatchers.local starts it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
    try:
        asyncio.run(_serve(settings, database_url, signing_key, token, parent, parent_pid))
    except (BrokenPipeError, EOFError):
        pass  # the API process went away while we reported a finished job
