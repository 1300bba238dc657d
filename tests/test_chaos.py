"""Chaos: short builtin-engine jobs over real HTTP to a real `studio serve`, while worker processes are SIGKILLed
at random (seeded), the API itself is SIGKILLed and restarted once, and cancels are mixed in.

Every job must end final without waiting for its deadline (short heartbeat timeout and reaper interval), each hold
must be captured or released exactly once, and each balance must equal its grants minus its captures.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import psycopg
import pytest

from api.security import mint_local_token
from api.settings import Settings
from api.worker.local import parse_worker_dispatch_id
from db import ledger
from db.embedded import pid_is_running
from tests.jobs_api_support import multipart, write_audio
from tests.jobs_support import make_user
from tests.serve_support import Serve

SEED = 25
JOBS = 60
USERS = 4
CREDITS = 1000
BURST = 6  # jobs submitted at once
WORKER_KILL_CHANCE = 0.8  # per burst
API_KILL_AT_BURST = JOBS // BURST // 2
SECRET = "test-secret-key-not-for-production-000000000000"
FINAL = ("succeeded", "failed", "canceled")


def _worker_pids(api_pid: int) -> list[int]:
    """The API's spawned worker processes (not multiprocessing's resource tracker), read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        if parent == api_pid and b"spawn_main" in command:
            pids.append(int(entry.name))
    return pids


async def _running_workers(api_pid: int, count: int, timeout: float = 30.0) -> list[int]:
    """The API's worker pids once `count` of them run (a kill just before may be being replaced), bounded."""
    end = time.monotonic() + timeout
    while len(pids := _worker_pids(api_pid)) < count and time.monotonic() < end:
        await asyncio.sleep(0.05)  # polling /proc for a condition, bounded by `timeout`
    return pids


async def _busy_workers(conn: psycopg.AsyncConnection, workers: list[int], timeout: float = 5.0) -> list[int]:
    """Those of `workers` holding a running job (dispatch id `local:<pid>:<token>`), once one does, bounded."""
    end = time.monotonic() + timeout
    while True:
        cursor = await conn.execute("SELECT dispatch_id FROM jobs WHERE status = 'running'")
        held = [parse_worker_dispatch_id(dispatch_id) for (dispatch_id,) in await cursor.fetchall()]
        busy = [claim[0] for claim in held if claim is not None and claim[0] in workers]
        if busy or time.monotonic() > end:
            return busy
        await asyncio.sleep(0.02)  # polling the database for a condition, bounded by `timeout`


@pytest.fixture
def chaos_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="studio-chaos-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


async def test_jobs_survive_worker_kills_an_api_restart_and_cancels(
    database_url: str, conn: psycopg.AsyncConnection, chaos_dir: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    env = {key: value for key, value in os.environ.items() if not key.startswith("STUDIO_")}
    env |= {
        "DATABASE_URL": database_url,
        "STUDIO_STATE_DIR": str(chaos_dir / "state"),
        "STUDIO_ENGINES": "builtin",
        "STUDIO_SECRET_KEY": SECRET,
        "STUDIO_LOCAL_WORKERS": "2",
        "STUDIO_LOCAL_WORKER_POLL_SECONDS": "1",
        "STUDIO_HEARTBEAT_TIMEOUT_SECONDS": "5",
        "STUDIO_REAPER_INTERVAL_SECONDS": "0.5",
        "STUDIO_JOB_DEADLINE_SECONDS": "3600",  # far beyond the test: no job may be ended by its deadline
        "STUDIO_RATE_LIMIT_PER_MINUTE": "100000",
        "STUDIO_MAX_RUNNING_JOBS_PER_USER": "4",  # more jobs handed to the workers than they can run at once
    }
    settings = Settings(database_url=database_url, state_dir=chaos_dir / "state", secret_key=SECRET)
    users: list[tuple[UUID, dict[str, str]]] = []
    for _ in range(USERS):
        user_id = await make_user(conn, credits=CREDITS)
        token = mint_local_token(settings, SECRET, user_id, f"{user_id}@example.com")
        users.append((user_id, {"Authorization": f"Bearer {token}"}))
    audio = write_audio(chaos_dir / "clip.wav", 1.0)
    long_audio = write_audio(chaos_dir / "long.wav", 120.0)

    api = Serve(env, chaos_dir / "serve.log")
    job_owner: dict[str, dict[str, str]] = {}
    worker_kills = 0
    kills_of_busy_workers = 0
    orphans: list[int] = []
    try:
        api.wait_healthy()
        async with httpx.AsyncClient(timeout=30.0) as http:
            for burst in range(JOBS // BURST):
                if burst == API_KILL_AT_BURST:
                    orphans = await _running_workers(api.process.pid, count=2)
                    api.kill()
                    api = Serve(env, chaos_dir / "serve.log")
                    api.wait_healthy()
                # A burst of concurrent submits queues jobs behind the busy workers.
                # Its first job is a long one (under a second of work), so a kill has a running job to hit.
                picks = [(rng.choice(users)[1], rng.choice(["midi", "midi", "enhance"])) for _ in range(BURST)]
                clips = [long_audio] + [audio] * (BURST - 1)
                responses = await asyncio.gather(
                    *(
                        http.post(f"{api.base_url}/v1/jobs", headers=headers, **multipart(task, {}, clip))
                        for (headers, task), clip in zip(picks, clips, strict=True)
                    )
                )
                for (headers, _), response in zip(picks, responses, strict=True):
                    assert response.status_code == 202, response.text
                    job_owner[response.json()["id"]] = headers
                # Cancel some of them (queued or running by now), then maybe kill a worker straight after.
                for victim in rng.sample([response.json()["id"] for response in responses], rng.randint(0, 2)):
                    canceled = await http.post(f"{api.base_url}/v1/jobs/{victim}/cancel", headers=job_owner[victim])
                    assert canceled.status_code in (200, 202, 409), canceled.text
                if rng.random() < WORKER_KILL_CHANCE and (workers := _worker_pids(api.process.pid)):
                    # Aim at a worker that holds a running job, when one does: a kill of an idle worker tests
                    # only the restart.
                    busy = await _busy_workers(conn, workers)
                    os.kill(rng.choice(busy or workers), signal.SIGKILL)
                    worker_kills += 1
                    kills_of_busy_workers += bool(busy)

        async def unfinished() -> int:
            cursor = await conn.execute(
                "SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'canceled')"
            )
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        end = asyncio.get_running_loop().time() + 90
        while (left := await unfinished()) and asyncio.get_running_loop().time() < end:
            await asyncio.sleep(0.2)  # polling the database for a condition, bounded by `end`
        assert left == 0, f"{left} jobs not final:\n{api.tail()}"
        assert api.stop() == 0, api.tail()
    finally:
        api.process.kill()

    cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
    await cursor.execute("SELECT id::text, user_id, status::text, cost, error FROM jobs")
    jobs = await cursor.fetchall()
    assert sorted(job["id"] for job in jobs) == sorted(job_owner)
    outcomes = {status: sum(job["status"] == status for job in jobs) for status in FINAL}
    errors = {job["error"]["code"] for job in jobs if job["error"]}
    assert errors <= {"worker_lost", "canceled"}, errors  # never deadline_exceeded, never internal_error
    # The kills hit running jobs: those jobs were failed as lost (a job may finish between the look and the kill).
    lost = sum(bool(job["error"]) and job["error"]["code"] == "worker_lost" for job in jobs)
    assert kills_of_busy_workers >= 3 and lost >= kills_of_busy_workers // 2, (kills_of_busy_workers, lost)
    for job in jobs:
        cursor = await conn.execute(
            "SELECT kind::text FROM ledger_entries WHERE job_id = %s ORDER BY id", (UUID(job["id"]),)
        )
        kinds = [row[0] for row in await cursor.fetchall()]
        settled = "capture" if job["status"] == "succeeded" else "release"
        assert kinds == ["hold", settled], (job["id"], job["status"], kinds)
    cursor = await conn.execute("SELECT state::text, count(*) FROM holds GROUP BY state")
    holds = dict(await cursor.fetchall())
    assert holds == {
        state: count
        for state, count in (("captured", outcomes["succeeded"]), ("released", JOBS - outcomes["succeeded"]))
        if count
    }
    assert await ledger.invariant_violations(conn) == []
    for user_id, _ in users:
        captured = sum(job["cost"] for job in jobs if job["user_id"] == user_id and job["status"] == "succeeded")
        balance = await ledger.balance(conn, user_id)
        assert (balance.available, balance.held) == (CREDITS - captured, 0)
    # The killed API's workers ended on their own once it was gone (no orphan keeps claiming work).
    assert orphans and not [pid for pid in orphans if pid_is_running(pid)]
    print(
        f"chaos: {JOBS} jobs {outcomes}, {worker_kills} worker kills ({kills_of_busy_workers} of a busy worker, "
        f"{lost} jobs lost), 1 API kill, {time.monotonic() - started:.1f} s"
    )
