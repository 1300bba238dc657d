"""Personal API keys over real HTTP: created and shown once, stored as a hash, used as bearer, revoked at once."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from tests.auth_support import assert_problem, headers


async def test_create_list_use_and_revoke(app_state, client, alice):
    created = await client.post("/v1/api-keys", json={"name": " laptop "}, headers=alice["headers"])
    assert created.status_code == 201, created.text
    body = created.json()
    key = body["key"]
    assert key.startswith("sk_studio_") and len(key) == len("sk_studio_") + 43
    assert body["name"] == "laptop" and key.startswith(body["prefix"]) and len(body["prefix"]) < 20
    assert body["last_used_at"] is None

    async with app_state.pool.connection() as conn:
        row = await (await conn.execute("SELECT * FROM api_keys WHERE id = %s", (body["id"],))).fetchone()
    assert row is not None
    assert bytes(row[4]) == hashlib.sha256(key.encode()).digest()  # key_hash
    assert all(key not in str(value) for value in row)  # the key itself is stored nowhere

    listed = (await client.get("/v1/api-keys", headers=alice["headers"])).json()["keys"]
    assert [entry["id"] for entry in listed] == [body["id"]]
    assert "key" not in listed[0] and key not in str(listed)

    used = await client.get("/v1/credits", headers=headers(key))
    assert used.status_code == 200 and used.json() == {"available": 100, "held": 0}
    listed = (await client.get("/v1/api-keys", headers=headers(key))).json()["keys"]
    assert listed[0]["last_used_at"] is not None  # an API key may manage keys too

    assert (await client.delete(f"/v1/api-keys/{body['id']}", headers=alice["headers"])).status_code == 204
    assert_problem(await client.get("/v1/credits", headers=headers(key)), 401, "unauthorized")
    assert (await client.get("/v1/api-keys", headers=alice["headers"])).json() == {"keys": []}
    # revoking again is a no-op
    assert (await client.delete(f"/v1/api-keys/{body['id']}", headers=alice["headers"])).status_code == 204


async def test_another_users_key_is_404_and_keeps_working(client, alice, bob):
    key = (await client.post("/v1/api-keys", json={"name": "ci"}, headers=alice["headers"])).json()
    assert_problem(await client.delete(f"/v1/api-keys/{key['id']}", headers=bob["headers"]), 404, "not_found")
    assert (await client.get("/v1/api-keys", headers=bob["headers"])).json() == {"keys": []}
    assert (await client.get("/v1/credits", headers=headers(key["key"]))).status_code == 200


async def test_last_used_at_is_written_at_most_once_a_minute(app_state, client, alice):
    key = (await client.post("/v1/api-keys", json={"name": "ci"}, headers=alice["headers"])).json()

    async def last_used() -> object:
        async with app_state.pool.connection() as conn:
            row = await (await conn.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (key["id"],))).fetchone()
        assert row is not None
        return row[0]

    await client.get("/v1/credits", headers=headers(key["key"]))
    first = await last_used()
    await client.get("/v1/credits", headers=headers(key["key"]))
    assert await last_used() == first
    async with app_state.pool.connection() as conn:
        await conn.execute(
            "UPDATE api_keys SET last_used_at = last_used_at - %s WHERE id = %s", (timedelta(minutes=2), key["id"])
        )
    await client.get("/v1/credits", headers=headers(key["key"]))
    assert await last_used() > first


async def test_unknown_key_and_bad_names(client, alice):
    assert_problem(await client.get("/v1/credits", headers=headers("sk_studio_" + "x" * 43)), 401, "unauthorized")
    for name in ["", "   ", "x" * 101, "bad\nname"]:
        assert_problem(await client.post("/v1/api-keys", json={"name": name}, headers=alice["headers"]), 422,
                       "invalid_request")  # fmt: skip
    assert_problem(await client.post("/v1/api-keys", json={"name": "x"}), 401, "unauthorized")
    assert_problem(await client.delete("/v1/api-keys/not-a-uuid", headers=alice["headers"]), 422, "invalid_request")


async def test_names_and_edits_are_refused_exactly_as_the_document_states(client, alice):
    """The name's pattern and the PATCH body's minProperties are in /openapi.json; what they refuse is a 422."""
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert schemas["ApiKeyUpdate"]["minProperties"] == 1
    name_schema = schemas["ApiKeyCreate"]["properties"]["name"]
    assert name_schema["pattern"] and name_schema["type"] == "string"  # not nullable, in create and update alike
    assert schemas["ApiKeyUpdate"]["properties"]["name"]["type"] == "string"
    for name in ("   ", "tab\there", "bell\x07", "c1\x85control"):
        refused = await client.post("/v1/api-keys", json={"name": name}, headers=alice["headers"])
        assert_problem(refused, 422, "invalid_request")
    created = (await client.post("/v1/api-keys", json={"name": "ok ✓"}, headers=alice["headers"])).json()
    for body in ({}, {"name": None}, {"name": " "}):
        refused = await client.patch(f"/v1/api-keys/{created['id']}", json=body, headers=alice["headers"])
        assert_problem(refused, 422, "invalid_request")
