"""Every statement on `purchases`, `disputes` and `stripe_events`, and nowhere else.

What a Stripe event does with these rows (who is granted what, the caps on refunds and disputes) is decided in
`api.billing`; these functions only read and write them. The `lock_*` reads take row locks that last until the
caller's transaction ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row


@dataclass(frozen=True)
class PaidPurchase:
    """A purchase as a refund or a dispute of its payment sees it (amounts in the smallest currency unit)."""

    checkout_session_id: str
    user_id: UUID
    credits: int
    amount_total: int
    amount_refunded: int  # cumulative, as Stripe reports it
    credits_refunded: int
    credits_disputed: int


@dataclass(frozen=True)
class DisputeState:
    status: str  # 'open' until charge.dispute.closed, then Stripe's final status
    credits_clawed_back: int


# ---- stripe_events ----


async def record_event(conn: AsyncConnection, event_id: str, event_type: str, object_id: str | None) -> bool:
    """True for the first delivery of this event id. A concurrent delivery of the same event waits here on the
    first one's uncommitted row, then gets False."""
    cursor = await conn.execute(
        "INSERT INTO stripe_events (event_id, type, object_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        (event_id, event_type, object_id),
    )
    return await cursor.fetchone() is not None


async def set_event_outcome(conn: AsyncConnection, event_id: str, outcome: str) -> None:
    await conn.execute("UPDATE stripe_events SET outcome = %s WHERE event_id = %s", (outcome, event_id))


# ---- purchases ----


async def insert_open(
    conn: AsyncConnection,
    checkout_session_id: str,
    user_id: UUID,
    *,
    pack: str,
    credits: int,
    amount_total: int,
    currency: str,
) -> None:
    """The purchase a new Checkout Session would make. The same session again keeps the first row."""
    await conn.execute(
        "INSERT INTO purchases (checkout_session_id, user_id, pack, credits, amount_total, currency, status)"
        " VALUES (%s, %s, %s, %s, %s, %s, 'open') ON CONFLICT (checkout_session_id) DO NOTHING",
        (checkout_session_id, user_id, pack, credits, amount_total, currency),
    )


async def session_purchase(conn: AsyncConnection, checkout_session_id: str) -> dict[str, Any] | None:
    """`user_id`, `pack` and `credits` recorded for this session at checkout, or None."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(
        "SELECT user_id, pack, credits FROM purchases WHERE checkout_session_id = %s", (checkout_session_id,)
    )
    return await cursor.fetchone()


async def upsert_paid(
    conn: AsyncConnection,
    checkout_session_id: str,
    user_id: UUID,
    *,
    pack: str,
    credits: int,
    amount_total: int,
    currency: str,
    payment_intent: str | None,
) -> None:
    """Mark the session's purchase paid (inserting it when checkout never recorded it). A purchase already past
    'open' keeps its status."""
    await conn.execute(
        "INSERT INTO purchases (checkout_session_id, user_id, pack, credits, amount_total, currency,"
        " payment_intent, status) VALUES (%s, %s, %s, %s, %s, %s, %s, 'paid')"
        " ON CONFLICT (checkout_session_id) DO UPDATE SET status = 'paid', updated_at = now(),"
        " payment_intent = coalesce(purchases.payment_intent, EXCLUDED.payment_intent)"
        " WHERE purchases.status = 'open'",
        (checkout_session_id, user_id, pack, credits, amount_total, currency, payment_intent),
    )


async def set_status_if_open(conn: AsyncConnection, checkout_session_id: str, status: str) -> None:
    # Only an open purchase changes: a paid one stays paid whatever order events arrive in.
    await conn.execute(
        "UPDATE purchases SET status = %s, updated_at = now() WHERE checkout_session_id = %s AND status = 'open'",
        (status, checkout_session_id),
    )


async def lock_by_payment_intent(conn: AsyncConnection, payment_intent: str) -> PaidPurchase | None:
    """The purchase paid by this PaymentIntent, locked FOR UPDATE; None when there is none (yet)."""
    cursor = conn.cursor(row_factory=class_row(PaidPurchase))
    await cursor.execute(
        "SELECT checkout_session_id, user_id, credits, amount_total, amount_refunded, credits_refunded,"
        " credits_disputed FROM purchases WHERE payment_intent = %s FOR UPDATE",
        (payment_intent,),
    )
    return await cursor.fetchone()


async def set_refunded(
    conn: AsyncConnection, checkout_session_id: str, *, amount_refunded: int, credits_refunded: int, status: str
) -> None:
    await conn.execute(
        "UPDATE purchases SET amount_refunded = %s, credits_refunded = %s, status = %s, updated_at = now()"
        " WHERE checkout_session_id = %s",
        (amount_refunded, credits_refunded, status, checkout_session_id),
    )


async def add_credits_disputed(conn: AsyncConnection, checkout_session_id: str, credits: int) -> None:
    await conn.execute(
        "UPDATE purchases SET credits_disputed = credits_disputed + %s, updated_at = now()"
        " WHERE checkout_session_id = %s",
        (credits, checkout_session_id),
    )


async def set_taken_back(
    conn: AsyncConnection, checkout_session_id: str, *, credits_disputed: int, credits_refunded: int
) -> None:
    """Both claw-back totals at once: what a won dispute leaves of them."""
    await conn.execute(
        "UPDATE purchases SET credits_disputed = %s, credits_refunded = %s, updated_at = now()"
        " WHERE checkout_session_id = %s",
        (credits_disputed, credits_refunded, checkout_session_id),
    )


# ---- disputes ----


async def insert_dispute(
    conn: AsyncConnection,
    dispute_id: str,
    checkout_session_id: str,
    *,
    amount: int,
    credits_clawed_back: int,
    status: str,
) -> bool:
    """False when this dispute is already recorded (its row is left as it was)."""
    cursor = await conn.execute(
        "INSERT INTO disputes (dispute_id, checkout_session_id, amount, credits_clawed_back, status)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (dispute_id) DO NOTHING RETURNING 1",
        (dispute_id, checkout_session_id, amount, credits_clawed_back, status),
    )
    return await cursor.fetchone() is not None


async def lock_dispute(conn: AsyncConnection, dispute_id: str) -> DisputeState | None:
    """The dispute's state, locked FOR UPDATE; None when it is not recorded yet."""
    cursor = conn.cursor(row_factory=class_row(DisputeState))
    await cursor.execute(
        "SELECT status, credits_clawed_back FROM disputes WHERE dispute_id = %s FOR UPDATE", (dispute_id,)
    )
    return await cursor.fetchone()


async def set_dispute_status(conn: AsyncConnection, dispute_id: str, status: str) -> None:
    await conn.execute(
        "UPDATE disputes SET status = %s, updated_at = now() WHERE dispute_id = %s", (status, dispute_id)
    )
