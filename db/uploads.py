"""Every statement on `uploads` (migration 0017): create, read, advance the offset, finish, consume, expire.

Transitions are guarded by the current state in the WHERE clause: `uploading` -> `complete` -> `used` (by one job)
and `uploading | complete` -> `expired`, so a job and the retention sweep racing for the same upload change it once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row

LIVE_STATES = ("uploading", "complete")


async def insert_upload(
    conn: AsyncConnection,
    *,
    upload_id: UUID,
    user_id: UUID,
    backend: str,
    object_key: str,
    filename: str,
    content_type: str,
    size: int,
    expires_at: datetime,
) -> dict[str, Any]:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "INSERT INTO uploads (id, user_id, backend, object_key, filename, content_type, size, expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (upload_id, user_id, backend, object_key, filename, content_type, size, expires_at),
    )
    row = await cursor.fetchone()
    assert row is not None
    return row


async def get_upload(conn: AsyncConnection, upload_id: UUID, user_id: UUID) -> dict[str, Any] | None:
    """The caller's upload; another user's id reads as absent."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute("SELECT * FROM uploads WHERE id = %s AND user_id = %s", (upload_id, user_id))
    return await cursor.fetchone()


async def record_offset(conn: AsyncConnection, upload_id: UUID, expected: int, offset: int, now: datetime) -> bool:
    """Move the offset from `expected` to `offset` (bytes written since); the upload is complete when it reaches the
    size. False when the offset moved meanwhile or the upload is no longer being uploaded."""
    cursor = await conn.execute(
        "UPDATE uploads SET upload_offset = %s,"
        " state = CASE WHEN %s = size THEN 'complete' ELSE state END,"
        " completed_at = CASE WHEN %s = size THEN %s ELSE completed_at END"
        " WHERE id = %s AND upload_offset = %s AND state = 'uploading'",
        (offset, offset, offset, now, upload_id, expected),
    )
    return cursor.rowcount == 1


async def mark_complete(conn: AsyncConnection, upload_id: UUID, size: int, now: datetime) -> None:
    """An upload made straight to Supabase Storage, found whole (`size` bytes) when a job or quote first reads it."""
    await conn.execute(
        "UPDATE uploads SET state = 'complete', upload_offset = %s, completed_at = %s"
        " WHERE id = %s AND state = 'uploading' AND size = %s",
        (size, now, upload_id, size),
    )


async def consume(conn: AsyncConnection, upload_id: UUID, user_id: UUID, job_id: UUID) -> bool:
    """Give a complete upload to the job being created (in that job's transaction); False when it was taken."""
    cursor = await conn.execute(
        "UPDATE uploads SET state = 'used', job_id = %s WHERE id = %s AND user_id = %s AND state = 'complete'",
        (job_id, upload_id, user_id),
    )
    return cursor.rowcount == 1


async def give_back(conn: AsyncConnection, upload_id: UUID, job_id: UUID) -> None:
    """A job that could not be started returns its upload, so a retry may use it."""
    await conn.execute(
        "UPDATE uploads SET state = 'complete', job_id = NULL WHERE id = %s AND job_id = %s AND state = 'used'",
        (upload_id, job_id),
    )


async def delete_upload(conn: AsyncConnection, upload_id: UUID, user_id: UUID) -> dict[str, Any] | None:
    """tus termination: forget an upload no job has taken; returns it (its object is the caller's to delete)."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "UPDATE uploads SET state = 'expired' WHERE id = %s AND user_id = %s AND state IN ('uploading', 'complete')"
        " RETURNING *",
        (upload_id, user_id),
    )
    return await cursor.fetchone()


async def expired(conn: AsyncConnection, now: datetime, limit: int) -> list[tuple[UUID, str]]:
    """Uploads no job took before `expires_at`: (id, object key)."""
    cursor = await conn.execute(
        "SELECT id, object_key FROM uploads WHERE state IN ('uploading', 'complete') AND expires_at <= %s"
        " ORDER BY expires_at LIMIT %s",
        (now, limit),
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def mark_expired(conn: AsyncConnection, upload_id: UUID, now: datetime) -> bool:
    cursor = await conn.execute(
        "UPDATE uploads SET state = 'expired' WHERE id = %s AND state IN ('uploading', 'complete')"
        " AND expires_at <= %s",
        (upload_id, now),
    )
    return cursor.rowcount == 1
