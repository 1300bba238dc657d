"""The per-user fair-use request-rate limit: fixed windows counted in Postgres (`rate_limit_windows`), so the
limit holds however many API processes serve the user. One upsert per request; a window's first request also
drops the user's finished windows, which keeps the table at about one row per active user."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from psycopg import AsyncConnection

from api.errors import Problem

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    requests: int  # counted in this window, this request included
    retry_after: int  # whole seconds until the window ends


def window_start(now: datetime, window_seconds: int = WINDOW_SECONDS) -> datetime:
    return datetime.fromtimestamp(math.floor(now.timestamp() / window_seconds) * window_seconds, UTC)


async def hit(
    conn: AsyncConnection, user_id: UUID, *, now: datetime, limit: int, window_seconds: int = WINDOW_SECONDS
) -> RateDecision:
    """Count one request of `user_id` in the window holding `now` and say whether it is within `limit`."""
    start = window_start(now, window_seconds)
    cursor = await conn.execute(
        "INSERT INTO rate_limit_windows (user_id, window_start, requests) VALUES (%s, %s, 1)"
        " ON CONFLICT (user_id, window_start) DO UPDATE SET requests = rate_limit_windows.requests + 1"
        " RETURNING requests",
        (user_id, start),
    )
    row = await cursor.fetchone()
    assert row is not None  # an upsert with RETURNING always yields its row
    requests = row[0]
    if requests == 1:
        await conn.execute("DELETE FROM rate_limit_windows WHERE user_id = %s AND window_start < %s", (user_id, start))
    retry_after = max(1, math.ceil(start.timestamp() + window_seconds - now.timestamp()))
    return RateDecision(allowed=requests <= limit, limit=limit, requests=requests, retry_after=retry_after)


async def enforce(
    conn: AsyncConnection, user_id: UUID, *, now: datetime, limit: int, window_seconds: int = WINDOW_SECONDS
) -> None:
    """Count the request; raise a 429 problem with Retry-After past the limit. A limit <= 0 turns the limit off."""
    if limit <= 0:
        return
    decision = await hit(conn, user_id, now=now, limit=limit, window_seconds=window_seconds)
    if not decision.allowed:
        raise Problem(
            429,
            "rate_limited",
            "Too many requests",
            f"At most {limit} requests per {window_seconds} seconds; retry in {decision.retry_after} s.",
            headers={"Retry-After": str(decision.retry_after)},
            limit=limit,
            retry_after=decision.retry_after,
        )
