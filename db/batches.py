"""The statements on `batches` (and on jobs by batch). A batch's items are job rows with `batch_id` set."""

from __future__ import annotations

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
) -> None:
    await conn.execute(
        "INSERT INTO batches (id, user_id, task, params, item_count, cost) VALUES (%s, %s, %s, %s, %s, %s)",
        (batch_id, user_id, task, Jsonb(params), item_count, cost),
    )


async def get_batch(conn: AsyncConnection, batch_id: UUID, user_id: UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM batches WHERE id = %s AND user_id = %s", (batch_id, user_id))
        return await cur.fetchone()


async def status_counts(conn: AsyncConnection, batch_id: UUID) -> dict[str, int]:
    """How many of the batch's jobs are in each status."""
    rows = await (
        await conn.execute("SELECT status, count(*) FROM jobs WHERE batch_id = %s GROUP BY status", (batch_id,))
    ).fetchall()
    return {status: count for status, count in rows}
