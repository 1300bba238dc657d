"""The credit ledger: every balance change is one transaction that appends an entry with a unique idempotency key
and moves the account's `available`/`held` by the same amounts, so the ledger sum always equals the balance.

Concurrency: a hold is a conditional UPDATE (`available >= cost`), safe under READ COMMITTED because Postgres
re-checks the WHERE clause against the newest row version. Capture and release are guarded transitions of the
hold row out of 'pending', so a replayed completion or a reaper racing a worker applies at most once.
Every function here runs in its own transaction, or as a savepoint inside the caller's (e.g. the submit
transaction that creates the job, its hold and its dispatch together).
"""

from __future__ import annotations

import math
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


class UnknownPurchase(Exception):
    """A refund for a payment we have no purchase for (yet): the caller decides whether Stripe should retry."""


@dataclass(frozen=True)
class Balance:
    available: int
    held: int


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


async def hold(conn: AsyncConnection, user_id: UUID, job_id: UUID, amount: int, expires_at: datetime) -> None:
    """Reserve `amount` for the job. Raises InsufficientCredits (nothing written) when available < amount."""
    async with conn.transaction():
        await _post(conn, user_id, "hold", f"hold:{job_id}", -amount, amount, job_id=job_id, require_available=amount)
        await conn.execute(
            "INSERT INTO holds (job_id, user_id, amount, expires_at) VALUES (%s, %s, %s, %s)",
            (job_id, user_id, amount, expires_at),
        )


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


async def purchase(
    conn: AsyncConnection,
    user_id: UUID,
    checkout_session_id: str,
    *,
    pack: str,
    credits: int,
    amount_total: int,
    currency: str,
    payment_intent: str | None,
) -> bool:
    """Grant a paid checkout session's credits, once per session. True when this call granted them."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO purchases (checkout_session_id, user_id, pack, credits, amount_total, currency,"
            " payment_intent, status) VALUES (%s, %s, %s, %s, %s, %s, %s, 'paid')"
            " ON CONFLICT (checkout_session_id) DO UPDATE SET status = 'paid', updated_at = now(),"
            " payment_intent = coalesce(purchases.payment_intent, EXCLUDED.payment_intent)"
            " WHERE purchases.status = 'open'",
            (checkout_session_id, user_id, pack, credits, amount_total, currency, payment_intent),
        )
        return await _post(
            conn, user_id, "purchase", f"purchase:{checkout_session_id}", credits, 0, reference=checkout_session_id
        )


async def _lock_purchase(conn: AsyncConnection, payment_intent: str) -> dict[str, Any]:
    cursor = await conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM purchases WHERE payment_intent = %s FOR UPDATE", (payment_intent,)
    )
    purchase_row = await cursor.fetchone()
    if purchase_row is None:
        raise UnknownPurchase(payment_intent)
    return purchase_row


def _credit_share(purchase_row: dict[str, Any], amount: int) -> int:
    """The credits `amount` (smallest currency unit) of this purchase bought, rounded down."""
    if purchase_row["amount_total"] <= 0:
        return 0
    return math.floor(
        purchase_row["credits"] * min(amount, purchase_row["amount_total"]) / purchase_row["amount_total"]
    )


def _refunded_credits(purchase_row: dict[str, Any], credits_disputed: int) -> int:
    """What the refunds so far should have taken back, never more than disputes left of the purchase: refunds and
    disputes of one charge together take back at most what it granted."""
    target = _credit_share(purchase_row, purchase_row["amount_refunded"])
    allowed = max(purchase_row["credits"] - credits_disputed, 0)
    return max(purchase_row["credits_refunded"], min(target, allowed))


async def refund(conn: AsyncConnection, payment_intent: str, refund_id: str, amount_refunded: int) -> int:
    """Claw back credits for a refund. `amount_refunded` is Stripe's cumulative refunded amount for the charge, so
    events arriving twice or out of order never claw back more than the refunded share. Returns credits taken."""
    async with conn.transaction():
        purchase_row = await _lock_purchase(conn, payment_intent)
        if purchase_row["amount_total"] <= 0:
            return 0
        cumulative = min(amount_refunded, purchase_row["amount_total"])
        if cumulative <= purchase_row["amount_refunded"]:
            return 0  # an older or repeated event: a later one already covered this much
        refunded = _refunded_credits({**purchase_row, "amount_refunded": cumulative}, purchase_row["credits_disputed"])
        clawback = refunded - purchase_row["credits_refunded"]
        applied = clawback > 0 and await _post(
            conn, purchase_row["user_id"], "refund", f"refund:{refund_id}", -clawback, 0, reference=refund_id
        )
        if clawback > 0 and not applied:
            return 0  # this refund id was already applied
        status = "refunded" if cumulative >= purchase_row["amount_total"] else "partially_refunded"
        await conn.execute(
            "UPDATE purchases SET amount_refunded = %s, credits_refunded = %s, status = %s, updated_at = now()"
            " WHERE checkout_session_id = %s",
            (cumulative, refunded, status, purchase_row["checkout_session_id"]),
        )
        return max(clawback, 0)


# Closed disputes that leave the money with us: the claw-back is given back. `lost` keeps it.
DISPUTE_RETURNED = frozenset({"won", "warning_closed", "prevented"})


async def dispute_opened(conn: AsyncConnection, payment_intent: str, dispute_id: str, amount: int) -> int:
    """Claw back the disputed amount's credits, once per dispute (the balance may go negative). Returns credits
    taken: 0 for a dispute already known (repeated, or its `closed` event came first)."""
    async with conn.transaction():
        purchase_row = await _lock_purchase(conn, payment_intent)
        return await _open_dispute(conn, purchase_row, dispute_id, amount, "open")


async def _open_dispute(
    conn: AsyncConnection, purchase_row: dict[str, Any], dispute_id: str, amount: int, status: str
) -> int:
    # Under the purchase row's lock, so concurrent disputes and refunds of one charge see each other's totals.
    remaining = purchase_row["credits"] - purchase_row["credits_refunded"] - purchase_row["credits_disputed"]
    take = max(min(_credit_share(purchase_row, amount), remaining), 0)
    inserted = await conn.execute(
        "INSERT INTO disputes (dispute_id, checkout_session_id, amount, credits_clawed_back, status)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dispute_id) DO NOTHING RETURNING 1",
        (dispute_id, purchase_row["checkout_session_id"], amount, take, status),
    )
    if await inserted.fetchone() is None:
        return 0
    if take > 0:
        await _post(conn, purchase_row["user_id"], "refund", f"dispute:{dispute_id}", -take, 0, reference=dispute_id)
        await conn.execute(
            "UPDATE purchases SET credits_disputed = credits_disputed + %s, updated_at = now()"
            " WHERE checkout_session_id = %s",
            (take, purchase_row["checkout_session_id"]),
        )
    return take


async def dispute_closed(conn: AsyncConnection, payment_intent: str, dispute_id: str, amount: int, status: str) -> int:
    """Settle a dispute: a won one gives its claw-back back (less what refunds of the charge now take instead), a
    lost one keeps it. Returns the credits given back; -1 when this dispute was already closed (a replay)."""
    async with conn.transaction():
        purchase_row = await _lock_purchase(conn, payment_intent)
        cursor = await conn.execute(
            "SELECT status, credits_clawed_back FROM disputes WHERE dispute_id = %s FOR UPDATE", (dispute_id,)
        )
        row = await cursor.fetchone()
        if row is None:
            # `closed` before `created` (Stripe does not order events): a lost dispute claws back now, a won one
            # is recorded with nothing taken so the late `created` changes nothing.
            clawback = status not in DISPUTE_RETURNED
            await _open_dispute(conn, purchase_row, dispute_id, amount if clawback else 0, status)
            return 0
        previous, clawed = row
        if previous != "open":
            return -1
        await conn.execute(
            "UPDATE disputes SET status = %s, updated_at = now() WHERE dispute_id = %s", (status, dispute_id)
        )
        if status not in DISPUTE_RETURNED or clawed == 0:
            return 0
        disputed = purchase_row["credits_disputed"] - clawed
        # Refunds capped while the dispute held the credits now take their full share out of what is given back.
        refunded = _refunded_credits(purchase_row, disputed)
        given = clawed - (refunded - purchase_row["credits_refunded"])
        await _post(
            conn, purchase_row["user_id"], "adjustment", f"dispute_won:{dispute_id}", given, 0, reference=dispute_id
        )
        await conn.execute(
            "UPDATE purchases SET credits_disputed = %s, credits_refunded = %s, updated_at = now()"
            " WHERE checkout_session_id = %s",
            (disputed, refunded, purchase_row["checkout_session_id"]),
        )
        return given


async def adjust(conn: AsyncConnection, user_id: UUID, key: str, delta: int, *, note: str | None = None) -> bool:
    """An operator's correction or a local top-up (`studio token --credits`). Idempotent by `adjustment:<key>`."""
    return await _post(conn, user_id, "adjustment", f"adjustment:{key}", delta, 0, reference=note)


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
