"""The credit ledger: every balance change is one transaction that appends an entry with a unique idempotency key
and moves the account's `available`/`held` by the same amounts, so the ledger sum always equals the balance.

Concurrency: a hold is a conditional UPDATE (`available >= cost`), safe under READ COMMITTED because Postgres
re-checks the WHERE clause against the newest row version. Capture and release are guarded transitions of the
hold row out of 'pending', so a replayed completion or a reaper racing a worker applies at most once.
Every function here runs in its own transaction, or as a savepoint inside the caller's (e.g. the submit
transaction that creates the job, its hold and its dispatch together).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import dict_row

LedgerKind = Literal["grant", "purchase", "hold", "capture", "release", "refund", "adjustment"]


class InsufficientCredits(Exception):
    def __init__(self, required: int, available: int) -> None:
        super().__init__(f"this job needs {required} credits and {available} are available")
        self.required = required
        self.available = available


class UnknownAccount(Exception):
    pass


@dataclass(frozen=True)
class Balance:
    available: int
    held: int


@dataclass(frozen=True)
class KeySpend:
    day: int
    month: int


@dataclass(frozen=True)
class InvariantViolation:
    user_id: UUID
    available: int
    held: int
    ledger_available: int
    ledger_held: int


async def _post(
    conn: AsyncConnection,
    user_id: UUID,
    kind: LedgerKind,
    key: str,
    available_delta: int,
    held_delta: int,
    *,
    job_id: UUID | None = None,
    reference: str | None = None,
    require_available: int | None = None,
) -> bool:
    """Append one entry and apply it to the account. False when the key was already used (a replay).

    With `require_available`, the account must have at least that much available, else InsufficientCredits
    and nothing is written.
    """
    async with conn.transaction():
        inserted = await conn.execute(
            "INSERT INTO ledger_entries (user_id, kind, idempotency_key, available_delta, held_delta, job_id,"
            " reference) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            (user_id, kind, key, available_delta, held_delta, job_id, reference),
        )
        if await inserted.fetchone() is None:
            return False
        updated = await conn.execute(
            "UPDATE accounts SET available = available + %s, held = held + %s, updated_at = now()"
            " WHERE user_id = %s AND (%s::bigint IS NULL OR available >= %s::bigint) RETURNING available",
            (available_delta, held_delta, user_id, require_available, require_available),
        )
        if await updated.fetchone() is None:
            row = await (await conn.execute("SELECT available FROM accounts WHERE user_id = %s", (user_id,))).fetchone()
            if row is None:
                raise UnknownAccount(str(user_id))
            # Raising rolls back this savepoint, ledger entry included.
            raise InsufficientCredits(required=require_available or 0, available=row[0])
        return True


async def ensure_account(conn: AsyncConnection, user_id: UUID, *, welcome_grant: int) -> bool:
    """Create the account if missing and give the welcome grant, once ever. True when the grant was applied."""
    async with conn.transaction():
        await conn.execute("INSERT INTO accounts (user_id) VALUES (%s) ON CONFLICT DO NOTHING", (user_id,))
        if welcome_grant <= 0:
            return False
        return await _post(conn, user_id, "grant", f"grant:{user_id}", welcome_grant, 0)


async def hold(
    conn: AsyncConnection,
    user_id: UUID,
    job_id: UUID,
    amount: int,
    expires_at: datetime,
    *,
    api_key_id: UUID | None = None,
) -> None:
    """Reserve `amount` for the job, recording the API key it was submitted through (its caps and usage count it).
    Raises InsufficientCredits (nothing written) when available < amount."""
    async with conn.transaction():
        await _post(conn, user_id, "hold", f"hold:{job_id}", -amount, amount, job_id=job_id, require_available=amount)
        await conn.execute(
            "INSERT INTO holds (job_id, user_id, amount, expires_at, api_key_id) VALUES (%s, %s, %s, %s, %s)",
            (job_id, user_id, amount, expires_at, api_key_id),
        )


async def key_spend(conn: AsyncConnection, api_key_id: UUID, day_start: datetime, month_start: datetime) -> KeySpend:
    """Credits held or captured through the key since `day_start` and since `month_start`: what its caps count.
    Released and expired holds gave their credits back, so they do not count."""
    cursor = await conn.execute(
        "SELECT coalesce(sum(amount) FILTER (WHERE created_at >= %(day)s), 0)::bigint,"
        " coalesce(sum(amount) FILTER (WHERE created_at >= %(month)s), 0)::bigint FROM holds"
        " WHERE api_key_id = %(key)s AND state IN ('pending', 'captured')"
        " AND created_at >= least(%(day)s::timestamptz, %(month)s::timestamptz)",
        {"key": api_key_id, "day": day_start, "month": month_start},
    )
    row = await cursor.fetchone()
    assert row is not None
    return KeySpend(day=row[0], month=row[1])


async def _settle(conn: AsyncConnection, job_id: UUID, to_state: str, kind: LedgerKind) -> bool:
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE holds SET state = %s, settled_at = now() WHERE job_id = %s AND state = 'pending'"
            " RETURNING user_id, amount",
            (to_state, job_id),
        )
        row = await cursor.fetchone()
        if row is None:
            return False  # already captured, released or expired: the first settlement won
        user_id, amount = row
        available_delta = 0 if kind == "capture" else amount
        return await _post(conn, user_id, kind, f"{kind}:{job_id}", available_delta, -amount, job_id=job_id)


async def capture(conn: AsyncConnection, job_id: UUID) -> bool:
    """Spend the job's hold. True only for the one call that moved it out of 'pending'."""
    return await _settle(conn, job_id, "captured", "capture")


async def release(conn: AsyncConnection, job_id: UUID, *, expired: bool = False) -> bool:
    """Return the job's hold to available. True only for the one call that moved it out of 'pending'."""
    return await _settle(conn, job_id, "expired" if expired else "released", "release")


async def credit_purchase(conn: AsyncConnection, user_id: UUID, checkout_session_id: str, credits: int) -> bool:
    """Add a paid checkout session's credits, once per session. True when this call added them."""
    return await _post(
        conn, user_id, "purchase", f"purchase:{checkout_session_id}", credits, 0, reference=checkout_session_id
    )


async def claw_back_refund(conn: AsyncConnection, user_id: UUID, refund_id: str, credits: int) -> bool:
    """Take back what a refund's share of a purchase bought (the balance may go negative), once per refund id."""
    return await _post(conn, user_id, "refund", f"refund:{refund_id}", -credits, 0, reference=refund_id)


async def claw_back_dispute(conn: AsyncConnection, user_id: UUID, dispute_id: str, credits: int) -> bool:
    """Take back what a disputed share of a purchase bought (the balance may go negative), once per dispute."""
    return await _post(conn, user_id, "refund", f"dispute:{dispute_id}", -credits, 0, reference=dispute_id)


async def give_back_dispute(conn: AsyncConnection, user_id: UUID, dispute_id: str, credits: int) -> bool:
    """Return a won dispute's claw-back, once per dispute."""
    return await _post(conn, user_id, "adjustment", f"dispute_won:{dispute_id}", credits, 0, reference=dispute_id)


async def adjust(conn: AsyncConnection, user_id: UUID, key: str, delta: int, *, note: str | None = None) -> bool:
    """An operator's correction or a local top-up (`studio token --credits`). Idempotent by `adjustment:<key>`."""
    return await _post(conn, user_id, "adjustment", f"adjustment:{key}", delta, 0, reference=note)


async def account_exists(conn: AsyncConnection, user_id: UUID) -> bool:
    return await (await conn.execute("SELECT 1 FROM accounts WHERE user_id = %s", (user_id,))).fetchone() is not None


async def balance(conn: AsyncConnection, user_id: UUID) -> Balance:
    row = await (await conn.execute("SELECT available, held FROM accounts WHERE user_id = %s", (user_id,))).fetchone()
    if row is None:
        raise UnknownAccount(str(user_id))
    return Balance(available=row[0], held=row[1])


async def entries(conn: AsyncConnection, user_id: UUID, *, before: int | None, limit: int) -> list[dict[str, Any]]:
    """The user's ledger entries, newest first; `before` is the id of the last entry of the previous page."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT id, kind, available_delta, held_delta, job_id, reference, created_at FROM ledger_entries"
        " WHERE user_id = %s AND (%s::bigint IS NULL OR id < %s::bigint) ORDER BY id DESC LIMIT %s",
        (user_id, before, before, limit),
    )
    return await cursor.fetchall()


UsageGroup = Literal["day", "task", "api_key"]
# What each grouping groups captures by: the UTC day of the capture, the job's task, the key its hold was made through.
_USAGE_GROUPS: dict[str, str] = {
    "day": "to_char((e.created_at AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD')",
    "task": "j.task",
    "api_key": "h.api_key_id::text",
}


@dataclass(frozen=True)
class UsageRow:
    group: str | None  # the day (YYYY-MM-DD), the task, or the API key id (None: the account's own token)
    credits: int
    jobs: int
    audio_seconds: float


async def usage(
    conn: AsyncConnection, user_id: UUID, start: datetime, end: datetime, group_by: UsageGroup
) -> list[UsageRow]:
    """Captured credits, the jobs they paid for and those jobs' audio seconds, from the capture entries of the user's
    ledger in [start, end), grouped; ordered by group."""
    cursor = await conn.execute(
        f"SELECT {_USAGE_GROUPS[group_by]} AS grp, coalesce(sum(-e.held_delta), 0)::bigint, count(*),"
        " coalesce(sum((j.metrics->>'audio_seconds')::float8), 0)"
        " FROM ledger_entries e JOIN jobs j ON j.id = e.job_id JOIN holds h ON h.job_id = e.job_id"
        " WHERE e.user_id = %s AND e.kind = 'capture' AND e.created_at >= %s AND e.created_at < %s"
        " GROUP BY grp ORDER BY grp NULLS LAST",
        (user_id, start, end),
    )
    return [UsageRow(row[0], int(row[1]), int(row[2]), round(float(row[3]), 3)) for row in await cursor.fetchall()]


async def invariant_violations(conn: AsyncConnection) -> list[InvariantViolation]:
    """Every account whose balance differs from the sum of its ledger entries (empty when all is well)."""
    cursor = await conn.execute(
        "SELECT a.user_id, a.available, a.held, coalesce(sum(e.available_delta), 0)::bigint,"
        " coalesce(sum(e.held_delta), 0)::bigint"
        " FROM accounts a LEFT JOIN ledger_entries e ON e.user_id = a.user_id"
        " GROUP BY a.user_id, a.available, a.held"
        " HAVING a.available <> coalesce(sum(e.available_delta), 0) OR a.held <> coalesce(sum(e.held_delta), 0)"
    )
    return [InvariantViolation(*row) for row in await cursor.fetchall()]
