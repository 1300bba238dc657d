"""Every statement on `api_keys`: personal API keys, stored as their SHA-256 only, and their spend caps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

KEY_FIELDS = (
    "id",
    "name",
    "prefix",
    "created_at",
    "last_used_at",
    "daily_credit_cap",
    "monthly_credit_cap",
    "allowed_tasks",
)
_KEY_COLUMNS = ", ".join(KEY_FIELDS)
# The columns PATCH may change (None clears a cap or the task list).
EDITABLE_FIELDS = frozenset({"name", "daily_credit_cap", "monthly_credit_cap", "allowed_tasks"})


@dataclass(frozen=True)
class KeyCaps:
    daily_credit_cap: int | None
    monthly_credit_cap: int | None
    allowed_tasks: list[str] | None  # None: every task


def _key_info(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(KEY_FIELDS, row, strict=True))


async def find_live(conn: AsyncConnection, key_hash: bytes) -> tuple[UUID, str | None, UUID] | None:
    """(user id, email, key id) for a live key, or None. Bumps last_used_at at most once a minute (no write on most
    requests), in the same statement."""
    cursor = await conn.execute(
        "WITH k AS (SELECT id, user_id, last_used_at FROM api_keys WHERE key_hash = %(hash)s AND revoked_at IS NULL),"
        " touched AS (UPDATE api_keys SET last_used_at = now() FROM k WHERE api_keys.id = k.id"
        "  AND (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds'))"
        " SELECT k.user_id, u.email, k.id FROM k LEFT JOIN auth.users u ON u.id = k.user_id",
        {"hash": key_hash},
    )
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1], row[2])


async def create(
    conn: AsyncConnection,
    user_id: UUID,
    name: str,
    prefix: str,
    key_hash: bytes,
    *,
    daily_credit_cap: int | None = None,
    monthly_credit_cap: int | None = None,
    allowed_tasks: list[str] | None = None,
) -> dict[str, Any]:
    cursor = await conn.execute(
        "INSERT INTO api_keys (user_id, name, prefix, key_hash, daily_credit_cap, monthly_credit_cap, allowed_tasks)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
        (user_id, name, prefix, key_hash, daily_credit_cap, monthly_credit_cap, allowed_tasks),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _key_info(row)


async def update(conn: AsyncConnection, key_id: UUID, user_id: UUID, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Set the given editable fields of the user's live key; None when the user has no such live key. A submit
    through the key that is deciding against its caps holds the row's lock, so a change waits for it."""
    unknown = set(changes) - EDITABLE_FIELDS
    if unknown or not changes:
        raise ValueError(f"nothing to change, or not editable: {sorted(unknown)}")
    assignments = ", ".join(f"{name} = %({name})s" for name in sorted(changes))
    cursor = await conn.execute(
        f"UPDATE api_keys SET {assignments} WHERE id = %(id)s AND user_id = %(user)s AND revoked_at IS NULL"
        f" RETURNING {_KEY_COLUMNS}",
        {**changes, "id": key_id, "user": user_id},
    )
    row = await cursor.fetchone()
    return None if row is None else _key_info(row)


async def lock_caps(conn: AsyncConnection, key_id: UUID) -> KeyCaps | None:
    """The key's caps, its row locked until the caller's transaction ends: submits through one key decide against
    its caps one at a time, each seeing the holds the previous one committed. None for an unknown key."""
    cursor = await conn.execute(
        "SELECT daily_credit_cap, monthly_credit_cap, allowed_tasks FROM api_keys WHERE id = %s FOR UPDATE", (key_id,)
    )
    row = await cursor.fetchone()
    return None if row is None else KeyCaps(row[0], row[1], row[2])


async def labels(conn: AsyncConnection, user_id: UUID, key_ids: list[UUID]) -> dict[UUID, tuple[str, str]]:
    """(name, prefix) of the user's keys among `key_ids`, revoked ones included (usage outlives a key)."""
    cursor = await conn.execute(
        "SELECT id, name, prefix FROM api_keys WHERE user_id = %s AND id = ANY(%s)", (user_id, key_ids)
    )
    return {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}


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
