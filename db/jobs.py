"""Every statement on `jobs`, and nowhere else: create, read, list, claim, heartbeat, finish, cancel, reap.

State changes are guarded by the current status in the WHERE clause, so a cancel racing a worker (or a reaper)
changes a row at most once; the trigger in 0002 makes final states final whatever path tries.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


class JobStatus(StrEnum):
    """The `job_status` enum of migration 0002."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
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
    extra_inputs: dict[str, str] | None = None,
    webhook_url: str | None,
    webhook_events: list[str] | None,
    deadline_at: datetime,
    cancel_after: datetime | None = None,
    batch_item: tuple[UUID, int] | None = None,
) -> None:
    batch_id, batch_index = batch_item if batch_item is not None else (None, None)
    await conn.execute(
        "INSERT INTO jobs (id, user_id, task, params, model_key, cost, input_ref, input_meta, extra_inputs,"
        " webhook_url, webhook_events, deadline_at, cancel_after, batch_id, batch_index)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            job_id,
            user_id,
            task,
            Jsonb(params),
            model_key,
            cost,
            input_ref,
            Jsonb(input_meta),
            Jsonb(extra_inputs or {}),
            webhook_url,
            webhook_events,
            deadline_at,
            cancel_after,
            batch_id,
            batch_index,
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


async def job_state(conn: AsyncConnection, job_id: UUID) -> dict[str, Any] | None:
    """The columns a job's live events carry (`seq` is the SSE event id)."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT id, user_id, status::text AS status, progress, stage, event_seq AS seq FROM jobs WHERE id = %s",
        (job_id,),
    )
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


async def jobs_of_batch(
    conn: AsyncConnection, batch_id: UUID, *, limit: int, after_index: int | None
) -> list[dict[str, Any]]:
    """A batch's job rows in item order, keyset-paged on the item index."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        _SELECT + " WHERE j.batch_id = %s AND j.batch_index > %s ORDER BY j.batch_index LIMIT %s",
        (batch_id, -1 if after_index is None else after_index, limit),
    )
    return await cursor.fetchall()


def stored_inputs(input_ref: str | None, extra_inputs: dict[str, str] | None) -> list[str]:
    """Every storage key a job's inputs live under: the main input first, then its second inputs."""
    return ([input_ref] if input_ref else []) + list((extra_inputs or {}).values())


async def clear_input_ref(conn: AsyncConnection, job_id: UUID, ref: str) -> None:
    """Forget the input `ref` and the second inputs stored with it once their objects are deleted, unless the job
    has meanwhile moved on to another input."""
    await conn.execute(
        "UPDATE jobs SET input_ref = NULL, extra_inputs = '{}'::jsonb WHERE id = %s AND input_ref = %s", (job_id, ref)
    )


async def final_input_refs(conn: AsyncConnection, job_id: UUID) -> list[str]:
    """The stored input keys (main input first) of a final job that still has them (inputs go once it is final)."""
    cursor = await conn.execute(
        "SELECT input_ref, extra_inputs FROM jobs WHERE id = %s AND status IN ('succeeded', 'failed', 'canceled')"
        " AND input_ref IS NOT NULL",
        (job_id,),
    )
    row = await cursor.fetchone()
    return [] if row is None else stored_inputs(row[0], row[1])


async def status_of(conn: AsyncConnection, job_id: UUID) -> JobStatus | None:
    row = await (await conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,))).fetchone()
    return None if row is None else JobStatus(row[0])


# ---- a worker's attempt: claim, heartbeat ----


# A job an attempt may take: queued, or running under an attempt that is gone (its heartbeat went stale, or Modal
# retried the same FunctionCall: Modal runs one attempt of a call at a time, so a retry of the same call after
# preemption or a crash means the earlier attempt is gone and it takes the job over without waiting for staleness).
# A job past its own deadline is the reaper's to cancel, never a worker's to start.
_BEFORE_CANCEL_AFTER = "(cancel_after IS NULL OR cancel_after > now())"
_CLAIMABLE = (
    "NOT cancel_requested AND (status = 'queued' OR (status = 'running'"
    " AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => %(stale_after)s))"
    " OR (status = 'running' AND %(dispatch)s::text IS NOT NULL AND dispatch_id = %(dispatch)s::text))"
)


async def claim(
    conn: AsyncConnection,
    job_id: UUID,
    heartbeat_timeout_seconds: float,
    dispatch_id: str | None,
    *,
    max_attempts: int,
    deadline_seconds: float,
) -> dict[str, Any] | None:
    """Start an attempt: queued -> running, or take over a running job whose attempt is gone. None when the job is
    not this caller's to run (final, canceled, running under another live attempt, or out of attempts).

    The deadline is renewed to at least `deadline_seconds` from now, so time spent queued never eats the attempt's
    own time limit."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = coalesce(started_at, now()),"
        " heartbeat_at = now(), progress = 0, stage = 'starting', dispatch_id = coalesce(%(dispatch)s, dispatch_id),"
        " deadline_at = greatest(deadline_at, now() + make_interval(secs => %(deadline)s))"
        f" WHERE id = %(id)s AND attempts < %(max)s AND {_CLAIMABLE} AND {_BEFORE_CANCEL_AFTER}"
        " RETURNING id, user_id, task, params, model_key, input_ref, input_meta, extra_inputs, attempts",
        {
            "id": job_id,
            "dispatch": dispatch_id,
            "stale_after": heartbeat_timeout_seconds,
            "max": max_attempts,
            "deadline": deadline_seconds,
        },
    )
    return await cursor.fetchone()


async def requeue_attempt(conn: AsyncConnection, job_id: UUID, attempt: int) -> bool:
    """End a running attempt without settling the job: queued again for the next claim (the attempt still counts)."""
    cursor = await conn.execute(
        "UPDATE jobs SET status = 'queued', heartbeat_at = NULL, progress = 0, stage = 'preempted'"
        " WHERE id = %s AND status = 'running' AND attempts = %s RETURNING id",
        (job_id, attempt),
    )
    return await cursor.fetchone() is not None


async def lock_next_ready(conn: AsyncConnection, ready_marker: str) -> UUID | None:
    """The oldest queued job handed to local workers (`dispatch_id = ready_marker`), locked FOR UPDATE SKIP LOCKED
    in the caller's transaction so two workers never wait on or take the same row; None when there is none."""
    cursor = await conn.execute(
        "SELECT id FROM jobs WHERE status = 'queued' AND dispatch_id = %s AND NOT cancel_requested"
        f" AND deadline_at > now() AND {_BEFORE_CANCEL_AFTER} ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        (ready_marker,),
    )
    row = await cursor.fetchone()
    return row[0] if row else None


async def heartbeat(
    conn: AsyncConnection, job_id: UUID, attempt: int, progress: float, stage: str | None
) -> tuple[bool, bool] | None:
    """Record liveness and progress of this attempt. Returns (cancel_requested, past its own deadline), or None when
    the job is no longer this attempt's."""
    cursor = await conn.execute(
        "UPDATE jobs SET heartbeat_at = now(), progress = %s, stage = %s"
        " WHERE id = %s AND status = 'running' AND attempts = %s"
        f" RETURNING cancel_requested, NOT {_BEFORE_CANCEL_AFTER}",
        (progress, stage, job_id, attempt),
    )
    row = await cursor.fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]))


# ---- endings: lock the row while its guard holds, then write the final state (api.jobs.settle) ----


async def lock_attempt(conn: AsyncConnection, job_id: UUID) -> tuple[JobStatus, int, bool] | None:
    """(status, attempts, cancel_requested), the row locked for this transaction."""
    cursor = await conn.execute(
        "SELECT status, attempts, cancel_requested FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else (JobStatus(row[0]), row[1], row[2])


async def _lock_if(
    conn: AsyncConnection, job_id: UUID, guard: str, args: dict[str, Any], *, skip_locked: bool = True
) -> bool:
    # SKIP LOCKED (the reaper): a row another reaper or the worker holds is theirs to settle. Without it the call
    # waits for the holder, and the guard is re-checked on the row it committed.
    lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
    cursor = await conn.execute(f"SELECT id FROM jobs WHERE id = %(id)s AND {guard} {lock}", {"id": job_id, **args})
    return await cursor.fetchone() is not None


async def lock_queued(conn: AsyncConnection, job_id: UUID, user_id: UUID | None = None) -> bool:
    """Lock a job that is still queued (and, with `user_id`, that user's)."""
    guard = "status = 'queued' AND (%(user)s::uuid IS NULL OR user_id = %(user)s::uuid)"
    return await _lock_if(conn, job_id, guard, {"user": user_id}, skip_locked=False)


async def lock_past_deadline(conn: AsyncConnection, job_id: UUID, now: datetime) -> bool:
    return await _lock_if(conn, job_id, "status IN ('queued', 'running') AND deadline_at <= %(now)s", {"now": now})


async def lock_past_cancel_after(conn: AsyncConnection, job_id: UUID, now: datetime) -> JobStatus | None:
    """Lock an unfinished job past its own deadline; the state it was in, or None (settled, or another holds it)."""
    cursor = await conn.execute(
        "SELECT status FROM jobs WHERE id = %s AND status IN ('queued', 'running') AND cancel_after <= %s"
        " FOR UPDATE SKIP LOCKED",
        (job_id, now),
    )
    row = await cursor.fetchone()
    return None if row is None else JobStatus(row[0])


async def lock_stale(conn: AsyncConnection, job_id: UUID, attempts: int, before: datetime) -> bool:
    guard = (
        "status = 'running' AND attempts = %(attempts)s AND coalesce(heartbeat_at, started_at, created_at) < %(before)s"
    )
    return await _lock_if(conn, job_id, guard, {"attempts": attempts, "before": before})


async def lock_dispatch(conn: AsyncConnection, job_id: UUID, status: str, attempts: int, dispatch_id: str) -> bool:
    guard = "status = %(status)s AND attempts = %(attempts)s AND dispatch_id = %(dispatch)s"
    return await _lock_if(conn, job_id, guard, {"status": status, "attempts": attempts, "dispatch": dispatch_id})


async def lock_out_of_attempts(
    conn: AsyncConnection, job_id: UUID, max_attempts: int, heartbeat_timeout_seconds: float, dispatch_id: str | None
) -> bool:
    """Lock a job an attempt could take, were it not out of attempts."""
    guard = f"attempts >= %(max)s AND {_CLAIMABLE}"
    args = {"max": max_attempts, "stale_after": heartbeat_timeout_seconds, "dispatch": dispatch_id}
    return await _lock_if(conn, job_id, guard, args, skip_locked=False)


async def lock_queued_cancel(conn: AsyncConnection, job_id: UUID) -> bool:
    return await _lock_if(conn, job_id, "status = 'queued' AND cancel_requested AND dispatch_id IS NULL", {})


async def write_succeeded(
    conn: AsyncConnection,
    job_id: UUID,
    outputs: list[dict[str, Any]],
    metrics: dict[str, Any],
    retention_seconds: float,
) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'succeeded', progress = 1, stage = NULL, outputs = %s, metrics = %s,"
        " finished_at = now(), outputs_expire_at = now() + make_interval(secs => %s) WHERE id = %s",
        (Jsonb(outputs), Jsonb(metrics), retention_seconds, job_id),
    )


async def write_ended(
    conn: AsyncConnection,
    job_id: UUID,
    status: JobStatus,
    error: dict[str, str] | None,
    metrics: dict[str, Any],
    finished_at: datetime | None,
    *,
    cancel_requested: bool = False,
) -> None:
    """Write `failed` or `canceled`; `finished_at` None means the database clock."""
    await conn.execute(
        "UPDATE jobs SET status = %s, stage = NULL, error = %s, metrics = metrics || %s,"
        " finished_at = coalesce(%s, now()), cancel_requested = cancel_requested OR %s WHERE id = %s",
        (str(status), Jsonb(error) if error else None, Jsonb(metrics), finished_at, cancel_requested, job_id),
    )


async def request_cancel_running(conn: AsyncConnection, job_id: UUID, user_id: UUID) -> bool:
    """Flag a running job for cancellation; True when the flag was set."""
    cursor = await conn.execute(
        "UPDATE jobs SET cancel_requested = true WHERE id = %s AND user_id = %s AND status = 'running' RETURNING id",
        (job_id, user_id),
    )
    return await cursor.fetchone() is not None


# ---- dispatch: the per-user cap on jobs started at once ----


async def lock_user_dispatch(conn: AsyncConnection, user_id: UUID) -> None:
    """Serialise dispatch decisions of one user for this transaction (two API processes never both start the
    user's last slot)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('dispatch:' || %s::text, 0))", (user_id,))


async def owner(conn: AsyncConnection, job_id: UUID) -> UUID | None:
    row = await (await conn.execute("SELECT user_id FROM jobs WHERE id = %s", (job_id,))).fetchone()
    return None if row is None else row[0]


async def taken_count(conn: AsyncConnection, user_id: UUID) -> int:
    """Jobs running, or queued with a dispatch id (started somewhere, not yet claimed)."""
    cursor = await conn.execute(
        "SELECT count(*) FROM jobs WHERE user_id = %s"
        " AND (status = 'running' OR (status = 'queued' AND dispatch_id IS NOT NULL))",
        (user_id,),
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def undispatched_task(conn: AsyncConnection, job_id: UUID) -> str | None:
    """The task of a queued job with no dispatch and no cancel request, else None."""
    cursor = await conn.execute(
        "SELECT task FROM jobs WHERE id = %s AND status = 'queued' AND dispatch_id IS NULL AND NOT cancel_requested",
        (job_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def users_with_ready_jobs(conn: AsyncConnection, now: datetime) -> list[UUID]:
    cursor = await conn.execute(
        "SELECT DISTINCT user_id FROM jobs WHERE status = 'queued' AND dispatch_id IS NULL"
        " AND NOT cancel_requested AND deadline_at > %s",
        (now,),
    )
    return [row[0] for row in await cursor.fetchall()]


async def ready_jobs(conn: AsyncConnection, user_id: UUID, now: datetime, limit: int) -> list[tuple[UUID, str]]:
    """The user's oldest queued jobs without a dispatch: (id, task)."""
    cursor = await conn.execute(
        "SELECT id, task FROM jobs WHERE user_id = %s AND status = 'queued' AND dispatch_id IS NULL"
        " AND NOT cancel_requested AND deadline_at > %s ORDER BY created_at, id LIMIT %s",
        (user_id, now, limit),
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def set_dispatch_id(conn: AsyncConnection, job_id: UUID, dispatch_id: str) -> None:
    await conn.execute("UPDATE jobs SET dispatch_id = %s WHERE id = %s", (dispatch_id, job_id))


# ---- the reaper and the retention sweep ----


async def past_deadline(conn: AsyncConnection, now: datetime) -> list[tuple[UUID, str | None]]:
    """Unfinished jobs past their deadline: (id, dispatch_id)."""
    cursor = await conn.execute(
        "SELECT id, dispatch_id FROM jobs WHERE status IN ('queued', 'running') AND deadline_at <= %s", (now,)
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def past_cancel_after(conn: AsyncConnection, now: datetime) -> list[tuple[UUID, str | None]]:
    """Unfinished jobs past their own deadline (`deadline_s`): (id, dispatch_id)."""
    cursor = await conn.execute(
        "SELECT id, dispatch_id FROM jobs WHERE status IN ('queued', 'running') AND cancel_after <= %s", (now,)
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def next_cancel_after(conn: AsyncConnection) -> datetime | None:
    """The earliest deadline of an unfinished job that has one (local mode's reaper wakes for it)."""
    cursor = await conn.execute(
        "SELECT min(cancel_after) FROM jobs WHERE status IN ('queued', 'running') AND cancel_after IS NOT NULL"
    )
    row = await cursor.fetchone()
    return None if row is None else row[0]


async def stale_running(conn: AsyncConnection, before: datetime) -> list[tuple[UUID, int]]:
    """Running jobs whose last heartbeat is older than `before`: (id, attempts)."""
    cursor = await conn.execute(
        "SELECT id, attempts FROM jobs WHERE status = 'running'"
        " AND coalesce(heartbeat_at, started_at, created_at) < %s",
        (before,),
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def dispatched_unfinished(conn: AsyncConnection) -> list[tuple[UUID, str, int, str, bool]]:
    """Queued or running jobs with a dispatch: (id, status, attempts, dispatch_id, cancel_requested)."""
    cursor = await conn.execute(
        "SELECT id, status::text, attempts, dispatch_id, cancel_requested FROM jobs"
        " WHERE status IN ('queued', 'running') AND dispatch_id IS NOT NULL"
    )
    return [tuple(row) for row in await cursor.fetchall()]  # type: ignore[misc]


async def requeue(conn: AsyncConnection, job_id: UUID, dispatch_id: str) -> bool:
    """Forget a vanished dispatch of a never-claimed job so it is dispatched again."""
    cursor = await conn.execute(
        "UPDATE jobs SET dispatch_id = NULL WHERE id = %s AND status = 'queued' AND dispatch_id = %s RETURNING id",
        (job_id, dispatch_id),
    )
    return await cursor.fetchone() is not None


async def queued_with_cancel(conn: AsyncConnection) -> list[UUID]:
    """Queued jobs with a cancel request and no dispatch: never run, so the reaper settles them."""
    cursor = await conn.execute(
        "SELECT id FROM jobs WHERE status = 'queued' AND cancel_requested AND dispatch_id IS NULL"
    )
    return [row[0] for row in await cursor.fetchall()]


async def final_inputs(conn: AsyncConnection, limit: int) -> list[tuple[UUID, list[str]]]:
    """Final jobs whose inputs are still stored: (id, their keys, the main input's first)."""
    cursor = await conn.execute(
        "SELECT id, input_ref, extra_inputs FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled')"
        " AND input_ref IS NOT NULL LIMIT %s",
        (limit,),
    )
    return [(row[0], stored_inputs(row[1], row[2])) for row in await cursor.fetchall()]


async def live_output_refs(conn: AsyncConnection, user_id: UUID, job_ids: list[UUID]) -> dict[tuple[UUID, str], str]:
    """(job id, output name) -> storage key of the user's succeeded jobs' outputs that are still stored (a mixdown
    reads its tracks from these; another user's jobs and deleted outputs are simply absent)."""
    cursor = await conn.execute(
        "SELECT id, outputs FROM jobs WHERE user_id = %s AND id = ANY(%s) AND status = 'succeeded'"
        " AND outputs_deleted_at IS NULL",
        (user_id, job_ids),
    )
    return {
        (row[0], out["name"]): out["ref"] for row in await cursor.fetchall() for out in row[1] or [] if out.get("ref")
    }


async def expired_outputs(conn: AsyncConnection, now: datetime, limit: int) -> list[tuple[UUID, list[dict[str, Any]]]]:
    cursor = await conn.execute(
        "SELECT id, outputs FROM jobs WHERE outputs_expire_at <= %s AND outputs_deleted_at IS NULL"
        " ORDER BY outputs_expire_at LIMIT %s",
        (now, limit),
    )
    return [(row[0], row[1] or []) for row in await cursor.fetchall()]


async def mark_outputs_deleted(conn: AsyncConnection, job_id: UUID, now: datetime) -> None:
    await conn.execute(
        "UPDATE jobs SET outputs_deleted_at = %s WHERE id = %s AND outputs_deleted_at IS NULL", (now, job_id)
    )


# ---- partial outputs while a job runs (migration 0018) ----


async def add_partial_output(
    conn: AsyncConnection, job_id: UUID, attempt: int, kind: str, data: dict[str, Any]
) -> int | None:
    """Record one partial output of this attempt; returns its event id (the job's new event_seq), or None when the
    job is no longer this attempt's. The UPDATE bumps event_seq, which announces the output on `job_events`."""
    cursor = await conn.execute(
        "UPDATE jobs SET partial_outputs = partial_outputs + 1"
        " WHERE id = %s AND status = 'running' AND attempts = %s RETURNING event_seq",
        (job_id, attempt),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    await conn.execute(
        "INSERT INTO job_outputs (job_id, seq, attempt, kind, data) VALUES (%s, %s, %s, %s, %s)",
        (job_id, row[0], attempt, kind, Jsonb(data)),
    )
    return int(row[0])


async def partial_outputs(
    conn: AsyncConnection, job_id: UUID, *, after_seq: int = -1, up_to_seq: int | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    """The current attempt's partial outputs with an event id in (`after_seq`, `up_to_seq`], oldest first."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT o.seq, o.kind, o.data FROM job_outputs o JOIN jobs j ON j.id = o.job_id AND o.attempt = j.attempts"
        " WHERE o.job_id = %(id)s AND o.seq > %(after)s AND (%(up_to)s::bigint IS NULL OR o.seq <= %(up_to)s)"
        " AND (%(kind)s::text IS NULL OR o.kind = %(kind)s) ORDER BY o.seq",
        {"id": job_id, "after": after_seq, "up_to": up_to_seq, "kind": kind},
    )
    return await cursor.fetchall()
