"""Stripe billing end to end: Checkout Sessions against a local HTTP server that answers like Stripe's API, and
webhooks signed exactly as Stripe signs them, with balances read through GET /v1/credits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from api.settings import Settings
from api.wiring import build_stripe_client
from db import ledger
from tests.fake_stripe import FakeStripe, completed_session, dispute, event, refunded_charge, sign

STRIPE_KEY = "sk_test_51QfakeKeyForTestsOnly000000000000000000000000"
WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1mb3ItYmlsbGluZy10ZXN0cw"
WELCOME = 100

# stripe-python's own HTTPX client passes bytes as `data=`; that is the library's, not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    server = FakeStripe(STRIPE_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def settings(settings: Settings, fake_stripe: FakeStripe) -> Settings:
    # api.wiring builds the Stripe client from these, pointed at the local fake.
    return settings.model_copy(
        update={
            "welcome_credits": WELCOME,
            "stripe_secret_key": STRIPE_KEY,
            "stripe_webhook_secret": WEBHOOK_SECRET,
            "stripe_api_base": fake_stripe.base_url,
        }
    )


# ---- helpers ----


async def checkout(
    client: httpx.AsyncClient, user: dict[str, Any], pack: str = "starter", key: str | None = None
) -> httpx.Response:
    headers = {**user["headers"], **({"Idempotency-Key": key} if key else {})}
    return await client.post("/v1/billing/checkout", json={"pack_id": pack}, headers=headers)


async def deliver(
    client: httpx.AsyncClient,
    payload: dict[str, Any] | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    timestamp: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """POST an event the way Stripe does: raw JSON body, `Stripe-Signature` over exactly those bytes."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload, indent=2).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    headers["Stripe-Signature"] = signature if signature is not None else sign(body, secret, timestamp)
    return await client.post("/v1/billing/stripe-webhook", content=body, headers=headers)


async def available(client: httpx.AsyncClient, user: dict[str, Any]) -> int:
    response = await client.get("/v1/credits", headers=user["headers"])
    assert response.status_code == 200, response.text
    return response.json()["available"]


async def assert_ledger_consistent(app_state: Any) -> None:
    async with app_state.pool.connection() as conn:
        assert await ledger.invariant_violations(conn) == []


async def purchase_row(app_state: Any, session_id: str) -> dict[str, Any] | None:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, credits, amount_total, payment_intent, amount_refunded, credits_refunded, user_id"
            " FROM purchases WHERE checkout_session_id = %s",
            (session_id,),
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    keys = ("status", "credits", "amount_total", "payment_intent", "amount_refunded", "credits_refunded", "user_id")
    return dict(zip(keys, row, strict=True))


async def paid_purchase(
    client: httpx.AsyncClient, fake_stripe: FakeStripe, user: dict[str, Any], pack: str = "starter"
) -> dict[str, Any]:
    """Checkout, then the `checkout.session.completed` (paid) webhook. Returns the completed session."""
    response = await checkout(client, user, pack)
    assert response.status_code == 200, response.text
    session = completed_session(fake_stripe.sessions[response.json()["session_id"]])
    granted = await deliver(client, event("checkout.session.completed", session))
    assert granted.json()["outcome"] == "granted", granted.text
    return session


# ---- packs and checkout ----


async def test_packs_are_public_and_show_billing_enabled(client):
    response = await client.get("/v1/billing/packs")
    assert response.status_code == 200
    body = response.json()
    assert body["enabled"] is True
    assert [pack["id"] for pack in body["packs"]] == ["starter", "studio", "label"]
    assert body["packs"][0] == {
        "id": "starter",
        "name": "Starter: 500 credits",
        "credits": 500,
        "amount": 500,
        "currency": "usd",
    }


async def test_checkout_creates_a_stripe_session_and_an_open_purchase(client, alice, app_state, fake_stripe):
    response = await checkout(client, alice, "studio", key="client-key-1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["session_id"].startswith("cs_test_")
    assert body["checkout_url"].startswith(f"https://checkout.stripe.com/c/pay/{body['session_id']}")
    expires_at = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert abs(time.time() + 24 * 3600 - expires_at) < 120  # Stripe's default: 24 h

    [request] = fake_stripe.requests
    assert request.path == "/v1/checkout/sessions"
    assert request.headers["authorization"] == f"Bearer {STRIPE_KEY}"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    # The client's key is scoped to the user and hashed before it goes to Stripe, never sent as is.
    assert request.headers["idempotency-key"].startswith("checkout-")
    assert "client-key-1" not in request.headers["idempotency-key"]
    user_id = str(alice["id"])
    assert request.form == {
        "mode": "payment",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2500",
        "line_items[0][price_data][product_data][name]": "Studio: 3,000 credits",
        "line_items[0][quantity]": "1",
        "client_reference_id": user_id,
        "metadata[user_id]": user_id,
        "metadata[pack_id]": "studio",
        "metadata[credits]": "3000",
        "payment_intent_data[metadata][user_id]": user_id,
        "payment_intent_data[metadata][pack_id]": "studio",
        "payment_intent_data[metadata][credits]": "3000",
        "success_url": app_state.settings.checkout_success_url,
        "cancel_url": app_state.settings.checkout_cancel_url,
        "customer_email": "alice@example.com",
    }
    row = await purchase_row(app_state, body["session_id"])
    assert row is not None
    assert (row["status"], row["credits"], row["amount_total"], str(row["user_id"])) == ("open", 3000, 2500, user_id)
    assert await available(client, alice) == WELCOME  # nothing granted before Stripe says it is paid


async def test_checkout_idempotency_key_returns_the_same_session(client, alice, bob, fake_stripe):
    first = await checkout(client, alice, key="same-key")
    again = await checkout(client, alice, key="same-key")
    assert again.status_code == 200
    assert again.json()["session_id"] == first.json()["session_id"]
    assert len(fake_stripe.sessions) == 1
    # Another user's identical key is a different Stripe key: a new session.
    other = await checkout(client, bob, key="same-key")
    assert other.json()["session_id"] != first.json()["session_id"]
    # Reusing the key for another pack is refused, as Stripe refuses it.
    reused = await checkout(client, alice, "label", key="same-key")
    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    # Without a key, every call is a new session with a fresh Stripe key.
    await checkout(client, alice)
    await checkout(client, alice)
    keys = [request.headers["idempotency-key"] for request in fake_stripe.requests[-2:]]
    assert keys[0] != keys[1]
    assert len(fake_stripe.sessions) == 4


async def test_checkout_errors(client, alice, app_state, fake_stripe):
    unknown = await checkout(client, alice, "platinum")
    assert unknown.status_code == 422
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["code"] == "unknown_pack"
    anonymous = await client.post("/v1/billing/checkout", json={"pack_id": "starter"})
    assert anonymous.status_code == 401
    assert fake_stripe.requests == []


async def test_stripe_errors_answer_502_and_record_nothing(client, alice, app_state, fake_stripe):
    fake_stripe.secret_key = "sk_test_rotated"  # Stripe now refuses our key
    response = await checkout(client, alice)
    assert response.status_code == 502
    assert response.json()["code"] == "payment_provider_error"
    async with app_state.pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM purchases")).fetchone() == (0,)


async def test_billing_disabled_without_keys(client, alice, app_state):
    assert build_stripe_client(app_state.settings.model_copy(update={"stripe_secret_key": None})) is None
    app_state.settings = app_state.settings.model_copy(
        update={"stripe_secret_key": None, "stripe_webhook_secret": None}
    )
    app_state.stripe = None
    assert (await client.get("/v1/billing/packs")).json()["enabled"] is False
    response = await checkout(client, alice)
    assert response.status_code == 503
    assert response.json()["code"] == "billing_disabled"
    hook = await deliver(client, event("checkout.session.completed", {"id": "cs_test_x"}))
    assert hook.status_code == 503


# ---- webhook: grants ----


async def test_paid_checkout_grants_once_whatever_is_replayed(client, alice, app_state, fake_stripe):
    response = await checkout(client, alice)
    session = completed_session(fake_stripe.sessions[response.json()["session_id"]])
    completed = event("checkout.session.completed", session)

    first = await deliver(client, completed)
    assert first.status_code == 200
    assert first.json() == {"received": True, "outcome": "granted"}
    assert await available(client, alice) == WELCOME + 500

    replay = await deliver(client, completed)  # Stripe redelivers the same event
    assert (replay.status_code, replay.json()["outcome"]) == (200, "duplicate_event")
    # Another event id for the same session (e.g. a resend from the Dashboard creates no new id, but
    # async_payment_succeeded after completed does): deduped by session.
    second = await deliver(client, event("checkout.session.async_payment_succeeded", session))
    assert (second.status_code, second.json()["outcome"]) == (200, "already_granted")
    assert await available(client, alice) == WELCOME + 500

    row = await purchase_row(app_state, session["id"])
    assert row is not None
    assert (row["status"], row["payment_intent"]) == ("paid", session["payment_intent"])
    async with app_state.pool.connection() as conn:
        outcomes = await (await conn.execute("SELECT outcome FROM stripe_events ORDER BY received_at")).fetchall()
    assert outcomes == [("granted",), ("already_granted",)]
    await assert_ledger_consistent(app_state)


async def test_async_payment_grants_only_when_it_succeeds(client, alice, app_state, fake_stripe):
    response = await checkout(client, alice, "studio")
    session = fake_stripe.sessions[response.json()["session_id"]]
    pending = completed_session(session, payment_status="unpaid")
    waiting = await deliver(client, event("checkout.session.completed", pending))
    assert (waiting.status_code, waiting.json()["outcome"]) == (200, "awaiting_payment")
    assert await available(client, alice) == WELCOME
    assert (await purchase_row(app_state, session["id"]))["status"] == "open"

    paid = {**pending, "payment_status": "paid"}
    succeeded = await deliver(client, event("checkout.session.async_payment_succeeded", paid))
    assert succeeded.json()["outcome"] == "granted"
    assert await available(client, alice) == WELCOME + 3000
    await assert_ledger_consistent(app_state)


async def test_unpaid_sessions_are_never_granted(client, alice, app_state, fake_stripe):
    failed_id = (await checkout(client, alice)).json()["session_id"]
    expired_id = (await checkout(client, alice)).json()["session_id"]
    pending = completed_session(fake_stripe.sessions[failed_id], payment_status="unpaid")
    assert (await deliver(client, event("checkout.session.completed", pending))).json()["outcome"] == "awaiting_payment"
    failed = await deliver(client, event("checkout.session.async_payment_failed", pending))
    assert failed.json()["outcome"] == "payment_failed"
    expired_session = {**fake_stripe.sessions[expired_id], "status": "expired"}
    expired = await deliver(client, event("checkout.session.expired", expired_session))
    assert expired.json()["outcome"] == "expired"

    assert (await purchase_row(app_state, failed_id))["status"] == "payment_failed"
    assert (await purchase_row(app_state, expired_id))["status"] == "expired"
    assert await available(client, alice) == WELCOME
    await assert_ledger_consistent(app_state)


async def test_a_paid_purchase_is_not_downgraded_by_a_late_expired_event(client, alice, app_state, fake_stripe):
    session = await paid_purchase(client, fake_stripe, alice)
    late = await deliver(client, event("checkout.session.expired", {**session, "status": "expired"}))
    assert late.status_code == 200
    assert (await purchase_row(app_state, session["id"]))["status"] == "paid"


async def test_session_metadata_must_match_the_purchase_row(client, alice, bob, app_state, fake_stripe):
    session_id = (await checkout(client, alice)).json()["session_id"]
    session = completed_session(fake_stripe.sessions[session_id])
    inflated = {**session, "metadata": {**session["metadata"], "credits": "15000"}}
    assert (await deliver(client, event("checkout.session.completed", inflated))).json()["outcome"] == "ignored"
    redirected = {**session, "client_reference_id": str(bob["id"])}
    assert (await deliver(client, event("checkout.session.completed", redirected))).json()["outcome"] == "ignored"
    assert await available(client, alice) == WELCOME
    assert await available(client, bob) == WELCOME
    # The genuine event still grants.
    assert (await deliver(client, event("checkout.session.completed", session))).json()["outcome"] == "granted"
    assert await available(client, alice) == WELCOME + 500


async def test_a_session_without_a_purchase_row_is_granted_from_its_metadata(client, alice, app_state):
    # The checkout call died after Stripe created the session and before our insert.
    user_id = str(alice["id"])
    session = {
        "id": "cs_test_orphan0001",
        "object": "checkout.session",
        "amount_total": 2500,
        "currency": "usd",
        "client_reference_id": user_id,
        "metadata": {"user_id": user_id, "pack_id": "studio", "credits": "3000"},
        "mode": "payment",
        "payment_intent": "pi_orphan0001",
        "payment_status": "paid",
        "status": "complete",
    }
    assert (await deliver(client, event("checkout.session.completed", session))).json()["outcome"] == "granted"
    assert await available(client, alice) == WELCOME + 3000
    stranger = {
        **session,
        "id": "cs_test_orphan0002",
        "client_reference_id": "0b5f8a9e-0000-4000-8000-000000000000",
        "metadata": {**session["metadata"], "user_id": "0b5f8a9e-0000-4000-8000-000000000000"},
    }
    assert (await deliver(client, event("checkout.session.completed", stranger))).json()["outcome"] == "ignored"
    await assert_ledger_consistent(app_state)


async def test_unknown_event_types_are_acknowledged(client, app_state):
    response = await deliver(client, event("customer.created", {"id": "cus_123", "object": "customer"}))
    assert (response.status_code, response.json()["outcome"]) == (200, "ignored")


# ---- webhook: refunds ----


@pytest.mark.parametrize("embed_refunds", [True, False], ids=["refunds-embedded", "refunds-not-embedded"])
async def test_partial_then_full_refund_claws_back_proportionally(client, alice, app_state, fake_stripe, embed_refunds):
    session = await paid_purchase(client, fake_stripe, alice, "studio")  # 3000 credits for 2500 cents
    pi = session["payment_intent"]
    assert await available(client, alice) == WELCOME + 3000

    partial = event("charge.refunded", refunded_charge(pi, 2500, [("re_1", 1000, 100)], embed_refunds=embed_refunds))
    response = await deliver(client, partial)
    assert (response.status_code, response.json()["outcome"]) == (200, "refunded")
    assert await available(client, alice) == WELCOME + 3000 - 1200  # 1000/2500 of 3000
    row = await purchase_row(app_state, session["id"])
    assert (row["status"], row["amount_refunded"], row["credits_refunded"]) == ("partially_refunded", 1000, 1200)

    assert (await deliver(client, partial)).json()["outcome"] == "duplicate_event"
    full = event(
        "charge.refunded",
        refunded_charge(pi, 2500, [("re_1", 1000, 100), ("re_2", 1500, 200)], embed_refunds=embed_refunds),
    )
    assert (await deliver(client, full)).json()["outcome"] == "refunded"
    assert await available(client, alice) == WELCOME
    row = await purchase_row(app_state, session["id"])
    assert (row["status"], row["amount_refunded"], row["credits_refunded"]) == ("refunded", 2500, 3000)
    await assert_ledger_consistent(app_state)


async def test_out_of_order_and_repeated_refunds_never_claw_back_twice(client, alice, app_state, fake_stripe):
    session = await paid_purchase(client, fake_stripe, alice, "studio")
    pi = session["payment_intent"]
    older = refunded_charge(pi, 2500, [("re_a", 500, 100)])
    newer = refunded_charge(pi, 2500, [("re_a", 500, 100), ("re_b", 500, 200)])
    # The newer event (1000 refunded in all) arrives first, then the older one (500), then a second copy of the
    # newer one under another event id.
    assert (await deliver(client, event("charge.refunded", newer))).json()["outcome"] == "refunded"
    assert (await deliver(client, event("charge.refunded", older))).json()["outcome"] == "refund_no_change"
    again = await deliver(client, event("charge.refunded", newer))
    assert again.json()["outcome"] == "refund_no_change"
    assert await available(client, alice) == WELCOME + 3000 - 1200
    async with app_state.pool.connection() as conn:
        kinds = await (
            await conn.execute(
                "SELECT count(*) FROM ledger_entries WHERE user_id = %s AND kind = 'refund'", (alice["id"],)
            )
        ).fetchone()
    assert kinds == (1,)
    await assert_ledger_consistent(app_state)


async def test_a_refund_before_its_purchase_is_retried_by_stripe(client, alice, app_state, fake_stripe):
    response = await checkout(client, alice)
    session = completed_session(fake_stripe.sessions[response.json()["session_id"]])
    refund = event("charge.refunded", refunded_charge(session["payment_intent"], 500, [("re_early", 500, 100)]))
    early = await deliver(client, refund)
    assert early.status_code == 409  # non-2xx: Stripe delivers it again later
    assert early.json()["code"] == "purchase_not_found"
    async with app_state.pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM stripe_events")).fetchone() == (0,)

    assert (await deliver(client, event("checkout.session.completed", session))).json()["outcome"] == "granted"
    retried = await deliver(client, refund)
    assert (retried.status_code, retried.json()["outcome"]) == (200, "refunded")
    assert await available(client, alice) == WELCOME
    await assert_ledger_consistent(app_state)


# ---- webhook: signatures ----


async def test_bad_signatures_are_refused_and_change_nothing(client, alice, app_state, fake_stripe):
    session_id = (await checkout(client, alice)).json()["session_id"]
    payload = json.dumps(event("checkout.session.completed", completed_session(fake_stripe.sessions[session_id])))
    body = payload.encode()
    now = int(time.time())
    tampered = body.replace(b'"credits": "500"', b'"credits": "5000"')
    assert tampered != body
    attempts = {
        "wrong secret": await deliver(client, body, secret="whsec_not_the_right_one"),
        "tampered body": await deliver(client, tampered, signature=sign(body, WEBHOOK_SECRET, now)),
        "missing header": await client.post(
            "/v1/billing/stripe-webhook", content=body, headers={"Content-Type": "application/json"}
        ),
        "garbage header": await deliver(client, body, signature="definitely-not-a-signature"),
        "no v1 scheme": await deliver(client, body, signature=sign(body, WEBHOOK_SECRET, now).replace("v1=", "v0=")),
        "stale timestamp": await deliver(client, body, timestamp=now - 600),
    }
    for name, response in attempts.items():
        assert response.status_code == 400, name
        assert response.json()["code"] == "bad_signature", name
    async with app_state.pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM stripe_events")).fetchone() == (0,)
    assert await available(client, alice) == WELCOME
    oversized = await deliver(client, b'{"id": "evt_big", "pad": "' + b"x" * (1024 * 1024) + b'"}')
    assert oversized.status_code == 413
    # Stripe signs with every active secret during a rotation; one matching v1 is enough.
    rotated = f"{sign(body, 'whsec_old_secret', now)},v1={sign(body, WEBHOOK_SECRET, now).split('v1=')[1]}"
    assert (await deliver(client, body, signature=rotated)).json()["outcome"] == "granted"


# ---- concurrency ----


async def test_concurrent_deliveries_grant_once(client, alice, app_state, fake_stripe):
    session_id = (await checkout(client, alice)).json()["session_id"]
    session = completed_session(fake_stripe.sessions[session_id])
    same = event("checkout.session.completed", session)
    responses = await asyncio.gather(*(deliver(client, same) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert sorted(r.json()["outcome"] for r in responses) == ["duplicate_event"] * 4 + ["granted"]

    # Five different event ids for one session at once: deduped by session in the ledger.
    other_id = (await checkout(client, alice, "studio")).json()["session_id"]
    other = completed_session(fake_stripe.sessions[other_id])
    responses = await asyncio.gather(*(deliver(client, event("checkout.session.completed", other)) for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert sorted(r.json()["outcome"] for r in responses) == ["already_granted"] * 4 + ["granted"]
    assert await available(client, alice) == WELCOME + 500 + 3000
    await assert_ledger_consistent(app_state)


# ---- webhook: disputes ----


async def dispute_rows(app_state: Any, session_id: str) -> tuple[int, list[tuple[str, str, int]]]:
    async with app_state.pool.connection() as conn:
        purchase = await (
            await conn.execute("SELECT credits_disputed FROM purchases WHERE checkout_session_id = %s", (session_id,))
        ).fetchone()
        disputes = await (
            await conn.execute(
                "SELECT dispute_id, status, credits_clawed_back FROM disputes WHERE checkout_session_id = %s"
                " ORDER BY dispute_id",
                (session_id,),
            )
        ).fetchall()
    assert purchase is not None
    return purchase[0], [tuple(row) for row in disputes]


async def test_a_dispute_claws_back_blocks_jobs_and_a_won_dispute_gives_back(client, alice, app_state, fake_stripe):
    session = await paid_purchase(client, fake_stripe, alice)  # starter: 500 credits for 500 cents
    pi = session["payment_intent"]
    async with app_state.pool.connection() as conn:
        await ledger.adjust(conn, alice["id"], "spent", -(WELCOME + 450))  # the credits were used on jobs
    assert await available(client, alice) == 50

    opened = event("charge.dispute.created", dispute(pi, 500, dispute_id="dp_won"))
    assert (await deliver(client, opened)).json()["outcome"] == "disputed"
    assert await available(client, alice) == -450
    # The same dispute again, under a new event id (Stripe sends charge.dispute.updated and re-sends): no change.
    again = event("charge.dispute.created", dispute(pi, 500, dispute_id="dp_won"))
    assert (await deliver(client, again)).json()["outcome"] == "dispute_no_change"
    assert await available(client, alice) == -450
    blocked = await client.post("/v1/jobs", headers=alice["headers"], json={"task": "generate", "prompt": "rain"})
    assert blocked.status_code == 402 and blocked.json()["code"] == "insufficient_credits"

    won = event("charge.dispute.closed", dispute(pi, 500, dispute_id="dp_won", status="won"))
    assert (await deliver(client, won)).json()["outcome"] == "dispute_won"
    assert await available(client, alice) == 50
    won_again = event("charge.dispute.closed", dispute(pi, 500, dispute_id="dp_won", status="won"))
    assert (await deliver(client, won_again)).json()["outcome"] == "dispute_no_change"
    assert await available(client, alice) == 50
    assert await dispute_rows(app_state, session["id"]) == (0, [("dp_won", "won", 500)])
    await assert_ledger_consistent(app_state)


async def test_refunds_and_disputes_together_never_claw_back_more_than_was_bought(
    client, alice, app_state, fake_stripe
):
    session = await paid_purchase(client, fake_stripe, alice, "studio")  # 3000 credits for 2500 cents
    pi = session["payment_intent"]
    refund_1000 = refunded_charge(pi, 2500, [("re_1", 1000, 100)])
    assert (await deliver(client, event("charge.refunded", refund_1000))).json()["outcome"] == "refunded"
    assert await available(client, alice) == WELCOME + 3000 - 1200
    # The cardholder disputes the whole charge anyway: only the 1800 credits not yet refunded can be taken back.
    opened = event("charge.dispute.created", dispute(pi, 2500, dispute_id="dp_lost"))
    assert (await deliver(client, opened)).json()["outcome"] == "disputed"
    assert await available(client, alice) == WELCOME
    lost = event("charge.dispute.closed", dispute(pi, 2500, dispute_id="dp_lost", status="lost"))
    assert (await deliver(client, lost)).json()["outcome"] == "dispute_lost"
    # A later refund state for the same charge takes nothing more, nor does a second dispute.
    refund_all = refunded_charge(pi, 2500, [("re_1", 1000, 100), ("re_2", 1500, 200)])
    assert (await deliver(client, event("charge.refunded", refund_all))).json()["outcome"] == "refund_no_change"
    second = event("charge.dispute.created", dispute(pi, 2500, dispute_id="dp_second"))
    assert (await deliver(client, second)).json()["outcome"] == "dispute_no_change"
    assert await available(client, alice) == WELCOME
    assert await dispute_rows(app_state, session["id"]) == (
        1800,
        [("dp_lost", "lost", 1800), ("dp_second", "open", 0)],
    )
    row = await purchase_row(app_state, session["id"])
    assert row is not None and row["credits_refunded"] == 1200
    await assert_ledger_consistent(app_state)


async def test_out_of_order_dispute_events_apply_once(client, alice, app_state, fake_stripe):
    session = await paid_purchase(client, fake_stripe, alice)
    pi = session["payment_intent"]
    # closed (lost) arrives before created: the claw-back happens once, and the late created changes nothing.
    lost = event("charge.dispute.closed", dispute(pi, 250, dispute_id="dp_late", status="lost"))
    assert (await deliver(client, lost)).json()["outcome"] == "dispute_lost"
    assert await available(client, alice) == WELCOME + 500 - 250
    late = event("charge.dispute.created", dispute(pi, 250, dispute_id="dp_late"))
    assert (await deliver(client, late)).json()["outcome"] == "dispute_no_change"
    # closed (won) before created: nothing is taken at all.
    won = event("charge.dispute.closed", dispute(pi, 250, dispute_id="dp_early_win", status="won"))
    assert (await deliver(client, won)).json()["outcome"] == "dispute_won"
    late_won = event("charge.dispute.created", dispute(pi, 250, dispute_id="dp_early_win"))
    assert (await deliver(client, late_won)).json()["outcome"] == "dispute_no_change"
    assert await available(client, alice) == WELCOME + 500 - 250
    # Concurrent deliveries of one dispute under different event ids: one claw-back.
    copies = [event("charge.dispute.created", dispute(pi, 150, dispute_id="dp_race")) for _ in range(4)]
    outcomes = sorted([(await deliver(client, copy)).json()["outcome"] for copy in copies])
    responses = await asyncio.gather(
        *(deliver(client, event("charge.dispute.created", dispute(pi, 100, dispute_id="dp_gather"))) for _ in range(4))
    )
    assert outcomes == ["dispute_no_change"] * 3 + ["disputed"]
    assert sorted(r.json()["outcome"] for r in responses) == ["dispute_no_change"] * 3 + ["disputed"]
    assert await available(client, alice) == WELCOME + 500 - 250 - 150 - 100  # the whole purchase, no more
    # A dispute for a payment we have not recorded yet is retried by Stripe, like a refund.
    unknown = await deliver(client, event("charge.dispute.created", dispute("pi_unknown", 500, dispute_id="dp_x")))
    assert unknown.status_code == 409
    await assert_ledger_consistent(app_state)


async def test_a_won_dispute_gives_back_only_what_refunds_meanwhile_leave(client, alice, app_state, fake_stripe):
    session = await paid_purchase(client, fake_stripe, alice, "studio")  # 3000 credits for 2500 cents
    pi = session["payment_intent"]
    opened = event("charge.dispute.created", dispute(pi, 2500, dispute_id="dp_then_refund"))
    assert (await deliver(client, opened)).json()["outcome"] == "disputed"
    assert await available(client, alice) == WELCOME
    # Refunded while disputed: the dispute already holds every credit, so the refund takes nothing more now...
    refund_1000 = refunded_charge(pi, 2500, [("re_1", 1000, 100)])
    assert (await deliver(client, event("charge.refunded", refund_1000))).json()["outcome"] == "refund_no_change"
    # ...and when the dispute is won, its 3000 come back less the refund's 1200.
    won = event("charge.dispute.closed", dispute(pi, 2500, dispute_id="dp_then_refund", status="won"))
    assert (await deliver(client, won)).json()["outcome"] == "dispute_won"
    assert await available(client, alice) == WELCOME + 3000 - 1200
    row = await purchase_row(app_state, session["id"])
    assert row is not None and (row["amount_refunded"], row["credits_refunded"]) == (1000, 1200)
    assert await dispute_rows(app_state, session["id"]) == (0, [("dp_then_refund", "won", 3000)])
    await assert_ledger_consistent(app_state)


async def test_a_refund_and_a_dispute_racing_on_one_charge_take_back_the_purchase_once(
    client, alice, app_state, fake_stripe
):
    session = await paid_purchase(client, fake_stripe, alice, "studio")  # 3000 credits for 2500 cents
    pi = session["payment_intent"]
    full_refund = event("charge.refunded", refunded_charge(pi, 2500, [("re_all", 2500, 100)]))
    full_dispute = event("charge.dispute.created", dispute(pi, 2500, dispute_id="dp_race_refund"))
    # Real concurrent transactions: each locks the purchase row, so the second sees what the first took.
    responses = await asyncio.gather(deliver(client, full_refund), deliver(client, full_dispute))
    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(r.json()["outcome"] for r in responses) in (
        ["dispute_no_change", "refunded"],
        ["disputed", "refund_no_change"],
    )
    assert await available(client, alice) == WELCOME
    async with app_state.pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT credits_refunded + credits_disputed FROM purchases WHERE checkout_session_id = %s",
                (session["id"],),
            )
        ).fetchone()
    assert row == (3000,)
    await assert_ledger_consistent(app_state)
