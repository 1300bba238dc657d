"""The local worker pool under crashes: worker processes SIGKILLed mid-run, cancels of queued jobs, submits racing
a worker's death. Real worker processes (builtin engine), real Postgres, the app's background loops running."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from api.worker.runner import attempt_time_limit
from db import jobs as db_jobs
from db import ledger
from db.embedded import pid_is_running
from inference.builtin import HOLD_UNTIL_ENV
from inference.registry import TASKS
from tests.jobs_api_support import multipart, wait_final, wait_status, write_audio
from tests.jobs_support import wait_until


def _kill_workers() -> list[int]:
    """SIGKILL every worker process of this API process (what the OOM killer or a crash does)."""
    pids = [child.pid for child in multiprocessing.active_children() if child.pid is not None]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


async def _ledger_kinds(app_state: Any, job_id: str) -> list[str]:
    async with app_state.pool.connection() as conn:
        cursor = await conn.execute("SELECT kind::text FROM ledger_entries WHERE job_id = %s ORDER BY id", (job_id,))
        return [row[0] for row in await cursor.fetchall()]


async def test_worker_deaths_and_cancels_never_strand_a_job(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = app_state.settings
    settings.local_workers = 1
    settings.max_running_jobs_per_user = 10
    # Neither the reaper's interval nor the heartbeat timeout may rescue a job here: a worker's death must be
    # noticed by the supervisor, and the deadline (2 h) is far away.
    settings.reaper_interval_seconds = 3600
    settings.heartbeat_timeout_seconds = 3600
    headers = alice["headers"]
    # Every run holds at its first progress report until `release` exists (the builtin engine's test hook, read by
    # each worker process at its start): the first job is surely running when its worker is killed.
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(release))
    audio = write_audio(tmp_path / "short.wav", 2.0)
    ids = []
    for _ in range(5):
        response = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, audio))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    await wait_status(app_state, ids[0], "running")
    # One worker, busy: the others wait. Cancelling one of them, then the worker's death, must not upset the pool
    # (with a ProcessPoolExecutor, the cancelled future crashed its manager thread, gh-107219, and the job queued
    # behind it waited for its deadline).
    canceled = await client.post(f"/v1/jobs/{ids[3]}/cancel", headers=headers)
    assert canceled.status_code == 200, canceled.text
    assert _kill_workers(), "no worker process to kill"
    release.touch()

    jobs = [await wait_final(client, headers, job_id, app_state, rounds=12) for job_id in ids]
    first, second, third, fourth, fifth = jobs
    # The killed worker's job is failed at once; the rest run on the restarted worker.
    assert first["status"] == "failed" and first["error"]["code"] == "worker_lost", first
    assert second["status"] == third["status"] == fifth["status"] == "succeeded", (second, third, fifth)
    assert fourth["status"] == "canceled"
    for job in jobs:
        kinds = await _ledger_kinds(app_state, job["id"])
        assert kinds == ["hold", "capture" if job["status"] == "succeeded" else "release"], (job["status"], kinds)
    async with app_state.pool.connection() as conn:
        assert await ledger.invariant_violations(conn) == []
        spent = sum(job["cost"] for job in jobs if job["status"] == "succeeded")
        balance = await ledger.balance(conn, alice["id"])
    assert (balance.available, balance.held) == (100 - spent, 0)
    assert app_state.dispatcher.restarts >= 1


async def test_submits_racing_a_worker_death_are_accepted_and_run(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path
) -> None:
    settings = app_state.settings
    settings.local_workers = 2
    settings.max_running_jobs_per_user = 10
    headers = alice["headers"]
    audio = write_audio(tmp_path / "a.wav", 2.0)
    warm_up = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, audio))
    assert warm_up.status_code == 202
    assert (await wait_final(client, headers, warm_up.json()["id"], app_state))["status"] == "succeeded"

    # Every worker dies; the submits arrive before the supervisor has replaced them. Dispatch is only marking
    # the job ready for whichever worker claims it next, so none of them may answer 503.
    assert _kill_workers()
    submits = await asyncio.gather(
        *(client.post("/v1/jobs", headers=headers, **multipart("midi", {}, audio)) for _ in range(3))
    )
    assert [response.status_code for response in submits] == [202, 202, 202], [r.text for r in submits]
    for response in submits:
        job = await wait_final(client, headers, response.json()["id"], app_state)
        assert job["status"] == "succeeded", job


def test_pid_liveness_sees_through_zombies() -> None:
    child = subprocess.Popen(["true"])
    # Exited but not yet reaped (a zombie): an orphaned worker's pid looks like this until init reaps it.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert not pid_is_running(child.pid)
    child.wait()
    assert not pid_is_running(child.pid)
    assert pid_is_running(os.getpid())


async def test_a_hung_engine_is_stopped_its_job_failed_and_the_queue_moves_on(
    client: Any, alice: dict[str, Any], app_state: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = app_state.settings
    settings.local_workers = 1  # one worker: a hung job would stall every job behind it
    settings.max_running_jobs_per_user = 10
    settings.engine_timeout_floor_seconds = 1.0
    # Nothing else may end the hung job: not the reaper's pass, not a stale heartbeat, not the 2 h deadline.
    settings.reaper_interval_seconds = 3600
    settings.heartbeat_timeout_seconds = 3600
    # The builtin engine blocks at its first progress report until `release` exists (a real hang from the runner's
    # point of view: the heartbeat keeps the job running); the first worker never sees it released.
    release = tmp_path / "release"
    monkeypatch.setenv(HOLD_UNTIL_ENV, str(release))
    headers = alice["headers"]
    audio = write_audio(tmp_path / "clip.wav", 1.0)
    hung = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, audio))
    queued = await client.post("/v1/jobs", headers=headers, **multipart("midi", {}, audio))
    assert hung.status_code == queued.status_code == 202
    await wait_status(app_state, hung.json()["id"], "running")
    [first_worker] = app_state.dispatcher.worker_pids()
    async with app_state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, UUID(hung.json()["id"]))
    assert row is not None
    # Its limit: 1 s priced x midi's worst real-time factor, above the 1 s floor.
    assert attempt_time_limit(row, settings) == TASKS["midi"].worst_realtime_factor * 1.0 == 5.0

    failed = await wait_final(client, headers, hung.json()["id"], app_state, rounds=6)
    assert failed["status"] == "failed" and failed["error"]["code"] == "engine_timeout", failed
    assert await _ledger_kinds(app_state, failed["id"]) == ["hold", "release"]
    assert not pid_is_running(first_worker)

    async def replaced() -> bool:  # the supervisor starts the new worker just after settling the job
        return app_state.dispatcher.restarts == 1

    await wait_until(replaced, timeout=30, what="the hung worker's replacement")
    assert first_worker not in app_state.dispatcher.worker_pids()
    async with app_state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, UUID(failed["id"]))
    assert row is not None and row["input_ref"] is None  # the input went with the settlement

    # The replacement takes the job queued behind it; released, it runs to the end.
    release.touch()
    done = await wait_final(client, headers, queued.json()["id"], app_state)
    assert done["status"] == "succeeded", done
    async with app_state.pool.connection() as conn:
        balance = await ledger.balance(conn, alice["id"])
        assert await ledger.invariant_violations(conn) == []
    assert (balance.available, balance.held) == (100 - done["cost"], 0)
