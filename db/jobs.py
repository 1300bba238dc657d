"""SQL for the jobs API: create, read, list and cancel. State changes are guarded by the current status in the
WHERE clause, so a cancel racing a worker (or a reaper) changes a row at most once; the trigger in 0002 makes
final states final whatever path tries.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

FINAL_STATES = ("succeeded", "failed", "canceled")
# Newest deliveries' status rides along with the job so GET shows the last webhook outcome without a second query.
_SELECT = (
    "SELECT j.*, d.last_delivery FROM jobs j LEFT JOIN LATERAL ("
    " SELECT jsonb_build_object('event', w.event, 'state', w.state, 'attempts', w.attempts,"
    " 'status_code', w.last_status_code, 'at', coalesce(w.last_attempt_at, w.created_at)) AS last_delivery"
    " FROM webhook_deliveries w WHERE w.job_id = j.id ORDER BY w.created_at DESC LIMIT 1) d ON true"
)


async def insert_job(
    conn: AsyncConnection,
    *,
    job_id: UUID,
    user_id: UUID,
    task: str,
    params: dict[str, Any],
    model_key: str,
    cost: int,
    input_ref: str | None,
    input_meta: dict[str, Any],
    webhook_url: str | None,
    webhook_events: list[str] | None,
    deadline_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO jobs (id, user_id, task, params, model_key, cost, input_ref, input_meta, webhook_url,"
        " webhook_events, deadline_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            job_id,
            user_id,
            task,
            Jsonb(params),
            model_key,
            cost,
            input_ref,
            Jsonb(input_meta),
            webhook_url,
            webhook_events,
            deadline_at,
        ),
    )


async def get_job(conn: AsyncConnection, job_id: UUID, user_id: UUID | None = None) -> dict[str, Any] | None:
    """The job row (plus `last_delivery`); with `user_id`, None unless that user owns it."""
    cursor = conn.cursor(row_factory=dict_row)
    if user_id is None:
        await cursor.execute(_SELECT + " WHERE j.id = %s", (job_id,))
    else:
        await cursor.execute(_SELECT + " WHERE j.id = %s AND j.user_id = %s", (job_id, user_id))
    return await cursor.fetchone()


async def list_jobs(
    conn: AsyncConnection,
    user_id: UUID,
    *,
    limit: int,
    status: str | None = None,
    task: str | None = None,
    after: tuple[datetime, UUID] | None = None,
) -> list[dict[str, Any]]:
    """Newest first; `after` is the (created_at, id) of the last row of the previous page (keyset pagination)."""
    clauses, args = ["j.user_id = %s"], [user_id]
    if status is not None:
        clauses.append("j.status = %s")
        args.append(status)
    if task is not None:
        clauses.append("j.task = %s")
        args.append(task)
    if after is not None:
        clauses.append("(j.created_at, j.id) < (%s, %s)")
        args.extend(after)
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        _SELECT + " WHERE " + " AND ".join(clauses) + " ORDER BY j.created_at DESC, j.id DESC LIMIT %s",
        (*args, limit),
    )
    return await cursor.fetchall()


async def cancel_queued(conn: AsyncConnection, job_id: UUID, user_id: UUID) -> bool:
    """queued -> canceled. True only for the call that changed it (a worker may have just started it)."""
    cursor = await conn.execute(
        "UPDATE jobs SET status = 'canceled', cancel_requested = true, finished_at = now(),"
        " error = jsonb_build_object('code', 'canceled', 'message', 'Canceled by the user.')"
        " WHERE id = %s AND user_id = %s AND status = 'queued' RETURNING id",
        (job_id, user_id),
    )
    return await cursor.fetchone() is not None


async def request_cancel(conn: AsyncConnection, job_id: UUID, user_id: UUID) -> str | None:
    """Flag a running job for cancellation; returns its dispatch id when the flag was set, else None."""
    cursor = await conn.execute(
        "UPDATE jobs SET cancel_requested = true WHERE id = %s AND user_id = %s AND status = 'running'"
        " RETURNING coalesce(dispatch_id, '')",
        (job_id, user_id),
    )
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def fail_unstarted(conn: AsyncConnection, job_id: UUID, code: str, message: str) -> bool:
    """Fail a job that never ran (e.g. its dispatch failed). True when this call failed it."""
    cursor = await conn.execute(
        "UPDATE jobs SET status = 'failed', finished_at = now(), error = jsonb_build_object('code', %s::text,"
        " 'message', %s::text) WHERE id = %s AND status = 'queued' RETURNING id",
        (code, message, job_id),
    )
    return await cursor.fetchone() is not None


async def clear_input(conn: AsyncConnection, job_id: UUID) -> None:
    """Forget the input's storage key once the object is deleted (SPEC: inputs go when the job is final)."""
    await conn.execute("UPDATE jobs SET input_ref = NULL WHERE id = %s", (job_id,))
