"""Batches over real HTTP on the embedded Postgres with the builtin engines: all-or-none holds, the item index on a
bad item, counts by status, and two batches racing for one balance in real concurrent transactions."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from api.jobs import settle
from db import ledger
from tests.auth_support import headers
from tests.jobs_support import wait_until
from tests.test_inputs import audio_server  # noqa: F401 (a fixture: a real HTTP server of real audio)

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
    quote = await client.post("/v1/batches?dry_run=true", headers=alice["headers"], json=_batch("rain", "wind", "sea"))
    assert quote.status_code == 200, quote.text
    assert (quote.json()["credits"], quote.json()["available"], quote.json()["sufficient"]) == (
        3 * ITEM_COST,
        2 * ITEM_COST,
        False,
    )
    assert [item["credits"] for item in quote.json()["items"]] == [ITEM_COST] * 3
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

    # A field the single-job body checks (deadline_s >= 1, prompt without control characters): 422 naming the item,
    # never a 500.
    for bad in ({"deadline_s": 0}, {"items": [{"prompt": "rain"}, {"prompt": "bell\x07"}]}):
        response = await client.post("/v1/batches", headers=alice["headers"], json={**_batch("rain", "wind"), **bad})
        assert response.status_code == 422, response.text
        assert response.json()["item_index"] in (0, 1)
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


async def _batch_completed_deliveries(app_state: Any, user: dict[str, Any]) -> list[dict[str, Any]]:
    async with app_state.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT payload FROM webhook_deliveries WHERE user_id = %s AND event = 'batch.completed'",
                (user["id"],),
            )
        ).fetchall()
    return [row[0] for row in rows]


async def test_jobs_and_batches_page(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    app_state.settings.max_running_jobs_per_user = 0  # every item waits queued: dispatch keeps to the cap
    first = (await client.post("/v1/batches", headers=alice["headers"], json=_batch("a", "b", "c"))).json()
    second = (await client.post("/v1/batches", headers=alice["headers"], json=_batch("d"))).json()
    assert first["counts"] == {"queued": 3}
    page = (await client.get(f"/v1/batches/{first['id']}/jobs?limit=2", headers=alice["headers"])).json()
    assert [job["batch_index"] for job in page["data"]] == [0, 1] and page["has_more"] is True
    assert [job["params"]["prompt"] for job in page["data"]] == ["a", "b"]
    rest = await client.get(f"/v1/batches/{first['id']}/jobs?cursor={page['next_cursor']}", headers=alice["headers"])
    assert [job["batch_index"] for job in rest.json()["data"]] == [2] and rest.json()["has_more"] is False
    listed = (await client.get("/v1/batches?limit=1", headers=alice["headers"])).json()
    assert [batch["id"] for batch in listed["data"]] == [second["id"]]
    older = (await client.get(f"/v1/batches?cursor={listed['next_cursor']}", headers=alice["headers"])).json()
    assert [batch["id"] for batch in older["data"]] == [first["id"]] and older["has_more"] is False


async def test_cancel_all_releases_queued_items_and_completes_the_batch_once(
    client: Any, alice: dict[str, Any], bob: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    body = {**_batch("a", "b", "c"), "webhook_url": "https://hooks.example.com/studio"}
    batch = (await client.post("/v1/batches", headers=alice["headers"], json=body)).json()
    async with app_state.pool.connection() as conn:
        assert (await ledger.balance(conn, alice["id"])).held == 3 * ITEM_COST
    assert (await client.post(f"/v1/batches/{batch['id']}/cancel", headers=bob["headers"])).status_code == 404
    canceled = await client.post(f"/v1/batches/{batch['id']}/cancel", headers=alice["headers"])
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["counts"] == {"canceled": 3} and canceled.json()["completed_at"] is not None
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, alice["id"])
        assert await ledger.invariant_violations(conn) == []
    assert (balance.available, balance.held) == (100, 0)
    [payload] = await _batch_completed_deliveries(app_state, alice)
    assert payload["id"] == batch["id"] and payload["counts"] == {"canceled": 3}


async def test_two_items_settling_concurrently_queue_one_batch_webhook(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    body = {**_batch("a", "b"), "webhook_url": "https://hooks.example.com/studio"}
    batch = (await client.post("/v1/batches", headers=alice["headers"], json=body)).json()
    jobs = (await client.get(f"/v1/batches/{batch['id']}/jobs", headers=alice["headers"])).json()["data"]
    user_id = alice["id"]

    async def settle_one(job_id: str) -> bool:
        async with app_state.pool.connection() as conn:
            return await settle.cancel_queued(conn, UUID(job_id), user_id)

    # Two real transactions on two connections, each settling the batch's last-but-one or last item.
    assert await asyncio.gather(*(settle_one(job["id"]) for job in jobs)) == [True, True]
    [payload] = await _batch_completed_deliveries(app_state, alice)
    assert payload["remaining"] == 0 and payload["counts"] == {"canceled": 2}


async def test_idempotency_key_replays_the_batch_and_holds_once(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    headers = {**alice["headers"], "Idempotency-Key": "batch-1"}
    first = await client.post("/v1/batches", headers=headers, json=_batch("a", "b"))
    again = await client.post("/v1/batches", headers=headers, json=_batch("a", "b"))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert await _rows(app_state, alice) == (1, 2, 2)
    other = await client.post("/v1/batches", headers=headers, json=_batch("c"))
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


def _stored_inputs(app_state: Any) -> list[Any]:
    root = app_state.settings.state_dir / "files" / app_state.settings.inputs_bucket
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


async def test_url_items_are_fetched_probed_and_priced_and_a_bad_one_stores_nothing(
    client: Any,
    alice: dict[str, Any],
    app_state: Any,
    audio_server: tuple[str, bytes],  # noqa: F811
) -> None:
    base, _ = audio_server
    app_state.settings = app_state.settings.model_copy(
        update={"input_url_allow_insecure": True, "max_running_jobs_per_user": 0}
    )
    clip, gone = {"input_url": f"{base}/clip.flac"}, {"input_url": f"{base}/gone"}
    refused = await client.post("/v1/batches", headers=alice["headers"], json={"task": "midi", "items": [clip, gone]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["item_index"] == 1
    assert await _rows(app_state, alice) == (0, 0, 0) and _stored_inputs(app_state) == []
    created = await client.post("/v1/batches", headers=alice["headers"], json={"task": "midi", "items": [clip, clip]})
    assert created.status_code == 202, created.text
    assert created.json()["cost"] == 2  # midi: at least 1 credit per item (api/jobs/pricing.py)
    jobs = (await client.get(f"/v1/batches/{created.json()['id']}/jobs", headers=alice["headers"])).json()["data"]
    assert [job["input"]["source"] for job in jobs] == ["url", "url"]
    assert len(_stored_inputs(app_state)) == 2


async def test_a_keys_daily_cap_counts_the_whole_batch(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    created = await client.post(
        "/v1/api-keys", json={"name": "capped", "daily_credit_cap": 2 * ITEM_COST}, headers=alice["headers"]
    )
    assert created.status_code == 201, created.text
    via_key = headers(created.json()["key"])
    refused = await client.post("/v1/batches", headers=via_key, json=_batch("a", "b", "c"))
    assert refused.status_code == 402 and refused.json()["code"] == "key_daily_cap", refused.text
    assert await _rows(app_state, alice) == (0, 0, 0)
    accepted = await client.post("/v1/batches", headers=via_key, json=_batch("a", "b"))
    assert accepted.status_code == 202, accepted.text
