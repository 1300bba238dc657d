"""Spend caps per API key over real HTTP on the embedded Postgres: set at creation, edited with PATCH; a submit through
the key that would pass a cap answers 402 (403 for a task the key may not submit) naming it, with nothing charged;
holds count against the cap (released ones do not), so racing submits, in real concurrent transactions, cannot pass
it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from api.errors import Problem
from api.jobs.submit import cap_periods, hold_for_job
from db import api_keys as db_api_keys
from db import ledger
from tests.auth_support import assert_problem, headers
from tests.jobs_api_support import wait_final

# generate prices by variant-seconds: 0.5 x 8 s = 4 credits (api/jobs/pricing.py RATES).
JOB = {"task": "generate", "params": {"prompt": "rain on a tin roof", "duration_s": 8}}
COST = 4


async def _new_key(client: Any, user: dict[str, Any], **caps: Any) -> dict[str, Any]:
    response = await client.post("/v1/api-keys", json={"name": "capped", **caps}, headers=user["headers"])
    assert response.status_code == 201, response.text
    return response.json()


async def _balance(app_state: Any, user: dict[str, Any]) -> tuple[int, int]:
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, user["id"])
    return balance.available, balance.held


async def _job_count(app_state: Any) -> int:
    async with app_state.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM jobs")).fetchone()
    assert row is not None
    return int(row[0])


async def test_caps_are_set_at_creation_shown_and_edited(client: Any, alice: dict[str, Any], bob: dict[str, Any]):
    key = await _new_key(client, alice, daily_credit_cap=10, allowed_tasks=["midi", "generate", "midi"])
    assert (key["daily_credit_cap"], key["monthly_credit_cap"], key["allowed_tasks"]) == (
        10,
        None,
        ["midi", "generate"],
    )
    [listed] = (await client.get("/v1/api-keys", headers=alice["headers"])).json()["keys"]
    assert listed["daily_credit_cap"] == 10 and listed["allowed_tasks"] == ["midi", "generate"]

    path = f"/v1/api-keys/{key['id']}"
    edited = await client.patch(path, json={"monthly_credit_cap": 50, "allowed_tasks": None}, headers=alice["headers"])
    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["name"], body["daily_credit_cap"], body["monthly_credit_cap"], body["allowed_tasks"]) == (
        "capped",
        10,  # not sent: unchanged
        50,
        None,  # null clears
    )
    renamed = await client.patch(path, json={"name": " ci ", "daily_credit_cap": None}, headers=alice["headers"])
    assert (renamed.json()["name"], renamed.json()["daily_credit_cap"]) == ("ci", None)

    assert_problem(await client.patch(path, json={"name": "x"}, headers=bob["headers"]), 404, "not_found")
    for bad in (
        {},
        {"name": None},
        {"daily_credit_cap": -1},
        {"monthly_credit_cap": "lots"},
        {"allowed_tasks": []},
        {"allowed_tasks": ["paint"]},
        {"unknown": 1},
    ):
        response = await client.patch(path, json=bad, headers=alice["headers"])
        assert response.status_code == 422, (bad, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    for bad in ({"name": "a", "daily_credit_cap": -5}, {"name": "a", "allowed_tasks": ["paint"]}):
        assert (await client.post("/v1/api-keys", json=bad, headers=alice["headers"])).status_code == 422
    assert (await client.delete(path, headers=alice["headers"])).status_code == 204
    assert_problem(await client.patch(path, json={"name": "x"}, headers=alice["headers"]), 404, "not_found")


async def test_submits_through_a_key_stop_at_its_caps_and_charge_nothing(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0  # jobs wait queued with their holds pending
    quote = await client.post("/v1/quotes", json=JOB, headers=alice["headers"])
    assert quote.json()["credits"] == COST
    key = await _new_key(client, alice, daily_credit_cap=2 * COST, monthly_credit_cap=3 * COST - 1)
    via_key = headers(key["key"])

    first = await client.post("/v1/jobs", json=JOB, headers=via_key)
    second = await client.post("/v1/jobs", json=JOB, headers=via_key)
    assert (first.status_code, second.status_code) == (202, 202)
    before = await _balance(app_state, alice)
    refused = assert_problem(await client.post("/v1/jobs", json=JOB, headers=via_key), 402, "key_daily_cap")
    assert (refused["cap"], refused["spent"], refused["required"]) == (2 * COST, 2 * COST, COST)
    assert await _balance(app_state, alice) == before and await _job_count(app_state) == 2
    # The account's own token is not bound by a key's caps.
    assert (await client.post("/v1/jobs", json=JOB, headers=alice["headers"])).status_code == 202

    # A released hold gives its room back; a later submit fits again, and then the month's cap is what stops it.
    assert (await client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=alice["headers"])).status_code == 200
    assert (await client.post("/v1/jobs", json=JOB, headers=via_key)).status_code == 202
    lifted = await client.patch(f"/v1/api-keys/{key['id']}", json={"daily_credit_cap": None}, headers=alice["headers"])
    assert lifted.status_code == 200
    monthly = assert_problem(await client.post("/v1/jobs", json=JOB, headers=via_key), 402, "key_monthly_cap")
    assert (monthly["cap"], monthly["spent"]) == (3 * COST - 1, 2 * COST)  # the released hold does not count

    limited = await _new_key(client, alice, allowed_tasks=["midi"])
    forbidden = assert_problem(
        await client.post("/v1/jobs", json=JOB, headers=headers(limited["key"])), 403, "task_not_allowed_for_key"
    )
    assert forbidden["allowed_tasks"] == ["midi"]
    async with app_state.pool.connection() as conn:
        by_key = await (
            await conn.execute(
                "SELECT api_key_id, state::text, count(*) FROM holds GROUP BY 1, 2 ORDER BY 1 NULLS LAST, 2"
            )
        ).fetchall()
        assert await ledger.invariant_violations(conn) == []
    assert by_key == [(uuid.UUID(key["id"]), "pending", 2), (uuid.UUID(key["id"]), "released", 1), (None, "pending", 1)]


async def test_captured_spend_counts_against_the_cap(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    key = await _new_key(client, alice, daily_credit_cap=COST)
    via_key = headers(key["key"])
    created = await client.post("/v1/jobs", json=JOB, headers=via_key)
    assert created.status_code == 202, created.text
    assert (await wait_final(client, alice["headers"], created.json()["id"], app_state))["status"] == "succeeded"
    assert_problem(await client.post("/v1/jobs", json=JOB, headers=via_key), 402, "key_daily_cap")


async def test_racing_submits_over_http_cannot_pass_a_cap(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    key = await _new_key(client, alice, daily_credit_cap=3 * COST)
    via_key = headers(key["key"])
    responses = await asyncio.gather(*(client.post("/v1/jobs", json=JOB, headers=via_key) for _ in range(8)))
    codes = sorted(response.status_code for response in responses)
    assert codes == [202] * 3 + [402] * 5
    assert {r.json()["code"] for r in responses if r.status_code == 402} == {"key_daily_cap"}
    assert await _balance(app_state, alice) == (100 - 3 * COST, 3 * COST)


async def test_concurrent_holds_through_one_key_never_pass_its_cap(conn: psycopg.AsyncConnection, database_url: str):
    """30 transactions, all open before any writes, race to hold 10 credits each through a key capped at 95 a day:
    exactly 9 win, although the account could pay for all of them."""
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO auth.users (id, email) VALUES (%s, %s)", (user_id, f"{user_id}@example.com"))
    await ledger.ensure_account(conn, user_id, welcome_grant=1000)
    key = await db_api_keys.create(conn, user_id, "racer", "sk_x", uuid.uuid4().bytes * 2, daily_credit_cap=95)
    job_ids = []
    for _ in range(30):
        cursor = await conn.execute(
            "INSERT INTO jobs (user_id, task, params, model_key, cost, deadline_at)"
            " VALUES (%s, 'midi', '{}', 'basic-pitch', 10, now() + interval '1 hour') RETURNING id",
            (user_id,),
        )
        row = await cursor.fetchone()
        assert row is not None
        job_ids.append(row[0])
    barrier = asyncio.Barrier(len(job_ids))
    now = datetime.now(UTC)

    async def try_hold(job_id: uuid.UUID) -> bool:
        async with await psycopg.AsyncConnection.connect(database_url) as racer, racer.transaction():
            await racer.execute("SELECT 1")  # the transaction is open before anyone writes
            await barrier.wait()
            try:
                await hold_for_job(
                    racer, user_id, job_id, "midi", 10, now + timedelta(hours=1), api_key_id=key["id"], now=now
                )
            except Problem as exc:
                assert exc.code == "key_daily_cap"
                return False
            return True

    results = await asyncio.gather(*(try_hold(job_id) for job_id in job_ids))
    assert sum(results) == 9
    assert await ledger.key_spend(conn, key["id"], now - timedelta(days=1), now - timedelta(days=31)) == (
        ledger.KeySpend(day=90, month=90)
    )
    assert await ledger.balance(conn, user_id) == ledger.Balance(available=910, held=90)
    assert await ledger.invariant_violations(conn) == []


@pytest.mark.parametrize(
    ("now", "day", "month"),
    [
        (
            datetime(2026, 3, 31, 23, 59, tzinfo=UTC),
            datetime(2026, 3, 31, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
        ),
        # 01:00 on 1 April at UTC+2 is still 31 March in UTC.
        (
            datetime(2026, 4, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))),
            datetime(2026, 3, 31, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
        ),
    ],
)
def test_cap_periods_are_the_utc_day_and_month(now: datetime, day: datetime, month: datetime) -> None:
    assert cap_periods(now) == (day, month)
