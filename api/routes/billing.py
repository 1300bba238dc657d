"""Stripe billing: credit packs, Checkout Sessions, and the webhook that grants and claws back credits.

The webhook records the event id and applies the event in ONE database transaction, so an event is never marked
seen without its effect (a crash rolls both back and Stripe redelivers). Grants are also deduped by checkout
session (`purchase:<session>` in the ledger), and refunds use Stripe's cumulative `amount_refunded`, so replays,
concurrent deliveries and out-of-order events never grant or claw back twice. Disputes claw back per dispute id
and give back when won (`db.ledger.dispute_opened` / `dispute_closed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import stripe
from fastapi import APIRouter, Header, Request
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from api.deps import CurrentUser, State
from api.errors import Problem
from api.routes.responses import AUTH_RESPONSES, problem_doc
from api.settings import CreditPack, Settings
from db import ledger

log = logging.getLogger("studio.billing")
router = APIRouter(prefix="/billing", tags=["billing"])

# Stripe's own default; a delivery older than this is refused so a captured request cannot be replayed later.
SIGNATURE_TOLERANCE_SECONDS = 300
PAID_STATUSES = ("paid", "no_payment_required")
# Anyone can POST here before the signature is checked: bound what we buffer. Stripe events are a few KiB.
MAX_WEBHOOK_BYTES = 1024 * 1024

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


# ---- models ----


class Pack(BaseModel):
    id: str = Field(examples=["starter"])
    name: str = Field(examples=["Starter: 500 credits"])
    credits: int = Field(examples=[500])
    amount: int = Field(description="Price in the currency's smallest unit (cents).", examples=[500])
    currency: str = Field(examples=["usd"])


class PacksResponse(BaseModel):
    enabled: bool = Field(description="False when this deployment has no Stripe keys: checkout answers 503.")
    packs: list[Pack]


class CheckoutRequest(BaseModel):
    pack_id: str = Field(min_length=1, max_length=64, examples=["starter"])


class CheckoutResponse(BaseModel):
    checkout_url: str = Field(description="Send the user here to pay (Stripe-hosted page).")
    session_id: str = Field(examples=["cs_test_a1b2c3"])
    expires_at: datetime = Field(description="The page stops accepting payment after this time.")


class WebhookAck(BaseModel):
    received: bool = True
    outcome: Outcome


_DISABLED = problem_doc(503, "billing_disabled", "Billing is not configured on this deployment")


# ---- packs and checkout ----


def _pack(settings: Settings, pack_id: str) -> CreditPack | None:
    return next((pack for pack in settings.packs if pack.id == pack_id), None)


def _billing_ready(settings: Settings) -> bool:
    # Without the webhook secret, money could be taken and never turned into credits: refuse checkout too.
    return bool(settings.stripe_secret_key and settings.stripe_webhook_secret)


@router.get("/packs", response_model=PacksResponse, summary="Credit packs for sale")
async def list_packs(state: State) -> PacksResponse:
    settings = state.settings
    packs = [Pack(**pack.model_dump()) for pack in settings.packs]
    return PacksResponse(enabled=_billing_ready(settings) and state.stripe is not None, packs=packs)


def _stripe_idempotency_key(user_id: uuid.UUID, header: str | None) -> str:
    # Scoped by user so two users' keys never collide in our Stripe account; hashed to fit Stripe's 255 chars.
    if header is None:
        return f"checkout-{uuid.uuid4()}"
    return "checkout-" + hashlib.sha256(f"{user_id}\n{header}".encode()).hexdigest()


@router.post(
    "/checkout",
    response_model=CheckoutResponse,
    summary="Start a Stripe Checkout for a credit pack",
    description="Credits are added when Stripe reports the payment (webhook), not when this call returns. The same "
    "`Idempotency-Key` returns the same Checkout Session.",
    responses={
        **AUTH_RESPONSES,
        422: problem_doc(422, "unknown_pack", "There is no pack with this id"),
        502: problem_doc(502, "payment_provider_error", "Stripe could not create the checkout"),
        503: _DISABLED,
    },
)
async def create_checkout(
    body: CheckoutRequest,
    user: CurrentUser,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> CheckoutResponse:
    settings = state.settings
    client: stripe.StripeClient | None = state.stripe
    if client is None or not _billing_ready(settings):
        raise Problem(503, "billing_disabled", "Billing is not configured on this deployment")
    pack = _pack(settings, body.pack_id)
    if pack is None:
        raise Problem(
            422,
            "unknown_pack",
            "There is no pack with this id",
            f"Choose one of: {', '.join(p.id for p in settings.packs)}.",
        )
    metadata = {"user_id": str(user.id), "pack_id": pack.id, "credits": str(pack.credits)}
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
        "client_reference_id": str(user.id),
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},  # so the payment in the Dashboard names the user too
        "success_url": settings.checkout_success_url,
        "cancel_url": settings.checkout_cancel_url,
    }
    if user.email:
        params["customer_email"] = user.email
    try:
        session = await client.v1.checkout.sessions.create_async(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": _stripe_idempotency_key(user.id, idempotency_key)},
        )
    except stripe.IdempotencyError as exc:
        raise Problem(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was used with another request",
            "Use a new Idempotency-Key for a different pack.",
        ) from exc
    except stripe.StripeError as exc:
        log.error("stripe checkout failed: %s (request id %s)", exc.user_message or exc, exc.request_id)
        raise Problem(
            502, "payment_provider_error", "Stripe could not create the checkout", "Retry in a moment."
        ) from exc
    async with state.pool.connection() as conn:
        # The same Idempotency-Key gives back the same session: keep the first row.
        await conn.execute(
            "INSERT INTO purchases (checkout_session_id, user_id, pack, credits, amount_total, currency, status)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'open') ON CONFLICT (checkout_session_id) DO NOTHING",
            (
                session.id,
                user.id,
                pack.id,
                pack.credits,
                session.amount_total or pack.amount,
                session.currency or pack.currency,
            ),
        )
    return CheckoutResponse(
        checkout_url=session.url or "",
        session_id=session.id,
        expires_at=datetime.fromtimestamp(session.expires_at, UTC),
    )


# ---- webhook ----


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
    cursor = conn.cursor(row_factory=dict_row)
    row = await (
        await cursor.execute(
            "SELECT user_id, pack, credits FROM purchases WHERE checkout_session_id = %s", (session_id,)
        )
    ).fetchone()
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
    account = await (await conn.execute("SELECT 1 FROM accounts WHERE user_id = %s", (claimed.user_id,))).fetchone()
    if account is None:
        log.error("checkout session %s names unknown user %s", session_id, claimed.user_id)
        return None
    return claimed


async def _grant(conn: AsyncConnection, session: dict[str, Any]) -> Outcome:
    facts = await _purchase_facts(conn, session)
    if facts is None:
        return "ignored"
    granted = await ledger.purchase(
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


async def _mark(conn: AsyncConnection, session_id: str, status: str) -> None:
    # Only an open purchase changes: a paid one stays paid whatever order events arrive in.
    await conn.execute(
        "UPDATE purchases SET status = %s, updated_at = now() WHERE checkout_session_id = %s AND status = 'open'",
        (status, session_id),
    )


def _refund_key(charge: dict[str, Any]) -> str:
    """The newest refund's id. Since API version 2022-11-15 charges no longer embed `refunds`; then the charge id
    and its cumulative amount identify this refund state just as uniquely."""
    refunds = (charge.get("refunds") or {}).get("data") or []
    if refunds:
        return max(refunds, key=lambda refund: refund.get("created", 0))["id"]
    return f"{charge['id']}@{charge['amount_refunded']}"


class _RefundNotYetKnown(Exception):
    pass


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
        await _mark(conn, obj["id"], "payment_failed")
        return "payment_failed"
    if kind == "checkout.session.expired":
        await _mark(conn, obj["id"], "expired")
        return "expired"
    if kind == "charge.refunded":
        if not obj.get("payment_intent"):
            return "ignored"
        try:
            taken = await ledger.refund(conn, obj["payment_intent"], _refund_key(obj), obj["amount_refunded"])
        except ledger.UnknownPurchase as exc:
            raise _RefundNotYetKnown(obj["payment_intent"]) from exc
        # No change: an older or repeated refund state, or a refund too small to be worth a whole credit yet.
        return "refunded" if taken > 0 else "refund_no_change"
    if kind in ("charge.dispute.created", "charge.dispute.closed"):
        return await _apply_dispute(conn, kind, obj)
    return "ignored"


async def _apply_dispute(conn: AsyncConnection, kind: str, dispute: dict[str, Any]) -> Outcome:
    """A chargeback is handled like a refund: `created` claws back the disputed share of the purchase's credits at
    once (a negative balance blocks new jobs), `closed` gives it back when the money came back to us (won), and
    keeps it when lost. Idempotent per dispute id, whatever order or number of events arrive."""
    payment_intent = dispute.get("payment_intent")
    if not payment_intent:
        return "ignored"  # not a PaymentIntent charge, so not a Checkout purchase of ours
    try:
        if kind == "charge.dispute.created":
            taken = await ledger.dispute_opened(conn, payment_intent, dispute["id"], dispute["amount"])
            if taken == 0:
                return "dispute_no_change"
            log.warning("dispute %s on %s: %d credits clawed back", dispute["id"], payment_intent, taken)
            return "disputed"
        given = await ledger.dispute_closed(conn, payment_intent, dispute["id"], dispute["amount"], dispute["status"])
    except ledger.UnknownPurchase as exc:
        raise _RefundNotYetKnown(payment_intent) from exc
    if given < 0:
        return "dispute_no_change"
    return "dispute_won" if dispute["status"] in ledger.DISPUTE_RETURNED else "dispute_lost"


async def _read_capped(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "payload_too_large", "The event is too large")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/stripe-webhook",
    response_model=WebhookAck,
    summary="Stripe events (called by Stripe)",
    description="Verifies `Stripe-Signature` on the raw body. Replays answer 200 and change nothing.",
    responses={
        400: problem_doc(400, "bad_signature", "The Stripe signature is missing, invalid or stale"),
        409: problem_doc(409, "purchase_not_found", "A refund or dispute for a payment not recorded yet"),
        503: _DISABLED,
    },
)
async def stripe_webhook(request: Request, state: State) -> WebhookAck:
    secret = state.settings.stripe_webhook_secret
    if not secret:
        raise Problem(503, "billing_disabled", "Billing is not configured on this deployment")
    payload = await _read_capped(request, MAX_WEBHOOK_BYTES)
    try:
        stripe.WebhookSignature.verify_header(
            payload, request.headers.get("stripe-signature"), secret, tolerance=SIGNATURE_TOLERANCE_SECONDS
        )
        event = json.loads(payload)
        event_id, data_object = event["id"], event["data"]["object"]
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise Problem(400, "bad_signature", "The Stripe signature is missing, invalid or stale") from exc
    try:
        async with state.pool.connection() as conn, conn.transaction():
            # A concurrent delivery of the same event waits here on the first one's uncommitted row, then skips.
            first = await (
                await conn.execute(
                    "INSERT INTO stripe_events (event_id, type, object_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                    (event_id, event["type"], data_object.get("id")),
                )
            ).fetchone()
            if first is None:
                return WebhookAck(outcome="duplicate_event")
            outcome = await _apply(conn, event)
            await conn.execute("UPDATE stripe_events SET outcome = %s WHERE event_id = %s", (outcome, event_id))
    except _RefundNotYetKnown as exc:
        # Everything above rolled back, the event id included. A non-2xx makes Stripe redeliver (for up to 3
        # days), by which time checkout.session.completed has usually been applied. A refund for a payment
        # that is not ours keeps failing and shows up in Stripe's webhook log for an operator.
        raise Problem(
            409,
            "purchase_not_found",
            "A refund or dispute for a payment not recorded yet",
            f"No paid purchase has payment_intent {exc}; Stripe will retry.",
        ) from exc
    log.info("stripe event %s %s: %s", event_id, event["type"], outcome)
    return WebhookAck(outcome=outcome)
