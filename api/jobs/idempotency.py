"""`Idempotency-Key` for POST /v1/jobs, with Stripe's semantics (SPEC section 3), keyed per user.

- The first request with a key claims it (an INSERT that only one concurrent request can win) and, when it
  succeeds, stores its status and body; the same key with the same body within the TTL replays them.
- The same key with a different body: 422 `idempotency_key_reused`.
- While the first request is still running: 409 `idempotency_in_flight`. The request renews its claim while it
  runs (`kept_alive`), so the claim lives as long as the request however long the submit takes (URL fetches,
  probes, a storage upload); a claim that is not renewed for the lease (its API process died) is taken over.
- A failed first attempt frees the key instead of storing the error. Every error path of a submit leaves nothing
  created and nothing charged, so a retry with the same key cannot double-charge, and replaying a 402 or a 503
  would only stop a client from retrying after topping up or after an outage.
- Once the job exists the key can no longer be freed by an error: the submit records it as done (with the new
  job) inside the transaction that creates the job and its hold, and `abandon` only frees in-flight keys. A
  dispatch refusal that released the hold `forget`s the key explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from api.errors import Problem

log = logging.getLogger("studio.idempotency")

MAX_KEY_LENGTH = 255
RENEWALS_PER_LEASE = 3  # a renewal lost to a slow database or a busy loop still leaves two before the lease lapses
REPLAY_HEADER = "Idempotent-Replayed"


# Past its TTL, or an in-flight claim not renewed within its lease (on the database's clock, like every expiry).
_EXPIRED = (
    "(expires_at <= now() OR (state = 'in_flight'"
    " AND renewed_at <= now() - make_interval(secs => %(lease)s::double precision)))"
)


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise Problem(
            400,
            "invalid_idempotency_key",
            "Invalid Idempotency-Key",
            f"Use 1-{MAX_KEY_LENGTH} printable ASCII characters, e.g. a UUID.",
        )
    return key


def request_hash(parts: Mapping[str, Any]) -> str:
    """A stable fingerprint of what the request asks for (task, params, input digest or URL, webhook fields)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(
    conn: AsyncConnection,
    user_id: UUID,
    key: str,
    fingerprint: str,
    ttl_seconds: int,
    *,
    in_flight_lease_seconds: float = 60,
) -> Replay | None:
    """None when this request now owns the key (it must `complete` or `abandon` it); a Replay when it already ran.

    Raises 422 for a reused key with another body and 409 while the first request is in flight. An in-flight
    claim not renewed for `in_flight_lease_seconds` is taken over: its request died (an API crash) without
    completing or abandoning it, and it would otherwise answer 409 for the whole TTL. The owner keeps its claim
    with `kept_alive` for as long as it runs.
    """
    for _ in range(3):
        inserted = await conn.execute(
            "INSERT INTO idempotency_records (user_id, key, request_hash, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT (user_id, key) DO NOTHING"
            " RETURNING 1",
            (user_id, key, fingerprint, ttl_seconds),
        )
        if await inserted.fetchone() is not None:
            return None
        lease = {"user": user_id, "key": key, "lease": in_flight_lease_seconds}
        cursor = await conn.execute(
            "SELECT request_hash, state, response_status, response_body, NOT (" + _EXPIRED + ")"
            " FROM idempotency_records WHERE user_id = %(user)s AND key = %(key)s",
            lease,
        )
        row = await cursor.fetchone()
        if row is None:
            continue  # freed by a failed first attempt between our INSERT and SELECT: try to claim again
        stored_hash, state, status, body, live = row
        if not live:
            await conn.execute(
                "DELETE FROM idempotency_records WHERE user_id = %(user)s AND key = %(key)s AND " + _EXPIRED, lease
            )
            continue
        if stored_hash != fingerprint:
            raise Problem(
                422,
                "idempotency_key_reused",
                "Idempotency-Key reused",
                "This key was used with a different request body; use a new key for a new request.",
            )
        if state == "in_flight":
            raise Problem(
                409,
                "idempotency_in_flight",
                "Request in progress",
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                headers={"Retry-After": "1"},
            )
        return Replay(status=status, body=body)
    raise Problem(
        409,
        "idempotency_in_flight",
        "Request in progress",
        "This Idempotency-Key is changing hands; retry shortly.",
        headers={"Retry-After": "1"},
    )


@contextlib.asynccontextmanager
async def kept_alive(pool: AsyncConnectionPool, user_id: UUID, key: str, lease_seconds: float) -> AsyncIterator[None]:
    """Renew this request's in-flight claim RENEWALS_PER_LEASE times per lease for as long as the block runs."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease_seconds / RENEWALS_PER_LEASE)
            try:
                async with pool.connection() as conn:
                    await conn.execute(
                        "UPDATE idempotency_records SET renewed_at = now()"
                        " WHERE user_id = %s AND key = %s AND state = 'in_flight'",
                        (user_id, key),
                    )
            except psycopg.Error as exc:  # the next renewal may succeed; the submit itself goes on regardless
                log.warning("could not renew the claim on Idempotency-Key %r: %s", key, exc)

    renewing = asyncio.create_task(renew(), name="idempotency-renewal")
    try:
        yield
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewing


async def complete(conn: AsyncConnection, user_id: UUID, key: str, status: int, body: Mapping[str, Any]) -> None:
    await conn.execute(
        "UPDATE idempotency_records SET state = 'done', response_status = %s, response_body = %s"
        " WHERE user_id = %s AND key = %s",
        (status, Jsonb(dict(body)), user_id, key),
    )


async def abandon(conn: AsyncConnection, user_id: UUID, key: str) -> None:
    """Free the key after a failed attempt (see the module docstring for why errors are not stored)."""
    await conn.execute(
        "DELETE FROM idempotency_records WHERE user_id = %s AND key = %s AND state = 'in_flight'", (user_id, key)
    )


async def purge_expired(conn: AsyncConnection) -> int:
    """Delete records past their TTL (the reaper may call this; claims also drop an expired record they meet)."""
    cursor = await conn.execute("DELETE FROM idempotency_records WHERE expires_at <= now()")
    return cursor.rowcount


async def forget(conn: AsyncConnection, user_id: UUID, key: str) -> None:
    """Free a key whose job was failed with its hold released (a refused dispatch): nothing to replay or charge."""
    await conn.execute("DELETE FROM idempotency_records WHERE user_id = %s AND key = %s", (user_id, key))
