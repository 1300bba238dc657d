"""Balance and ledger endpoints, and the welcome grant given exactly once even when first requests race."""

from __future__ import annotations

import asyncio

from db import ledger
from tests.auth_support import assert_problem, claims_for, headers, insert_auth_user


async def test_welcome_grant_once_when_first_requests_race(app_state, client):
    import jwt

    user_id = await insert_auth_user(app_state)  # signed up, never seen by the API: no account yet
    token = jwt.encode(claims_for(app_state.settings, user_id), app_state.signing_key, algorithm="HS256")
    responses = await asyncio.gather(*(client.get("/v1/credits", headers=headers(token)) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert all(r.json() == {"available": 100, "held": 0} for r in responses)
    async with app_state.pool.connection() as conn:
        kinds = await (await conn.execute("SELECT kind FROM ledger_entries WHERE user_id = %s", (user_id,))).fetchall()
        assert kinds == [("grant",)]
        assert await ledger.invariant_violations(conn) == []


async def test_ledger_is_newest_first_with_cursor_pages(app_state, client, alice):
    async with app_state.pool.connection() as conn:
        for n in range(1, 6):
            await ledger.adjust(conn, alice["id"], f"test-{n}", n * 10, note=f"top-up {n}")
    pages, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/v1/credits/ledger", params=params, headers=alice["headers"])
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["entries"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(page) for page in pages] == [2, 2, 2]
    entries = [entry for page in pages for entry in page]
    assert [e["kind"] for e in entries] == ["adjustment"] * 5 + ["grant"]
    assert [e["available_delta"] for e in entries] == [50, 40, 30, 20, 10, 100]
    assert [e["reference"] for e in entries[:2]] == ["top-up 5", "top-up 4"]
    assert all(e["held_delta"] == 0 and e["job_id"] is None and e["created_at"] for e in entries)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    balance = (await client.get("/v1/credits", headers=alice["headers"])).json()
    assert balance == {"available": 250, "held": 0}


async def test_ledger_shows_only_your_entries_and_rejects_bad_queries(client, alice, bob):
    bob_ledger = (await client.get("/v1/credits/ledger", headers=bob["headers"])).json()
    assert len(bob_ledger["entries"]) == 1 and bob_ledger["next_cursor"] is None
    alice_ledger = (await client.get("/v1/credits/ledger", headers=alice["headers"])).json()
    assert alice_ledger["entries"][0]["id"] != bob_ledger["entries"][0]["id"]
    for params in [{"limit": 0}, {"limit": 101}, {"cursor": "garbage!"}, {"cursor": "bGVkZ2VyOi0x"}]:
        response = await client.get("/v1/credits/ledger", params=params, headers=alice["headers"])
        assert response.status_code == 422, params
    assert_problem(await client.get("/v1/credits/ledger", params={"cursor": "abc"}, headers=alice["headers"]), 422,
                   "invalid_cursor")  # fmt: skip
    assert_problem(await client.get("/v1/credits/ledger"), 401, "unauthorized")
