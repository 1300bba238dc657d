"""The per-user request-rate limit: requests that can cost money counted in Postgres, shared by separately built apps;
reads counted in each process's memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api import ratelimit
from tests.auth_support import FakeClock, assert_problem, http_client, local_user, open_state

# A write that costs nothing: counted like a submit, then 404.
CANCEL_MISSING = "/v1/jobs/00000000-0000-4000-8000-000000000000/cancel"


async def test_429_with_retry_after_then_the_next_window_allows(settings, database_url):
    state = await open_state(settings.model_copy(update={"rate_limit_per_minute": 3}), database_url)
    state.clock = clock = FakeClock(datetime(2030, 1, 1, 12, 0, 15, tzinfo=UTC))
    try:
        alice = await local_user(state, "alice@example.com")
        bob = await local_user(state, "bob@example.com")
        async with http_client(state) as client:
            for _ in range(3):
                assert (await client.post(CANCEL_MISSING, headers=alice["headers"])).status_code == 404
            response = await client.post(CANCEL_MISSING, headers=alice["headers"])
            body = assert_problem(response, 429, "rate_limited")
            assert response.headers["retry-after"] == "45" and body["retry_after"] == 45 and body["limit"] == 3
            # per user: bob is not affected
            assert (await client.post(CANCEL_MISSING, headers=bob["headers"])).status_code == 404
            clock.now += timedelta(seconds=45)  # the next window
            assert (await client.post(CANCEL_MISSING, headers=alice["headers"])).status_code == 404
        async with state.pool.connection() as conn:
            rows = await (
                await conn.execute("SELECT window_start, requests FROM rate_limit_windows WHERE user_id = %s",
                                   (alice["id"],))
            ).fetchall()  # fmt: skip
        assert rows == [(datetime(2030, 1, 1, 12, 1, tzinfo=UTC), 1)]  # the finished window was dropped
    finally:
        await state.pool.close()


async def test_limit_is_shared_by_two_apps_on_one_database(settings, database_url):
    limited = settings.model_copy(update={"rate_limit_per_minute": 4})
    first, second = await open_state(limited, database_url), await open_state(limited, database_url)
    clock = FakeClock()
    first.clock = second.clock = clock
    try:
        alice = await local_user(first, "alice@example.com")
        async with http_client(first) as one, http_client(second) as two:
            statuses = [(await client.post(CANCEL_MISSING, headers=alice["headers"])).status_code
                        for client in (one, two, one, two, one, two)]  # fmt: skip
        assert statuses == [404, 404, 404, 404, 429, 429]
    finally:
        await first.pool.close()
        await second.pool.close()


async def test_reads_are_counted_in_each_process_without_a_database_write(settings, database_url):
    limited = settings.model_copy(update={"rate_limit_per_minute": 2})
    first, second = await open_state(limited, database_url), await open_state(limited, database_url)
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, 50, tzinfo=UTC))
    first.clock = second.clock = clock
    try:
        alice = await local_user(first, "alice@example.com")
        async with http_client(first) as one, http_client(second) as two:
            statuses = [(await one.get("/v1/credits", headers=alice["headers"])).status_code for _ in range(3)]
            assert statuses == [200, 200, 429]
            response = await one.get("/v1/credits", headers=alice["headers"])
            body = assert_problem(response, 429, "rate_limited")
            assert response.headers["retry-after"] == "10" and body["limit"] == 2
            assert (await two.get("/v1/credits", headers=alice["headers"])).status_code == 200  # its own count
            # reads and writes are counted apart: a submit is not refused for reads
            assert (await one.post(CANCEL_MISSING, headers=alice["headers"])).status_code == 404
            clock.now += timedelta(seconds=10)  # the next window
            assert (await one.get("/v1/credits", headers=alice["headers"])).status_code == 200
        async with first.pool.connection() as conn:
            rows = await (
                await conn.execute("SELECT requests FROM rate_limit_windows WHERE user_id = %s", (alice["id"],))
            ).fetchall()
        assert rows == [(1,)]  # the one write; no read wrote a row
    finally:
        await first.pool.close()
        await second.pool.close()


async def test_zero_turns_the_limit_off(settings, database_url):
    state = await open_state(settings.model_copy(update={"rate_limit_per_minute": 0}), database_url)
    try:
        alice = await local_user(state, "alice@example.com")
        async with http_client(state) as client:
            for _ in range(5):
                assert (await client.get("/v1/credits", headers=alice["headers"])).status_code == 200
                assert (await client.post(CANCEL_MISSING, headers=alice["headers"])).status_code == 404
        async with state.pool.connection() as conn:
            assert await (await conn.execute("SELECT count(*) FROM rate_limit_windows")).fetchone() == (0,)
    finally:
        await state.pool.close()


async def test_hit_counts_within_a_window(conn):
    import uuid

    user_id = uuid.uuid4()
    now = datetime(2030, 1, 1, 0, 0, 59, 500000, tzinfo=UTC)
    decisions = [await ratelimit.hit(conn, user_id, now=now, limit=2) for _ in range(3)]
    assert [(d.allowed, d.requests, d.retry_after) for d in decisions] == [(True, 1, 1), (True, 2, 1), (False, 3, 1)]
    assert ratelimit.window_start(now) == datetime(2030, 1, 1, tzinfo=UTC)
