"""GET /v1/usage over real HTTP on the embedded Postgres: captured credits, jobs and audio seconds from the ledger, by
day, task or API key, as JSON or (by the Accept header) CSV; and the OpenAPI document of this issue's additions."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.auth_support import assert_problem, headers
from tests.jobs_api_support import multipart, wait_final, write_audio

GENERATE = {"task": "generate", "params": {"prompt": "rain", "duration_s": 8}}  # 4 credits (0.5 x 8 s)


async def _succeeded(client: Any, app_state: Any, owner: dict[str, Any], response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job = await wait_final(client, owner["headers"], response.json()["id"], app_state)
    assert job["status"] == "succeeded", job
    return job


async def _usage(client: Any, user: dict[str, Any], **params: str) -> dict[str, Any]:
    response = await client.get("/v1/usage", params=params, headers=user["headers"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def _history(client: Any, app_state: Any, alice: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Alice's jobs: two generate through a key, one midi (1 s of audio) with her token, all succeeded; and one
    canceled generate through the key (released: not usage)."""
    key = (await client.post("/v1/api-keys", json={"name": "=ci"}, headers=alice["headers"])).json()
    via_key = headers(key["key"])
    for _ in range(2):
        await _succeeded(client, app_state, alice, await client.post("/v1/jobs", json=GENERATE, headers=via_key))
    midi = multipart("midi", {}, write_audio(tmp_path / "a.wav", 1.0))
    await _succeeded(client, app_state, alice, await client.post("/v1/jobs", headers=alice["headers"], **midi))
    app_state.settings.max_running_jobs_per_user = 0
    queued = await client.post("/v1/jobs", json=GENERATE, headers=via_key)
    assert (await client.post(f"/v1/jobs/{queued.json()['id']}/cancel", headers=alice["headers"])).status_code == 200
    return key


async def test_usage_by_task_key_and_day_counts_captures_only(
    client: Any, alice: dict[str, Any], bob: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    key = await _history(client, app_state, alice, tmp_path)
    today = datetime.now(UTC).date()

    by_task = await _usage(client, alice, group_by="task")
    rows = [(r["group"], r["label"], r["credits"], r["jobs"], r["audio_seconds"]) for r in by_task["data"]]
    assert rows == [("generate", "generate", 8, 2, 0.0), ("midi", "midi", 1, 1, 1.0)]
    assert by_task["total"] == {"credits": 9, "jobs": 3, "audio_seconds": 1.0}
    assert (by_task["from"], by_task["to"]) == ((today - timedelta(days=29)).isoformat(), today.isoformat())

    by_key = await _usage(client, alice, group_by="api_key")
    rows = [(r["group"], r["label"], r["credits"], r["jobs"]) for r in by_key["data"]]
    assert rows == [(key["id"], "=ci", 8, 2), (None, "account token", 1, 1)]

    by_day = await _usage(client, alice, **{"from": (today - timedelta(days=2)).isoformat()})
    assert [(r["group"], r["credits"], r["jobs"]) for r in by_day["data"]] == [
        ((today - timedelta(days=2)).isoformat(), 0, 0),
        ((today - timedelta(days=1)).isoformat(), 0, 0),
        (today.isoformat(), 9, 3),
    ]
    before = await _usage(client, alice, **{"to": (today - timedelta(days=1)).isoformat()})
    assert before["total"] == {"credits": 0, "jobs": 0, "audio_seconds": 0.0} and len(before["data"]) == 30
    assert (await _usage(client, bob, group_by="task"))["data"] == []  # only your own ledger


async def test_csv_by_content_negotiation(client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path) -> None:
    await _history(client, app_state, alice, tmp_path)
    as_csv = await client.get(
        "/v1/usage", params={"group_by": "api_key"}, headers={**alice["headers"], "Accept": "text/csv"}
    )
    assert as_csv.status_code == 200 and as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in as_csv.headers["content-disposition"] and as_csv.headers["vary"] == "Accept"
    table = list(csv.reader(io.StringIO(as_csv.text)))
    assert table[0] == ["api_key_id", "api_key_name", "credits", "jobs", "audio_seconds"]
    # A key name a spreadsheet would run as a formula is quoted as text.
    assert [row[1:] for row in table[1:]] == [["'=ci", "8", "2", "0.0"], ["account token", "1", "1", "1.0"]]

    for accept, expected in (
        ("text/csv;q=0.5, application/json", "application/json"),
        ("application/json;q=0.2, text/*", "text/csv; charset=utf-8"),
        ("*/*", "application/json"),
        ("text/html, */*;q=0.1", "application/json"),
    ):
        response = await client.get("/v1/usage", headers={**alice["headers"], "Accept": accept})
        assert response.status_code == 200 and response.headers["content-type"] == expected, accept
    refused = await client.get("/v1/usage", headers={**alice["headers"], "Accept": "image/png"})
    assert_problem(refused, 406, "not_acceptable")
    refused = await client.get(
        "/v1/usage", headers={**alice["headers"], "Accept": "text/csv;q=0, application/json;q=0"}
    )
    assert_problem(refused, 406, "not_acceptable")


async def test_bad_periods_and_groupings_are_422(client: Any, alice: dict[str, Any]) -> None:
    for params, code in (
        ({"from": "2026-02-10", "to": "2026-02-01"}, "invalid_period"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "invalid_period"),
        ({"from": "yesterday"}, None),
        ({"group_by": "week"}, None),
    ):
        response = await client.get("/v1/usage", params=params, headers=alice["headers"])
        assert response.status_code == 422, params
        assert response.headers["content-type"].startswith("application/problem+json")
        if code:
            assert response.json()["code"] == code
    assert (await client.get("/v1/usage")).status_code == 401


async def test_openapi_documents_usage_caps_and_deadlines(client: Any) -> None:
    document = (await client.get("/openapi.json")).json()
    usage = document["paths"]["/v1/usage"]["get"]
    content = usage["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Usage"}
    assert {p["name"] for p in usage["parameters"]} == {"from", "to", "group_by"}
    assert "406" in usage["responses"]
    usage_schema = document["components"]["schemas"]["Usage"]
    assert {"from", "to", "group_by", "data", "total"} <= set(usage_schema["properties"])

    patch = document["paths"]["/v1/api-keys/{key_id}"]["patch"]
    assert patch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ApiKeyUpdate"
    }
    info = document["components"]["schemas"]["ApiKeyInfo"]["properties"]
    assert {"daily_credit_cap", "monthly_credit_cap", "allowed_tasks"} <= set(info)

    submit = document["paths"]["/v1/jobs"]["post"]
    assert "Cancel-After" in {p["name"] for p in submit["parameters"]}
    assert {"402", "403"} <= set(submit["responses"])
    assert "key_daily_cap" in submit["responses"]["402"]["description"]
    job = document["components"]["schemas"]["JobOut"]["properties"]
    assert "cancel_reason" in job
