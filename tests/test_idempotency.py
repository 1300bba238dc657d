"""Idempotency-Key on POST /v1/jobs: replay, reuse, in-flight and a race between two requests with one key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from api.errors import Problem
from api.jobs import idempotency
from db import ledger
from tests.jobs_api_support import multipart, write_audio


async def _job_count(app_state: Any) -> int:
    async with app_state.pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM jobs")).fetchone()
    assert row is not None
    return row[0]


async def test_same_key_same_body_replays_and_charges_once(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.settings.max_running_jobs_per_user = 0  # stays queued: the replay must return the first answer
    headers = {**alice["headers"], "Idempotency-Key": "order-1"}
    path = write_audio(tmp_path / "a.wav", 2.0)
    first = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, path))
    second = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, path))
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json() and second.headers[idempotency.REPLAY_HEADER] == "true"
    assert await _job_count(app_state) == 1
    async with app_state.pool.connection() as conn:
        assert (await ledger.balance(conn, alice["id"])).available == 100 - first.json()["cost"]
    # Another body under the same key is refused; another user's identical key is independent.
    other = await client.post("/v1/jobs", headers=headers, **multipart("midi", {"onset_threshold": 0.9}, path))
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    different_bytes = write_audio(tmp_path / "a.wav", 3.0)
    reused = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, different_bytes))
    assert reused.status_code == 422


async def test_key_in_flight_is_409_and_failed_attempts_free_the_key(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    body = {"task": "generate", "prompt": "wind"}
    async with app_state.pool.connection() as conn:
        # What a first request holding the key looks like while it still runs.
        fingerprint = idempotency.request_hash({"anything": 1})
        assert await idempotency.claim(conn, alice["id"], "busy", fingerprint, 60) is None
        with_other_hash = idempotency.request_hash({"anything": 2})
        with pytest.raises(Problem) as refused:
            await idempotency.claim(conn, alice["id"], "busy", with_other_hash, 60)
        assert refused.value.status == 422
        await conn.execute(
            "UPDATE idempotency_records SET request_hash = %s WHERE key = 'busy'", (_fingerprint_of(body),)
        )
    in_flight = await client.post("/v1/jobs", headers={**alice["headers"], "Idempotency-Key": "busy"}, json=body)
    assert in_flight.status_code == 409 and in_flight.json()["code"] == "idempotency_in_flight"
    assert in_flight.headers["retry-after"]

    app_state.settings.max_running_jobs_per_user = 0
    async with app_state.pool.connection() as conn:
        await ledger.adjust(conn, alice["id"], "drain", -100)
    poor = await client.post("/v1/jobs", headers={**alice["headers"], "Idempotency-Key": "k2"}, json=body)
    assert poor.status_code == 402
    async with app_state.pool.connection() as conn:
        await ledger.adjust(conn, alice["id"], "topup", 100)
    retried = await client.post("/v1/jobs", headers={**alice["headers"], "Idempotency-Key": "k2"}, json=body)
    assert retried.status_code == 202, retried.text
    bad_key = await client.post("/v1/jobs", headers={**alice["headers"], "Idempotency-Key": "x" * 300}, json=body)
    assert bad_key.status_code == 400 and bad_key.json()["code"] == "invalid_idempotency_key"


def _fingerprint_of(body: dict[str, Any]) -> str:
    from inference.params import GenerateParams

    params = GenerateParams(prompt=body["prompt"])
    return idempotency.request_hash(
        {
            "task": body["task"],
            "params": params.model_dump(mode="json"),
            "input_sha256": None,
            "input_url": None,
            "webhook_url": None,
            "webhook_events": None,
        }
    )


async def test_concurrent_requests_with_one_key_create_one_job(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    headers = {**alice["headers"], "Idempotency-Key": "race"}
    body = {"task": "generate", "prompt": "thunder", "params": {"duration_s": 2}}
    responses = await asyncio.gather(*(client.post("/v1/jobs", headers=headers, json=body) for _ in range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {202, 409} and statuses.count(202) >= 1, statuses
    ids = {response.json()["id"] for response in responses if response.status_code == 202}
    assert len(ids) == 1
    assert await _job_count(app_state) == 1
    cost = next(response.json()["cost"] for response in responses if response.status_code == 202)
    async with app_state.pool.connection() as conn:
        assert (await ledger.balance(conn, alice["id"])).held == cost


async def test_in_flight_claim_of_a_crashed_submit_expires_after_its_lease(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    body = {"task": "generate", "prompt": "rain"}
    headers = {**alice["headers"], "Idempotency-Key": "cut-off"}
    lease = app_state.settings.idempotency_in_flight_lease_seconds
    async with app_state.pool.connection() as conn:
        # A submit that claimed the key, then its API process was killed: nothing completes or abandons it.
        assert await idempotency.claim(conn, alice["id"], "cut-off", _fingerprint_of(body), 24 * 3600) is None
    assert (await client.post("/v1/jobs", headers=headers, json=body)).status_code == 409
    async with app_state.pool.connection() as conn:
        # Age the claim on the database's clock, which is the one the lease is measured with.
        await conn.execute(
            "UPDATE idempotency_records SET renewed_at = now() - make_interval(secs => %s) WHERE key = 'cut-off'",
            (lease + 1,),
        )
    retried = await client.post("/v1/jobs", headers=headers, json=body)
    assert retried.status_code == 202, retried.text
    assert await _job_count(app_state) == 1
    # The lease applies to in-flight claims only: a completed key replays for its whole TTL.
    async with app_state.pool.connection() as conn:
        await conn.execute("UPDATE idempotency_records SET renewed_at = now() - interval '23 hours'")
    replayed = await client.post("/v1/jobs", headers=headers, json=body)
    assert replayed.status_code == 202 and replayed.headers[idempotency.REPLAY_HEADER] == "true"
    assert replayed.json()["id"] == retried.json()["id"] and await _job_count(app_state) == 1


async def test_a_failure_after_the_job_committed_keeps_the_key_so_a_retry_is_not_charged_twice(
    client: Any, alice: dict[str, Any], app_state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from api.jobs import submit

    real_dispatch = submit.dispatch_job
    failures = []

    async def dispatch_losing_the_database_once(state: Any, job_id: Any) -> None:
        # The job and its hold are committed; the connection dies before dispatch (or shutdown cancels the request).
        if not failures:
            failures.append(job_id)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        await real_dispatch(state, job_id)

    monkeypatch.setattr(submit, "dispatch_job", dispatch_losing_the_database_once)
    app_state.settings.max_running_jobs_per_user = 0
    headers = {**alice["headers"], "Idempotency-Key": "after-commit"}
    body = {"task": "generate", "prompt": "rain on a roof"}
    failed = await client.post("/v1/jobs", headers=headers, json=body)
    # Issue 20 item 2: the answer names the job that exists, and says not to resubmit blindly.
    assert failed.status_code == 500 and failed.json()["job_id"] == str(failures[0])
    assert failed.headers["location"] == f"/v1/jobs/{failures[0]}" and failed.headers["x-should-retry"] == "false"

    retried = await client.post("/v1/jobs", headers=headers, json=body)
    assert retried.status_code == 202, retried.text
    assert retried.headers[idempotency.REPLAY_HEADER] == "true"
    assert retried.json()["id"] == str(failures[0])
    assert await _job_count(app_state) == 1
    async with app_state.pool.connection() as conn:
        holds = await (await conn.execute("SELECT count(*), sum(amount) FROM holds")).fetchone()
        assert holds == (1, retried.json()["cost"])
        assert (await ledger.balance(conn, alice["id"])).held == retried.json()["cost"]
