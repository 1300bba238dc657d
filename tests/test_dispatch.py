"""Dispatch: real worker processes running the builtin engine, the per-user running cap, and recovery."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from api.background.reaper import ReaperLoop
from api.jobs.dispatch import DispatchError, dispatch_job, dispatch_ready
from api.jobs.settle import finish_attempt
from api.protocols import Liveness
from db import jobs as db_jobs
from db import ledger
from db.jobs import JobStatus
from tests.jobs_support import (
    RefusingDispatcher,
    job_row,
    job_status,
    ledger_kinds,
    make_job,
    make_user,
    wait_until,
    write_tone,
)


@pytest.fixture
def tone(tmp_path: Path) -> Path:
    return write_tone(tmp_path / "tone.wav")


def _final(conn: psycopg.AsyncConnection, *job_ids: UUID) -> Any:
    async def check() -> bool:
        return all([await job_status(conn, job_id) in ("succeeded", "failed", "canceled") for job_id in job_ids])

    return check


async def test_dispatched_job_runs_in_a_worker_process(
    app_state: Any, conn: psycopg.AsyncConnection, tone: Path
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, app_state.storage, app_state.settings, user, tone, cost=10)

    await dispatch_job(app_state, job_id)
    # Handed to the local workers: marked ready, claimed by whichever worker process is free.
    assert (await job_row(conn, job_id))["dispatch_id"] == "local"

    await wait_until(_final(conn, job_id), timeout=120, what="the worker to finish the job")
    job = await job_row(conn, job_id)
    assert job["status"] == "succeeded", job["error"]
    stored = app_state.storage.path_for(app_state.settings.outputs_bucket, job["outputs"][0]["ref"])
    assert stored.stat().st_size == job["outputs"][0]["bytes"]
    assert await ledger_kinds(conn, job_id) == ["hold", "capture"]
    # The claim recorded the worker process that ran it: the reaper asks about that process.
    _, pid, _ = job["dispatch_id"].split(":")
    assert int(pid) in app_state.dispatcher.worker_pids()
    assert await app_state.dispatcher.is_alive(job["dispatch_id"]) is Liveness.ALIVE
    assert await app_state.dispatcher.is_alive("local:unknown") is Liveness.DEAD


async def test_running_cap_queues_extra_jobs_until_a_slot_frees(
    app_state: Any, conn: psycopg.AsyncConnection, tone: Path
) -> None:
    settings = app_state.settings
    settings.max_running_jobs_per_user = 1
    settings.reaper_interval_seconds = 3600  # only a finished run may wake the loop in this test
    alice, bob = await make_user(conn), await make_user(conn)
    first = await make_job(conn, app_state.storage, settings, alice, tone)
    second = await make_job(conn, app_state.storage, settings, alice, tone)
    bobs = await make_job(conn, app_state.storage, settings, bob, tone)
    # Left over by a previous API process: queued with a dispatch that no longer exists.
    orphan = await make_job(conn, app_state.storage, settings, await make_user(conn), tone)
    await conn.execute("UPDATE jobs SET dispatch_id = 'local:previous-process' WHERE id = %s", (orphan,))

    for job_id in (first, second, bobs):
        await dispatch_job(app_state, job_id)
    assert (await job_row(conn, first))["dispatch_id"] is not None
    assert (await job_row(conn, second))["dispatch_id"] is None  # alice is at her cap: it waits
    assert (await job_row(conn, bobs))["dispatch_id"] is not None  # bob has his own slot

    loop = ReaperLoop(app_state)
    await loop.start()
    try:
        await wait_until(_final(conn, first, second, bobs, orphan), timeout=120, what="all jobs to finish")
    finally:
        await loop.stop()
    for job_id in (first, second, bobs, orphan):
        assert await job_status(conn, job_id) == "succeeded"
        assert await ledger_kinds(conn, job_id) == ["hold", "capture"]
    assert await ledger.invariant_violations(conn) == []
    assert await dispatch_ready(app_state) == 0


async def test_failed_dispatch_fails_the_job_and_releases_the_hold(
    app_state: Any, conn: psycopg.AsyncConnection, tone: Path
) -> None:
    app_state.dispatcher = RefusingDispatcher()
    user = await make_user(conn, credits=100)
    job_id = await make_job(conn, app_state.storage, app_state.settings, user, tone, cost=30)

    with pytest.raises(DispatchError):
        await dispatch_job(app_state, job_id)

    job = await job_row(conn, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "dispatch_failed"
    balance = await ledger.balance(conn, user)
    assert (balance.available, balance.held) == (100, 0)
    # dispatch_ready leaves a refused job queued for the next pass instead of failing it.
    retry = await make_job(conn, app_state.storage, app_state.settings, user, tone, cost=30)
    assert await dispatch_ready(app_state) == 0
    assert await job_status(conn, retry) == "queued"


class ClaimedThenFailingDispatcher(RefusingDispatcher):
    """A spawn that raised after the call was created: the worker has already claimed the job."""

    def __init__(self, app_state: Any) -> None:
        self._state = app_state

    async def dispatch(self, job_id: UUID, task: str) -> str:
        async with self._state.pool.connection() as worker_conn:
            assert (
                await db_jobs.claim(worker_conn, job_id, 60, "modal:fc-created", max_attempts=3, deadline_seconds=3600)
                is not None
            )
        raise TimeoutError("spawn timed out after the function call was created")


async def test_dispatch_failure_after_the_worker_claimed_keeps_the_job_and_its_hold(
    client: Any, alice: dict[str, Any], app_state: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app_state.dispatcher = ClaimedThenFailingDispatcher(app_state)
    with caplog.at_level(logging.ERROR, logger="studio.dispatch"):
        response = await client.post("/v1/jobs", headers=alice["headers"], json={"task": "generate", "prompt": "x"})
    # Not "503 nothing charged": the job runs, and it will be charged when it succeeds.
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "running"
    assert any("already claimed" in record.getMessage() for record in caplog.records)
    async with app_state.pool.connection() as conn:
        assert (await ledger.balance(conn, alice["id"])).held == job["cost"]
        assert await ledger_kinds(conn, UUID(job["id"])) == ["hold"]
        written = await finish_attempt(
            conn, UUID(job["id"]), 1, JobStatus.SUCCEEDED, retention_seconds=60, outputs=[], metrics={}
        )
        assert written == JobStatus.SUCCEEDED
        assert await ledger_kinds(conn, UUID(job["id"])) == ["hold", "capture"]
        assert await ledger.invariant_violations(conn) == []


async def test_a_capture_that_finds_its_hold_settled_logs_loudly(
    app_state: Any, conn: psycopg.AsyncConnection, tone: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user = await make_user(conn, credits=100)
    job_id = await make_job(conn, app_state.storage, app_state.settings, user, tone, cost=30)
    assert await db_jobs.claim(conn, job_id, 60, "local:test", max_attempts=3, deadline_seconds=3600) is not None
    assert await ledger.release(conn, job_id)  # some other path settled the hold first
    with caplog.at_level(logging.ERROR, logger="studio.settle"):
        written = await finish_attempt(conn, job_id, 1, JobStatus.SUCCEEDED, retention_seconds=60, outputs=[])
    assert written == JobStatus.SUCCEEDED
    assert [r.levelno for r in caplog.records if "already settled" in r.getMessage()] == [logging.ERROR]
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
