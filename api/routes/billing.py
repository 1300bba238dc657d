"""/v1/billing over HTTP: credit packs, Checkout, and the Stripe webhook (size cap, `Stripe-Signature`).

What a purchase, refund or dispute does to the ledger is `api.billing`; this module maps its results and errors to
responses.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import stripe
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from api import billing
from api.deps import CurrentUser, State
from api.errors import Problem
from api.routes.responses import AUTH_RESPONSES, problem_doc

router = APIRouter(prefix="/billing", tags=["billing"])

# Stripe's own default; a delivery older than this is refused so a captured request cannot be replayed later.
SIGNATURE_TOLERANCE_SECONDS = 300
# Anyone can POST here before the signature is checked: bound what we buffer. Stripe events are a few KiB.
MAX_WEBHOOK_BYTES = 1024 * 1024


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
    outcome: billing.Outcome


_DISABLED = problem_doc(503, "billing_disabled", "Billing is not configured on this deployment")


# ---- packs and checkout ----


@router.get("/packs", response_model=PacksResponse, summary="Credit packs for sale")
async def list_packs(state: State) -> PacksResponse:
    settings = state.settings
    packs = [Pack(**pack.model_dump()) for pack in settings.packs]
    return PacksResponse(enabled=billing.billing_ready(settings) and state.stripe is not None, packs=packs)


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
    if client is None or not billing.billing_ready(settings):
        raise Problem(503, "billing_disabled", "Billing is not configured on this deployment")
    pack = billing.find_pack(settings, body.pack_id)
    if pack is None:
        raise Problem(
            422,
            "unknown_pack",
            "There is no pack with this id",
            f"Choose one of: {', '.join(p.id for p in settings.packs)}.",
        )
    try:
        session = await billing.start_checkout(
            client, state.pool, settings, pack, user_id=user.id, email=user.email, idempotency_key=idempotency_key
        )
    except billing.CheckoutKeyReused as exc:
        raise Problem(
            422,
            "idempotency_key_reused",
            "This Idempotency-Key was used with another request",
            "Use a new Idempotency-Key for a different pack.",
        ) from exc
    except billing.PaymentProviderError as exc:
        raise Problem(
            502, "payment_provider_error", "Stripe could not create the checkout", "Retry in a moment."
        ) from exc
    return CheckoutResponse(checkout_url=session.url, session_id=session.session_id, expires_at=session.expires_at)


# ---- webhook ----


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
        if "id" not in event or "object" not in event["data"]:  # every Stripe event has both
            raise KeyError("not a Stripe event")
    except (stripe.SignatureVerificationError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise Problem(400, "bad_signature", "The Stripe signature is missing, invalid or stale") from exc
    try:
        outcome = await billing.apply_event(state.pool, event)
    except billing.UnknownPurchase as exc:
        # Everything rolled back, the event id included. A non-2xx makes Stripe redeliver (for up to 3 days), by
        # which time checkout.session.completed has usually been applied. A refund for a payment that is not
        # ours keeps failing and shows up in Stripe's webhook log for an operator.
        raise Problem(
            409,
            "purchase_not_found",
            "A refund or dispute for a payment not recorded yet",
            f"No paid purchase has payment_intent {exc}; Stripe will retry.",
        ) from exc
    return WebhookAck(outcome=outcome)
