"""GET /v1/health: 200 with a reachable database, 503 problem when it is gone. No auth needed."""

from __future__ import annotations

import uuid

from db import embedded
from tests.auth_support import assert_problem, http_client, open_state


async def test_health_ok(client):
    response = await client.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}


async def test_health_503_when_the_database_is_dropped(pg_server, template_database, settings):
    name = f"doomed_{uuid.uuid4().hex[:8]}"
    url = embedded.create_database(pg_server, name, template=template_database)
    other = await open_state(settings.model_copy(update={"database_url": url}), url)
    try:
        async with http_client(other) as client:
            assert (await client.get("/v1/health")).status_code == 200
            embedded.drop_database(pg_server, name)  # terminates the pool's connections too
            response = await client.get("/v1/health")
            assert_problem(response, 503, "database_unavailable")
            assert response.headers["retry-after"] == "5"
    finally:
        await other.pool.close()


async def test_health_503_when_the_pool_is_closed(settings, database_url):
    other = await open_state(settings, database_url)
    await other.pool.close()
    async with http_client(other) as client:
        assert_problem(await client.get("/v1/health"), 503, "database_unavailable")
