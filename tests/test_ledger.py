"""The money rules on a real Postgres, with real concurrent transactions racing each other."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from api import billing
from db import ledger


async def new_user(conn: psycopg.AsyncConnection, credits: int = 0) -> uuid.UUID:
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{user_id}@example.com"))
    await ledger.ensure_account(conn, user_id, welcome_grant=credits)
    return user_id


async def new_job(conn: psycopg.AsyncConnection, user_id: uuid.UUID, cost: int) -> uuid.UUID:
    cursor = await conn.execute(
        "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at)"
        " VALUES (%s, 'midi', '{}', 'basic-pitch', %s, now() + interval '1 hour') RETURNING id",
        (user_id, cost),
    )
    return (await cursor.fetchone())[0]


def soon() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


async def test_welcome_grant_is_given_once(conn):
    user_id = await new_user(conn, credits=100)
    assert await ledger.ensure_account(conn, user_id, welcome_grant=100) is False
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=100, held=0)
    kinds = await (await conn.execute("SELECT kind FROM ledger_entries WHERE user_id = %s", (user_id,))).fetchall()
    assert kinds == [("grant",)]


async def test_hold_capture_release_move_credits(conn):
    user_id = await new_user(conn, credits=100)
    kept, returned = await new_job(conn, user_id, 30), await new_job(conn, user_id, 20)
    await ledger.hold(conn, user_id, kept, 30, soon())
    await ledger.hold(conn, user_id, returned, 20, soon())
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=50, held=50)
    assert await ledger.capture(conn, kept) is True
    assert await ledger.release(conn, returned) is True
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=70, held=0)
    # Replays change nothing, in either direction.
    assert await ledger.capture(conn, kept) is False
    assert await ledger.release(conn, kept) is False
    assert await ledger.capture(conn, returned) is False
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=70, held=0)
    assert await ledger.invariant_violations(conn) == []


async def test_insufficient_credits_reports_required_and_available_and_writes_nothing(conn):
    user_id = await new_user(conn, credits=10)
    job_id = await new_job(conn, user_id, 11)
    with pytest.raises(ledger.InsufficientCredits) as raised:
        await ledger.hold(conn, user_id, job_id, 11, soon())
    assert (raised.value.required, raised.value.available) == (11, 10)
    entries = await (await conn.execute("SELECT count(*) FROM ledger_entries WHERE kind = 'hold'")).fetchone()
    holds = await (await conn.execute("SELECT count(*) FROM holds")).fetchone()
    assert entries == (0,) and holds == (0,)
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=10, held=0)


async def test_concurrent_holds_never_overdraw(conn, database_url):
    """40 transactions race to hold 10 credits each against 95: exactly 9 win, nothing goes negative."""
    user_id = await new_user(conn, credits=95)
    job_ids = [await new_job(conn, user_id, 10) for _ in range(40)]
    barrier = asyncio.Barrier(len(job_ids))

    async def try_hold(job_id: uuid.UUID) -> bool:
        async with await psycopg.AsyncConnection.connect(database_url) as racer:
            async with racer.transaction():
                await racer.execute("SELECT 1")  # the transaction is open before anyone writes
                await barrier.wait()
                try:
                    await ledger.hold(racer, user_id, job_id, 10, soon())
                except ledger.InsufficientCredits:
                    return False
                return True

    results = await asyncio.gather(*(try_hold(job_id) for job_id in job_ids))
    assert sum(results) == 9
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=5, held=90)
    held_rows = await (await conn.execute("SELECT count(*) FROM holds WHERE state = 'pending'")).fetchone()
    assert held_rows == (9,)
    assert await ledger.invariant_violations(conn) == []


async def test_capture_racing_release_settles_exactly_once(conn, database_url):
    user_id = await new_user(conn, credits=100)
    outcomes = []
    for _ in range(10):
        job_id = await new_job(conn, user_id, 7)
        await ledger.hold(conn, user_id, job_id, 7, soon())
        barrier = asyncio.Barrier(4)

        async def settle(operation, job_id=job_id, barrier=barrier) -> bool:
            async with await psycopg.AsyncConnection.connect(database_url) as racer:
                async with racer.transaction():
                    await racer.execute("SELECT 1")
                    await barrier.wait()
                    return await operation(racer, job_id)

        results = await asyncio.gather(
            settle(ledger.capture), settle(ledger.release), settle(ledger.capture), settle(ledger.release)
        )
        assert sum(results) == 1
        outcomes.append(results.index(True) % 2 == 0)  # True when a capture won
    captured = sum(outcomes)
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=100 - 7 * captured, held=0)
    assert await ledger.invariant_violations(conn) == []


async def test_purchase_replay_and_concurrent_duplicates_grant_once(conn, database_url):
    user_id = await new_user(conn)
    barrier = asyncio.Barrier(5)

    async def deliver() -> bool:
        async with await psycopg.AsyncConnection.connect(database_url) as racer:
            async with racer.transaction():
                await racer.execute("SELECT 1")
                await barrier.wait()
                return await billing.grant_purchase(
                    racer,
                    user_id,
                    "cs_test_1",
                    pack="starter",
                    credits=500,
                    amount_total=1000,
                    currency="usd",
                    payment_intent="pi_1",
                )

    assert sum(await asyncio.gather(*(deliver() for _ in range(5)))) == 1
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=500, held=0)


async def test_refunds_are_cumulative_idempotent_and_order_independent(conn):
    user_id = await new_user(conn)
    await billing.grant_purchase(
        conn, user_id, "cs_1", pack="starter", credits=500, amount_total=1000, currency="usd", payment_intent="pi_1"
    )
    assert await billing.refund(conn, "pi_1", "re_1", amount_refunded=300) == 150
    assert await billing.refund(conn, "pi_1", "re_1", amount_refunded=300) == 0  # replay
    # The full refund arrives, then the first partial one is delivered again late: only the rest is taken.
    assert await billing.refund(conn, "pi_1", "re_2", amount_refunded=1000) == 350
    assert await billing.refund(conn, "pi_1", "re_1", amount_refunded=300) == 0
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=0, held=0)
    status = await (await conn.execute("SELECT status, credits_refunded FROM purchases")).fetchone()
    assert status == ("refunded", 500)
    with pytest.raises(billing.UnknownPurchase):
        await billing.refund(conn, "pi_unknown", "re_3", amount_refunded=10)
    assert await ledger.invariant_violations(conn) == []


async def test_refund_after_spending_pushes_available_negative_and_blocks_jobs(conn):
    user_id = await new_user(conn)
    await billing.grant_purchase(
        conn, user_id, "cs_2", pack="starter", credits=100, amount_total=500, currency="usd", payment_intent="pi_2"
    )
    spent = await new_job(conn, user_id, 80)
    await ledger.hold(conn, user_id, spent, 80, soon())
    await ledger.capture(conn, spent)
    assert await billing.refund(conn, "pi_2", "re_9", amount_refunded=500) == 100
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=-80, held=0)
    with pytest.raises(ledger.InsufficientCredits):
        await ledger.hold(conn, user_id, await new_job(conn, user_id, 1), 1, soon())


async def test_adjustment_is_idempotent_by_key(conn):
    user_id = await new_user(conn)
    assert await ledger.adjust(conn, user_id, "topup-1", 40, note="local top-up") is True
    assert await ledger.adjust(conn, user_id, "topup-1", 40) is False
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=40, held=0)


async def test_ledger_is_append_only_and_invariant_detects_tampering(conn):
    user_id = await new_user(conn, credits=100)
    with pytest.raises(psycopg.errors.RaiseException):
        await conn.execute("UPDATE ledger_entries SET available_delta = 1000")
    with pytest.raises(psycopg.errors.RaiseException):
        await conn.execute("DELETE FROM ledger_entries")
    await conn.execute("UPDATE accounts SET available = available + 1 WHERE user_id = %s", (user_id,))
    [violation] = await ledger.invariant_violations(conn)
    assert (violation.user_id, violation.available, violation.ledger_available) == (user_id, 101, 100)


async def test_final_job_states_never_change(conn):
    user_id = await new_user(conn, credits=10)
    job_id = await new_job(conn, user_id, 1)
    await conn.execute("UPDATE jobs SET status = 'failed' WHERE id = %s", (job_id,))
    with pytest.raises(psycopg.errors.CheckViolation):
        await conn.execute("UPDATE jobs SET status = 'succeeded' WHERE id = %s", (job_id,))
