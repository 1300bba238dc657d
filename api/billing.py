"""Stripe billing without the web: Checkout Sessions for credit packs, and what each Stripe event does to the ledger.

`apply_event` records the event id and applies the event in ONE database transaction, so an event is never marked
seen without its effect (a crash rolls both back and Stripe redelivers). Grants are also deduped by checkout
session (`purchase:<session>` in the ledger), and refunds use Stripe's cumulative `amount_refunded`, so replays,
concurrent deliveries and out-of-order events never grant or claw back twice. Disputes claw back per dispute id
and give back when won. Refunds and disputes of one payment are computed under its purchase row's lock and
together never take back more than it bought. The HTTP side (signature, status codes) is `api.routes.billing`;
every statement on the billing tables is `db.purchases`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import stripe
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api.settings import CreditPack, Settings
from db import ledger
from db import purchases as db_purchases

log = logging.getLogger("studio.billing")

PAID_STATUSES = ("paid", "no_payment_required")
# Closed disputes that leave the money with us: the claw-back is given back. `lost` keeps it.
DISPUTE_RETURNED = frozenset({"won", "warning_closed", "prevented"})

Outcome = Literal[
    "granted",
    "already_granted",
    "awaiting_payment",
    "payment_failed",
    "expired",
    "refunded",
    "refund_no_change",
    "disputed",
    "dispute_won",
    "dispute_lost",
    "dispute_no_change",
    "duplicate_event",
    "ignored",
]


class UnknownPurchase(Exception):
    """A refund or dispute for a payment with no purchase recorded (yet); the message is its payment_intent."""


class CheckoutKeyReused(Exception):
    """Stripe refused the Idempotency-Key: the same user used it for another request."""


class PaymentProviderError(Exception):
    """Stripe could not create the Checkout Session (logged with Stripe's request id)."""


# ---- packs and checkout ----


@dataclass(frozen=True)
class CheckoutSession:
    session_id: str
    url: str
    expires_at: datetime


def billing_ready(settings: Settings) -> bool:
    # Without the webhook secret, money could be taken and never turned into credits: refuse checkout too.
    return bool(settings.stripe_secret_key and settings.stripe_webhook_secret)


def find_pack(settings: Settings, pack_id: str) -> CreditPack | None:
    return next((pack for pack in settings.packs if pack.id == pack_id), None)


def _stripe_idempotency_key(user_id: uuid.UUID, header: str | None) -> str:
    # Scoped by user so two users' keys never collide in our Stripe account; hashed to fit Stripe's 255 chars.
    if header is None:
        return f"checkout-{uuid.uuid4()}"
    return "checkout-" + hashlib.sha256(f"{user_id}\n{header}".encode()).hexdigest()


async def start_checkout(
    client: stripe.StripeClient,
    pool: AsyncConnectionPool,
    settings: Settings,
    pack: CreditPack,
    *,
    user_id: uuid.UUID,
    email: str | None,
    idempotency_key: str | None,
) -> CheckoutSession:
    """Create a Stripe Checkout Session for the pack and record its purchase as open. The same Idempotency-Key
    gives back the same session. Raises CheckoutKeyReused or PaymentProviderError (nothing recorded)."""
    metadata = {"user_id": str(user_id), "pack_id": pack.id, "credits": str(pack.credits)}
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": pack.currency,
                    "unit_amount": pack.amount,
                    "product_data": {"name": pack.name},
                },
                "quantity": 1,
            }
        ],
        "client_reference_id": str(user_id),
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},  # so the payment in the Dashboard names the user too
        "success_url": settings.checkout_success_url,
        "cancel_url": settings.checkout_cancel_url,
    }
    if email:
        params["customer_email"] = email
    try:
        session = await client.v1.checkout.sessions.create_async(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": _stripe_idempotency_key(user_id, idempotency_key)},
        )
    except stripe.IdempotencyError as exc:
        raise CheckoutKeyReused from exc
    except stripe.StripeError as exc:
        log.error("stripe checkout failed: %s (request id %s)", exc.user_message or exc, exc.request_id)
        raise PaymentProviderError from exc
    async with pool.connection() as conn:
        await db_purchases.insert_open(
            conn,
            session.id,
            user_id,
            pack=pack.id,
            credits=pack.credits,
            amount_total=session.amount_total or pack.amount,
            currency=session.currency or pack.currency,
        )
    return CheckoutSession(
        session_id=session.id, url=session.url or "", expires_at=datetime.fromtimestamp(session.expires_at, UTC)
    )


# ---- Stripe events ----


async def apply_event(pool: AsyncConnectionPool, event: dict[str, Any]) -> Outcome:
    """Apply a verified Stripe event, once per event id: its effect and its id commit together. Raises
    UnknownPurchase for a refund or dispute of a payment not recorded yet, with everything (the event id included)
    rolled back, so that Stripe's redelivery can apply it later."""
    event_id = event["id"]
    async with pool.connection() as conn, conn.transaction():
        # A concurrent delivery of the same event waits here on the first one's uncommitted row, then skips.
        first = await db_purchases.record_event(conn, event_id, event["type"], event["data"]["object"].get("id"))
        if not first:
            return "duplicate_event"
        outcome = await _apply(conn, event)
        await db_purchases.set_event_outcome(conn, event_id, outcome)
    log.info("stripe event %s %s: %s", event_id, event["type"], outcome)
    return outcome


async def _apply(conn: AsyncConnection, event: dict[str, Any]) -> Outcome:
    kind = event["type"]
    obj = event["data"]["object"]
    if kind == "checkout.session.completed":
        if obj.get("payment_status") in PAID_STATUSES:
            return await _grant(conn, obj)
        return "awaiting_payment"  # async methods (bank debits): async_payment_succeeded grants later
    if kind == "checkout.session.async_payment_succeeded":
        return await _grant(conn, obj)
    if kind == "checkout.session.async_payment_failed":
        await db_purchases.set_status_if_open(conn, obj["id"], "payment_failed")
        return "payment_failed"
    if kind == "checkout.session.expired":
        await db_purchases.set_status_if_open(conn, obj["id"], "expired")
        return "expired"
    if kind == "charge.refunded":
        if not obj.get("payment_intent"):
            return "ignored"
        taken = await refund(conn, obj["payment_intent"], _refund_key(obj), obj["amount_refunded"])
        # No change: an older or repeated refund state, or a refund too small to be worth a whole credit yet.
        return "refunded" if taken > 0 else "refund_no_change"
    if kind in ("charge.dispute.created", "charge.dispute.closed"):
        return await _apply_dispute(conn, kind, obj)
    return "ignored"


# ---- grants ----


class _PurchaseFacts(BaseModel):
    user_id: uuid.UUID
    pack: str
    credits: int


async def _purchase_facts(conn: AsyncConnection, session: dict[str, Any]) -> _PurchaseFacts | None:
    """Who gets what for this session: its metadata and client_reference_id, cross-checked with our purchase row.
    None (logged) when they disagree or name nobody we know: retrying would not fix it, an operator must look."""
    session_id = session["id"]
    metadata = session.get("metadata") or {}
    try:
        claimed = _PurchaseFacts(user_id=metadata["user_id"], pack=metadata["pack_id"], credits=metadata["credits"])
    except (KeyError, ValueError):
        log.error("checkout session %s has no usable metadata; not ours or created by hand", session_id)
        return None
    if session.get("client_reference_id") != str(claimed.user_id):
        log.error("checkout session %s: client_reference_id and metadata.user_id differ", session_id)
        return None
    row = await db_purchases.session_purchase(conn, session_id)
    if row is not None:
        recorded = _PurchaseFacts(**row)
        if recorded != claimed:
            log.error(
                "checkout session %s: metadata %s differs from the purchase row %s", session_id, claimed, recorded
            )
            return None
        return recorded
    # No row: the checkout call died between Stripe and our insert. The metadata is ours (signed event), so
    # grant from it, provided the account exists in this database.
    if not await ledger.account_exists(conn, claimed.user_id):
        log.error("checkout session %s names unknown user %s", session_id, claimed.user_id)
        return None
    return claimed


async def _grant(conn: AsyncConnection, session: dict[str, Any]) -> Outcome:
    facts = await _purchase_facts(conn, session)
    if facts is None:
        return "ignored"
    granted = await grant_purchase(
        conn,
        facts.user_id,
        session["id"],
        pack=facts.pack,
        credits=facts.credits,
        amount_total=session.get("amount_total") or 0,
        currency=session.get("currency") or "usd",
        payment_intent=session.get("payment_intent"),
    )
    return "granted" if granted else "already_granted"


async def grant_purchase(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    checkout_session_id: str,
    *,
    pack: str,
    credits: int,
    amount_total: int,
    currency: str,
    payment_intent: str | None,
) -> bool:
    """Mark a paid checkout session's purchase paid and grant its credits, once per session. True when this call
    granted them."""
    async with conn.transaction():
        await db_purchases.upsert_paid(
            conn,
            checkout_session_id,
            user_id,
            pack=pack,
            credits=credits,
            amount_total=amount_total,
            currency=currency,
            payment_intent=payment_intent,
        )
        return await ledger.credit_purchase(conn, user_id, checkout_session_id, credits)


# ---- refunds and disputes: the caps ----


async def _lock_purchase(conn: AsyncConnection, payment_intent: str) -> db_purchases.PaidPurchase:
    purchase = await db_purchases.lock_by_payment_intent(conn, payment_intent)
    if purchase is None:
        raise UnknownPurchase(payment_intent)
    return purchase


def _credit_share(purchase: db_purchases.PaidPurchase, amount: int) -> int:
    """The credits `amount` (smallest currency unit) of this purchase bought, rounded down."""
    if purchase.amount_total <= 0:
        return 0
    return math.floor(purchase.credits * min(amount, purchase.amount_total) / purchase.amount_total)


def _refunded_credits(purchase: db_purchases.PaidPurchase, *, amount_refunded: int, credits_disputed: int) -> int:
    """What refunds of `amount_refunded` should have taken back, never more than disputes left of the purchase:
    refunds and disputes of one charge together take back at most what it granted."""
    target = _credit_share(purchase, amount_refunded)
    allowed = max(purchase.credits - credits_disputed, 0)
    return max(purchase.credits_refunded, min(target, allowed))


def _refund_key(charge: dict[str, Any]) -> str:
    """The newest refund's id. Since API version 2022-11-15 charges no longer embed `refunds`; then the charge id
    and its cumulative amount identify this refund state just as uniquely."""
    refunds = (charge.get("refunds") or {}).get("data") or []
    if refunds:
        return max(refunds, key=lambda refund: refund.get("created", 0))["id"]
    return f"{charge['id']}@{charge['amount_refunded']}"


async def refund(conn: AsyncConnection, payment_intent: str, refund_id: str, amount_refunded: int) -> int:
    """Claw back credits for a refund. `amount_refunded` is Stripe's cumulative refunded amount for the charge, so
    events arriving twice or out of order never claw back more than the refunded share. Returns credits taken.
    Raises UnknownPurchase."""
    async with conn.transaction():
        purchase = await _lock_purchase(conn, payment_intent)
        if purchase.amount_total <= 0:
            return 0
        cumulative = min(amount_refunded, purchase.amount_total)
        if cumulative <= purchase.amount_refunded:
            return 0  # an older or repeated event: a later one already covered this much
        refunded = _refunded_credits(purchase, amount_refunded=cumulative, credits_disputed=purchase.credits_disputed)
        clawback = refunded - purchase.credits_refunded
        applied = clawback > 0 and await ledger.claw_back_refund(conn, purchase.user_id, refund_id, clawback)
        if clawback > 0 and not applied:
            return 0  # this refund id was already applied
        status = "refunded" if cumulative >= purchase.amount_total else "partially_refunded"
        await db_purchases.set_refunded(
            conn, purchase.checkout_session_id, amount_refunded=cumulative, credits_refunded=refunded, status=status
        )
        return max(clawback, 0)


async def _apply_dispute(conn: AsyncConnection, kind: str, dispute: dict[str, Any]) -> Outcome:
    """A chargeback is handled like a refund: `created` claws back the disputed share of the purchase's credits at
    once (a negative balance blocks new jobs), `closed` gives it back when the money came back to us (won), and
    keeps it when lost. Idempotent per dispute id, whatever order or number of events arrive."""
    payment_intent = dispute.get("payment_intent")
    if not payment_intent:
        return "ignored"  # not a PaymentIntent charge, so not a Checkout purchase of ours
    if kind == "charge.dispute.created":
        taken = await dispute_opened(conn, payment_intent, dispute["id"], dispute["amount"])
        if taken == 0:
            return "dispute_no_change"
        log.warning("dispute %s on %s: %d credits clawed back", dispute["id"], payment_intent, taken)
        return "disputed"
    given = await dispute_closed(conn, payment_intent, dispute["id"], dispute["amount"], dispute["status"])
    if given < 0:
        return "dispute_no_change"
    return "dispute_won" if dispute["status"] in DISPUTE_RETURNED else "dispute_lost"


async def dispute_opened(conn: AsyncConnection, payment_intent: str, dispute_id: str, amount: int) -> int:
    """Claw back the disputed amount's credits, once per dispute (the balance may go negative). Returns credits
    taken: 0 for a dispute already known (repeated, or its `closed` event came first). Raises UnknownPurchase."""
    async with conn.transaction():
        purchase = await _lock_purchase(conn, payment_intent)
        return await _open_dispute(conn, purchase, dispute_id, amount, "open")


async def _open_dispute(
    conn: AsyncConnection, purchase: db_purchases.PaidPurchase, dispute_id: str, amount: int, status: str
) -> int:
    # Under the purchase row's lock, so concurrent disputes and refunds of one charge see each other's totals.
    remaining = purchase.credits - purchase.credits_refunded - purchase.credits_disputed
    take = max(min(_credit_share(purchase, amount), remaining), 0)
    recorded = await db_purchases.insert_dispute(
        conn, dispute_id, purchase.checkout_session_id, amount=amount, credits_clawed_back=take, status=status
    )
    if not recorded:
        return 0
    if take > 0:
        await ledger.claw_back_dispute(conn, purchase.user_id, dispute_id, take)
        await db_purchases.add_credits_disputed(conn, purchase.checkout_session_id, take)
    return take


async def dispute_closed(conn: AsyncConnection, payment_intent: str, dispute_id: str, amount: int, status: str) -> int:
    """Settle a dispute: a won one gives its claw-back back (less what refunds of the charge now take instead), a
    lost one keeps it. Returns the credits given back; -1 when this dispute was already closed (a replay).
    Raises UnknownPurchase."""
    async with conn.transaction():
        purchase = await _lock_purchase(conn, payment_intent)
        recorded = await db_purchases.lock_dispute(conn, dispute_id)
        if recorded is None:
            # `closed` before `created` (Stripe does not order events): a lost dispute claws back now, a won one
            # is recorded with nothing taken so the late `created` changes nothing.
            clawback = status not in DISPUTE_RETURNED
            await _open_dispute(conn, purchase, dispute_id, amount if clawback else 0, status)
            return 0
        if recorded.status != "open":
            return -1
        await db_purchases.set_dispute_status(conn, dispute_id, status)
        clawed = recorded.credits_clawed_back
        if status not in DISPUTE_RETURNED or clawed == 0:
            return 0
        disputed = purchase.credits_disputed - clawed
        # Refunds capped while the dispute held the credits now take their full share out of what is given back.
        refunded = _refunded_credits(purchase, amount_refunded=purchase.amount_refunded, credits_disputed=disputed)
        given = clawed - (refunded - purchase.credits_refunded)
        await ledger.give_back_dispute(conn, purchase.user_id, dispute_id, given)
        await db_purchases.set_taken_back(
            conn, purchase.checkout_session_id, credits_disputed=disputed, credits_refunded=refunded
        )
        return given
