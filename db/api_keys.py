"""Every statement on `api_keys`: personal API keys, stored as their SHA-256 only."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

KEY_FIELDS = ("id", "name", "prefix", "created_at", "last_used_at")
_KEY_COLUMNS = ", ".join(KEY_FIELDS)


def _key_info(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(KEY_FIELDS, row, strict=True))


async def find_live(conn: AsyncConnection, key_hash: bytes) -> tuple[UUID, str | None] | None:
    """(user id, email) for a live key, or None. Bumps last_used_at at most once a minute (no write on most
    requests), in the same statement."""
    cursor = await conn.execute(
        "WITH k AS (SELECT id, user_id, last_used_at FROM api_keys WHERE key_hash = %(hash)s AND revoked_at IS NULL),"
        " touched AS (UPDATE api_keys SET last_used_at = now() FROM k WHERE api_keys.id = k.id"
        "  AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds'))"
        " SELECT k.user_id, u.email FROM k LEFT JOIN auth.users u ON u.id = k.user_id",
        {"hash": key_hash},
    )
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])


async def create(conn: AsyncConnection, user_id: UUID, name: str, prefix: str, key_hash: bytes) -> dict[str, Any]:
    cursor = await conn.execute(
        f"INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES (%s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
        (user_id, name, prefix, key_hash),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _key_info(row)


async def list_live(conn: AsyncConnection, user_id: UUID) -> list[dict[str, Any]]:
    """The user's active keys, newest first."""
    cursor = await conn.execute(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = %s AND revoked_at IS NULL ORDER BY created_at DESC",
        (user_id,),
    )
    return [_key_info(row) for row in await cursor.fetchall()]


async def revoke(conn: AsyncConnection, key_id: UUID, user_id: UUID) -> bool:
    """False when the user has no such key. Revoking an already revoked key keeps its first revocation time."""
    cursor = await conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s AND user_id = %s RETURNING id",
        (key_id, user_id),
    )
    return await cursor.fetchone() is not None
