"""A job's own deadline (`deadline_s` / `Cancel-After`) over real HTTP on the embedded Postgres: past it, the reaper
ends the job `canceled` with reason `deadline`, releases its hold, tells a running worker to stop, and says so in the
job and its webhook, apart from a user's cancel. The reaper runs on an injected clock (no sleeps)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from api.background.reaper import ReaperLoop, reap
from api.jobs.request import parse_cancel_after
from db import ledger
from inference.builtin import HOLD_UNTIL_ENV
from tests.jobs_api_support import multipart, wait_final, wait_status, write_audio

HOOK = "https://hooks.example.com/studio"


async def _balance(app_state: Any, user: dict[str, Any]) -> tuple[int, int]:
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, user["id"])
    return balance.available, balance.held


async def _reap_at(app_state: Any, seconds_from_now: float) -> Any:
    later = app_state.clock() + timedelta(seconds=seconds_from_now)
    return await reap(app_state.pool, app_state.dispatcher, app_state.settings, later)


async def _webhook_payloads(app_state: Any, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT event, payload FROM webhook_deliveries WHERE job_id = %s ORDER BY created_at", (UUID(job_id),)
        )
        return [(row[0], row[1]) for row in await cursor.fetchall()]


async def test_queued_job_past_its_deadline_is_canceled_released_and_told_apart_from_a_user_cancel(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    app_state.settings.max_running_jobs_per_user = 0  # nothing starts: every job waits queued
    body = {"task": "generate", "params": {"prompt": "rain"}, "webhook_url": HOOK, "webhook_events": ["job.canceled"]}
    by_body = await client.post("/v1/jobs", headers=alice["headers"], json={**body, "deadline_s": 30})
    assert by_body.status_code == 202, by_body.text
    by_header = await client.post(
        "/v1/jobs",
        headers={**alice["headers"], "Cancel-After": "2m"},
        **multipart("midi", {}, write_audio(tmp_path / "a.wav", 1.0), webhook_url=HOOK, webhook_events="job.canceled"),
    )
    assert by_header.status_code == 202, by_header.text
    by_user = await client.post("/v1/jobs", headers=alice["headers"], json=body)
    assert by_user.status_code == 202, by_user.text
    jobs = [by_body.json(), by_header.json(), by_user.json()]
    created = {job["id"]: job for job in jobs}
    first, second, third = (job["id"] for job in jobs)
    assert created[third]["timings"]["cancel_after"] is None
    for job_id, seconds in ((first, 30), (second, 120)):
        timings = created[job_id]["timings"]
        gap = datetime.fromisoformat(timings["cancel_after"]) - datetime.fromisoformat(timings["created_at"])
        assert gap.total_seconds() == pytest.approx(seconds, abs=1.0)
    held = sum(job["cost"] for job in jobs)
    assert await _balance(app_state, alice) == (100 - held, held)

    report = await _reap_at(app_state, 31)
    assert report.canceled == [UUID(first)]
    assert (await _reap_at(app_state, 121)).canceled == [UUID(second)]
    canceled = await client.post(f"/v1/jobs/{third}/cancel", headers=alice["headers"])
    assert canceled.status_code == 200

    for job_id in (first, second):
        job = (await client.get(f"/v1/jobs/{job_id}", headers=alice["headers"])).json()
        assert job["status"] == "canceled" and job["cancel_reason"] == "deadline"
        assert job["error"]["code"] == "deadline" and job["cancel_requested"] is False
        [(event, payload)] = await _webhook_payloads(app_state, job_id)
        assert event == "job.canceled" and payload["cancel_reason"] == "deadline"
    user_canceled = (await client.get(f"/v1/jobs/{third}", headers=alice["headers"])).json()
    assert user_canceled["status"] == "canceled" and user_canceled["cancel_reason"] == "user"
    [(event, payload)] = await _webhook_payloads(app_state, third)
    assert event == "job.canceled" and payload["cancel_reason"] == "user"
    assert await _balance(app_state, alice) == (100, 0)
    async with app_state.pool.connection() as conn:
        holds = await (await conn.execute("SELECT state::text FROM holds")).fetchall()
        assert [row[0] for row in holds] == ["released"] * 3
        assert await ledger.invariant_violations(conn) == []
    assert (await _reap_at(app_state, 200)).canceled == []  # final states stay final: nothing reaped twice


async def test_running_job_past_its_deadline_stops_its_worker(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The builtin engine holds at its first progress report until a file this test never creates exists: only the
    # deadline can end the first job. The pool has one worker, so the second job runs only once that worker let go.
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(tmp_path / "never-released"))
    assert app_state.settings.local_workers == 1
    path = write_audio(tmp_path / "clip.wav", 1.0)
    first = await client.post(
        "/v1/jobs", headers={**alice["headers"], "Cancel-After": "60"}, **multipart("enhance", {}, path)
    )
    assert first.status_code == 202, first.text
    first_id = first.json()["id"]
    await wait_status(app_state, first_id, "running")
    second = await client.post("/v1/jobs", headers=alice["headers"], **multipart("enhance", {}, path))
    second_id = second.json()["id"]

    assert (await _reap_at(app_state, 61)).canceled == [UUID(first_id)]

    job = await wait_final(client, alice["headers"], first_id, app_state)
    assert job["status"] == "canceled" and job["cancel_reason"] == "deadline" and job["outputs"] == []
    await wait_status(app_state, second_id, "running")  # the worker stopped the first job and took the next
    assert (await client.post(f"/v1/jobs/{second_id}/cancel", headers=alice["headers"])).status_code == 202
    assert (await wait_final(client, alice["headers"], second_id, app_state))["cancel_reason"] == "user"
    assert await _balance(app_state, alice) == (100, 0)


async def test_local_reaper_loop_wakes_at_the_deadline(client: Any, alice: dict[str, Any], app_state: Any) -> None:
    # An hour between passes: only the submit's wake-up and the loop's re-planning for the deadline can end the job
    # in time. (The loop runs on the real clock here; the job's deadline is the smallest allowed.)
    app_state.settings.reaper_interval_seconds = 3600
    app_state.settings.max_running_jobs_per_user = 0
    created = await client.post(
        "/v1/jobs", headers=alice["headers"], json={"task": "generate", "params": {"prompt": "x"}, "deadline_s": 1}
    )
    assert created.status_code == 202, created.text
    job = await wait_final(client, alice["headers"], created.json()["id"], app_state, rounds=3)
    assert job["status"] == "canceled" and job["cancel_reason"] == "deadline"


async def test_next_pass_is_planned_for_the_earliest_deadline(
    client: Any, alice: dict[str, Any], app_state: Any
) -> None:
    app_state.settings.max_running_jobs_per_user = 0
    loop = ReaperLoop(app_state)
    assert await loop.next_wait() == app_state.settings.reaper_interval_seconds  # no deadline: the interval
    now = app_state.clock()
    app_state.clock = lambda: now
    for seconds in (50, 20):
        response = await client.post(
            "/v1/jobs",
            headers=alice["headers"],
            json={"task": "generate", "params": {"prompt": "x"}, "deadline_s": seconds},
        )
        assert response.status_code == 202, response.text
    assert await loop.next_wait() == pytest.approx(20)
    app_state.clock = lambda: now + timedelta(seconds=25)
    assert await loop.next_wait() == 0  # overdue: run at once


@pytest.mark.parametrize(
    ("headers", "extra"),
    [
        ({"Cancel-After": "soon"}, {}),
        ({"Cancel-After": "0"}, {}),
        ({"Cancel-After": "25h"}, {}),
        ({"Cancel-After": "m"}, {}),
        ({}, {"deadline_s": 0}),
        ({}, {"deadline_s": 86401}),
        ({}, {"deadline_s": "soon"}),
        ({"Cancel-After": "30s"}, {"deadline_s": 31}),
    ],
)
async def test_bad_deadlines_are_422_and_charge_nothing(
    client: Any, alice: dict[str, Any], app_state: Any, headers: dict[str, str], extra: dict[str, Any]
) -> None:
    response = await client.post(
        "/v1/jobs",
        headers={**alice["headers"], **headers},
        json={"task": "generate", "params": {"prompt": "x"}, **extra},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await _balance(app_state, alice) == (100, 0)
    async with app_state.pool.connection() as conn:
        assert await (await conn.execute("SELECT count(*) FROM jobs")).fetchone() == (0,)


def test_cancel_after_durations_are_parsed_like_replicates() -> None:
    assert [parse_cancel_after(raw) for raw in ("90", "30s", "5m", "1h30m", "1h30m45s", "2.5s")] == [
        90,
        30,
        300,
        5400,
        5445,
        2.5,
    ]
