"""Batches over real HTTP on the embedded Postgres with the builtin engines: all-or-none holds, the item index on a
bad item, counts by status, and two batches racing for one balance in real concurrent transactions."""

from __future__ import annotations

import asyncio
from typing import Any

from db import ledger
from tests.jobs_support import wait_until

ITEM_COST = 4  # generate at 0.5 credit per variant-second: 8 s, one variant (api/jobs/pricing.py)


def _batch(*prompts: str) -> dict[str, Any]:
    return {"task": "generate", "params": {"duration_s": 8}, "items": [{"prompt": prompt} for prompt in prompts]}


async def _rows(app_state: Any, user: dict[str, Any]) -> tuple[int, int, int]:
    """(batches, jobs, holds) of the user."""
    async with app_state.pool.connection() as conn:
        counts = []
        for table in ("batches", "jobs", "holds"):
            row = await (
                await conn.execute(f"SELECT count(*) FROM {table} WHERE user_id = %s", (user["id"],))
            ).fetchone()
            assert row is not None
            counts.append(row[0])
    return counts[0], counts[1], counts[2]


async def _drain_to(app_state: Any, user: dict[str, Any], available: int) -> None:
    async with app_state.pool.connection() as conn:
        await ledger.adjust(conn, user["id"], "drain", available - (await ledger.balance(conn, user["id"])).available)


async def test_batch_holds_every_item_and_counts_them_to_the_end(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    response = await client.post("/v1/batches", headers=alice["headers"], json=_batch("rain", "wind", "sea"))
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["item_count"] == 3 and batch["cost"] == 3 * ITEM_COST
    assert sum(batch["counts"].values()) == 3
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"

    async def all_succeeded() -> bool:
        got = await client.get(f"/v1/batches/{batch['id']}", headers=alice["headers"])
        return got.json()["counts"] == {"succeeded": 3}

    await wait_until(all_succeeded, what="every item succeeded")
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, alice["id"])
    assert (balance.available, balance.held) == (100 - 3 * ITEM_COST, 0)


async def test_batch_without_credits_for_all_holds_none(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    await _drain_to(app_state, alice, 2 * ITEM_COST)  # two of the three items would fit
    response = await client.post("/v1/batches", headers=alice["headers"], json=_batch("rain", "wind", "sea"))
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["code"] == "insufficient_credits"
    assert (body["required"], body["available"]) == (3 * ITEM_COST, 2 * ITEM_COST)
    assert await _rows(app_state, alice) == (0, 0, 0)


async def test_bad_item_is_422_naming_its_index_and_nothing_is_held(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    body = _batch("rain", "wind", "sea")
    body["items"][2]["params"] = {"duration_s": -1}
    response = await client.post("/v1/batches", headers=alice["headers"], json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_params" and response.json()["item_index"] == 2
    assert await _rows(app_state, alice) == (0, 0, 0)


async def test_two_batches_racing_for_one_balance_at_most_one_wins(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    await _drain_to(app_state, alice, 3 * ITEM_COST)  # one batch of three fits, not two
    first, second = await asyncio.gather(
        client.post("/v1/batches", headers=alice["headers"], json=_batch("a", "b", "c")),
        client.post("/v1/batches", headers=alice["headers"], json=_batch("d", "e", "f")),
    )
    assert sorted((first.status_code, second.status_code)) == [202, 402], (first.text, second.text)
    batches, jobs, holds = await _rows(app_state, alice)
    assert (batches, jobs, holds) == (1, 3, 3)
