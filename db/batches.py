"""The statements on `batches`. A batch's items are job rows with `batch_id` set (their rows: `db.jobs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


async def insert_batch(
    conn: AsyncConnection,
    *,
    batch_id: UUID,
    user_id: UUID,
    task: str,
    params: dict[str, Any],
    item_count: int,
    cost: int,
    webhook_url: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO batches (id, user_id, task, params, item_count, cost, webhook_url, remaining)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (batch_id, user_id, task, Jsonb(params), item_count, cost, webhook_url, item_count),
    )


async def get_batch(conn: AsyncConnection, batch_id: UUID, user_id: UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM batches WHERE id = %s AND user_id = %s", (batch_id, user_id))
        return await cur.fetchone()


async def status_counts(conn: AsyncConnection, batch_id: UUID) -> dict[str, int]:
    """How many of the batch's jobs are in each status."""
    rows = await (
        await conn.execute("SELECT status::text, count(*) FROM jobs WHERE batch_id = %s GROUP BY status", (batch_id,))
    ).fetchall()
    return {status: count for status, count in rows}


async def count_item_final(conn: AsyncConnection, job_id: UUID, now: datetime | None) -> dict[str, Any] | None:
    """In the transaction that settles `job_id`: one fewer item left in its batch (the UPDATE keeps the batch row
    locked until commit, so concurrent settles take turns). Returns the batch row when this settle ended the
    batch's last item, else None (also for a job in no batch)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE batches b SET remaining = b.remaining - 1,"
            " completed_at = CASE WHEN b.remaining = 1 THEN COALESCE(%s::timestamptz, now()) END"
            " FROM jobs j WHERE j.id = %s AND b.id = j.batch_id RETURNING b.*",
            (now, job_id),
        )
        row = await cur.fetchone()
    return row if row is not None and row["remaining"] == 0 else None


async def list_batches(
    conn: AsyncConnection, user_id: UUID, *, limit: int, after: tuple[datetime, UUID] | None
) -> list[dict[str, Any]]:
    """Newest first, keyset-paged on (created_at, id)."""
    after_clause = "" if after is None else " AND (created_at, id) < (%s, %s)"
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM batches WHERE user_id = %s" + after_clause + " ORDER BY created_at DESC, id DESC LIMIT %s",
            (user_id, *(after or ()), limit),
        )
        return await cur.fetchall()


async def unfinished_jobs(conn: AsyncConnection, batch_id: UUID) -> list[UUID]:
    """The batch's queued and running jobs, in item order (what a cancel-all cancels)."""
    rows = await (
        await conn.execute(
            "SELECT id FROM jobs WHERE batch_id = %s AND status IN ('queued', 'running') ORDER BY batch_index",
            (batch_id,),
        )
    ).fetchall()
    return [row[0] for row in rows]
