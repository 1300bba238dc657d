"""Every statement on `sessions` and `session_tracks`: a user's multi-track sessions and their tracks.

A track points at a job output (job id + output name); it never owns the file. `track_rows` joins each track with
its job so the caller can tell a playable output from one past retention (`expired`) without an error.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

SESSION_FIELDS = ("id", "name", "created_at", "updated_at", "track_count")
TRACK_FIELDS = (
    "id",
    "session_id",
    "job_id",
    "output_name",
    "parent_track_id",
    "position",
    "name",
    "duration_ms",
    "offset_ms",
    "gain_db",
    "pan",
    "mute",
    "solo",
    "trim_in_ms",
    "trim_out_ms",
    "created_at",
)
# The columns PATCH may change.
EDITABLE_TRACK_FIELDS = frozenset(
    {"name", "position", "offset_ms", "gain_db", "pan", "mute", "solo", "trim_in_ms", "trim_out_ms"}
)
_TRACK_COLUMNS = ", ".join(f"t.{name}" for name in TRACK_FIELDS)
_SESSION_SELECT = (
    "SELECT s.id, s.name, s.created_at, s.updated_at,"
    " (SELECT count(*) FROM session_tracks t WHERE t.session_id = s.id)::int FROM sessions s"
)


def _session(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(SESSION_FIELDS, row, strict=True))


async def lock_user_sessions(conn: AsyncConnection, user_id: UUID) -> int:
    """Serialise session creation per user for the rest of the transaction (so racing creates cannot pass the cap);
    returns how many sessions the user has."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('sessions:' || %s::text, 0))", (user_id,))
    cursor = await conn.execute("SELECT count(*) FROM sessions WHERE user_id = %s", (user_id,))
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def create(conn: AsyncConnection, user_id: UUID, name: str) -> dict[str, Any]:
    cursor = await conn.execute(
        "INSERT INTO sessions (user_id, name) VALUES (%s, %s) RETURNING id, name, created_at, updated_at, 0",
        (user_id, name),
    )
    row = await cursor.fetchone()
    assert row is not None
    return _session(row)


async def list_for_user(conn: AsyncConnection, user_id: UUID) -> list[dict[str, Any]]:
    """The user's sessions, most recently changed first."""
    cursor = await conn.execute(f"{_SESSION_SELECT} WHERE s.user_id = %s ORDER BY s.updated_at DESC, s.id", (user_id,))
    return [_session(row) for row in await cursor.fetchall()]


async def get(conn: AsyncConnection, session_id: UUID, user_id: UUID, *, lock: bool = False) -> dict[str, Any] | None:
    """The user's session, or None. `lock` holds its row until the transaction ends (track changes go one at a
    time, so the track cap and positions hold under concurrent adds)."""
    if lock:
        await conn.execute("SELECT 1 FROM sessions WHERE id = %s AND user_id = %s FOR UPDATE", (session_id, user_id))
    cursor = await conn.execute(f"{_SESSION_SELECT} WHERE s.id = %s AND s.user_id = %s", (session_id, user_id))
    row = await cursor.fetchone()
    return None if row is None else _session(row)


async def rename(conn: AsyncConnection, session_id: UUID, user_id: UUID, name: str) -> bool:
    cursor = await conn.execute(
        "UPDATE sessions SET name = %s, updated_at = now() WHERE id = %s AND user_id = %s RETURNING id",
        (name, session_id, user_id),
    )
    return await cursor.fetchone() is not None


async def touch(conn: AsyncConnection, session_id: UUID) -> None:
    await conn.execute("UPDATE sessions SET updated_at = now() WHERE id = %s", (session_id,))


async def delete(conn: AsyncConnection, session_id: UUID, user_id: UUID) -> bool:
    """Deletes the session and its tracks (rows only: the job outputs they point at stay)."""
    cursor = await conn.execute(
        "DELETE FROM sessions WHERE id = %s AND user_id = %s RETURNING id", (session_id, user_id)
    )
    return await cursor.fetchone() is not None


async def track_rows(
    conn: AsyncConnection, session_id: UUID, track_id: UUID | None = None
) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The session's tracks in order, each with its job's `outputs`, `outputs_deleted_at` and `outputs_expire_at`
    (None when the job row is gone)."""
    only = " AND t.id = %(track)s" if track_id is not None else ""
    cursor = await conn.execute(
        f"SELECT {_TRACK_COLUMNS}, j.id, j.outputs, j.outputs_deleted_at, j.outputs_expire_at"
        " FROM session_tracks t LEFT JOIN jobs j ON j.id = t.job_id AND j.user_id = t.user_id"
        f" WHERE t.session_id = %(session)s{only} ORDER BY t.position, t.created_at",
        {"session": session_id, "track": track_id},
    )
    width = len(TRACK_FIELDS)
    result = []
    for row in await cursor.fetchall():
        track = dict(zip(TRACK_FIELDS, row[:width], strict=True))
        job_id, outputs, deleted_at, expire_at = row[width:]
        job = None if job_id is None else {"outputs": outputs, "outputs_deleted_at": deleted_at,
                                           "outputs_expire_at": expire_at}  # fmt: skip
        result.append((track, job))
    return result


async def add_track(
    conn: AsyncConnection,
    session_id: UUID,
    user_id: UUID,
    *,
    job_id: UUID,
    output_name: str,
    name: str,
    duration_ms: int,
    settings: dict[str, Any],
    parent_track_id: UUID | None = None,
) -> UUID:
    """Append a track (the caller holds the session's lock, see `get`). `settings`: offset, gain, pan, ..."""
    columns = sorted(settings)
    cursor = await conn.execute(
        "INSERT INTO session_tracks (session_id, user_id, job_id, output_name, name, duration_ms, parent_track_id,"
        f" position{''.join(', ' + column for column in columns)})"
        " SELECT %(session)s, %(user)s, %(job)s, %(output)s, %(name)s, %(duration)s, %(parent)s,"
        " coalesce(max(position) + 1, 0)"
        f"{''.join(f', %({column})s' for column in columns)}"
        " FROM session_tracks WHERE session_id = %(session)s RETURNING id",
        {
            **settings,
            "session": session_id,
            "user": user_id,
            "job": job_id,
            "output": output_name,
            "name": name,
            "duration": duration_ms,
            "parent": parent_track_id,
        },
    )
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def update_track(conn: AsyncConnection, session_id: UUID, track_id: UUID, changes: dict[str, Any]) -> bool:
    unknown = set(changes) - EDITABLE_TRACK_FIELDS
    if unknown or not changes:
        raise ValueError(f"nothing to change, or not editable: {sorted(unknown)}")
    assignments = ", ".join(f"{name} = %({name})s" for name in sorted(changes))
    cursor = await conn.execute(
        f"UPDATE session_tracks SET {assignments} WHERE id = %(track)s AND session_id = %(session)s RETURNING id",
        {**changes, "track": track_id, "session": session_id},
    )
    return await cursor.fetchone() is not None


async def remove_track(conn: AsyncConnection, session_id: UUID, track_id: UUID) -> bool:
    cursor = await conn.execute(
        "DELETE FROM session_tracks WHERE id = %s AND session_id = %s RETURNING id", (track_id, session_id)
    )
    return await cursor.fetchone() is not None
