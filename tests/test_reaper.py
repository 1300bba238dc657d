"""The reaper and the retention sweep on real Postgres and a real storage folder, with an injected clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb

from api.background.reaper import clean_retention, reap
from api.database import open_pool
from api.protocols import Liveness
from api.settings import Settings
from api.storage import LocalStorage
from db import ledger
from tests.jobs_support import job_row, ledger_kinds, make_job, make_user, write_tone

NOW = datetime.now(UTC)


class ExecutionTable:
    """Stands for the execution backend the dispatcher asks (Modal's FunctionCalls): which runs are alive."""

    def __init__(self, alive: set[str] | None = None) -> None:
        self.alive = alive or set()
        self.canceled: list[str] = []

    async def dispatch(self, job_id: UUID, task: str) -> str:
        raise NotImplementedError("the reaper never dispatches")

    async def is_alive(self, dispatch_id: str) -> Liveness:
        return Liveness.ALIVE if dispatch_id in self.alive else Liveness.DEAD

    async def cancel(self, dispatch_id: str, *, terminate: bool = False) -> None:
        self.canceled.append(dispatch_id)

    async def close(self) -> None:
        return None


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.state_dir / "files", "test-signing-key", "http://testserver")


@pytest.fixture
def tone(tmp_path: Path) -> Path:
    return write_tone(tmp_path / "tone.wav", seconds=0.5)


async def _running(
    conn: psycopg.AsyncConnection, job_id: UUID, heartbeat: datetime, dispatch_id: str | None = None
) -> None:
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = %s, heartbeat_at = %s, dispatch_id = %s"
        " WHERE id = %s",
        (heartbeat, heartbeat, dispatch_id, job_id),
    )


async def test_deadline_passed_fails_queued_and_running_jobs(
    conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn, credits=100)
    hook = "https://hooks.example.com/in"
    late_queued = await make_job(conn, storage, settings, user, tone, cost=10, deadline=NOW - timedelta(minutes=1))
    late_running = await make_job(
        conn, storage, settings, user, tone, cost=10, deadline=NOW - timedelta(minutes=1), webhook_url=hook
    )
    await _running(conn, late_running, NOW, "call-1")
    on_time = await make_job(conn, storage, settings, user, tone, cost=10, deadline=NOW + timedelta(hours=1))
    executions = ExecutionTable(alive={"call-1"})

    report = await reap(conn, executions, settings, NOW)

    assert sorted(report.failed) == sorted([late_queued, late_running])
    for job_id in (late_queued, late_running):
        job = await job_row(conn, job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "deadline_exceeded"
        assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    assert (await job_row(conn, on_time))["status"] == "queued"
    assert executions.canceled == ["call-1"]  # stop paying for a run nobody will be charged for
    balance = await ledger.balance(conn, user)
    assert (balance.available, balance.held) == (90, 10)
    cursor = await conn.execute("SELECT event FROM webhook_deliveries WHERE job_id = %s", (late_running,))
    assert [row[0] for row in await cursor.fetchall()] == ["job.failed"]
    assert await ledger.invariant_violations(conn) == []


async def test_stale_heartbeat_fails_the_job_fresh_one_is_kept(
    conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    stale = await make_job(conn, storage, settings, user, tone)
    fresh = await make_job(conn, storage, settings, user, tone)
    await _running(conn, stale, NOW - timedelta(seconds=settings.heartbeat_timeout_seconds + 1))
    await _running(conn, fresh, NOW - timedelta(seconds=settings.heartbeat_timeout_seconds - 5))

    report = await reap(conn, ExecutionTable(), settings, NOW)

    assert report.failed == [stale]
    assert (await job_row(conn, stale))["error"]["code"] == "worker_lost"
    assert (await job_row(conn, fresh))["status"] == "running"
    assert await ledger_kinds(conn, fresh) == ["hold"]


async def test_dead_dispatch_fails_running_requeues_queued_and_finishes_cancels(
    conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    dead_running = await make_job(conn, storage, settings, user, tone)
    await _running(conn, dead_running, NOW, "call-dead")
    live_running = await make_job(conn, storage, settings, user, tone)
    await _running(conn, live_running, NOW, "call-live")
    dead_queued = await make_job(conn, storage, settings, user, tone)
    await conn.execute("UPDATE jobs SET dispatch_id = 'call-gone' WHERE id = %s", (dead_queued,))
    canceled_gone = await make_job(conn, storage, settings, user, tone)
    await _running(conn, canceled_gone, NOW, "call-canceled")
    await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = %s", (canceled_gone,))
    canceled_queued = await make_job(conn, storage, settings, user, tone)
    await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = %s", (canceled_queued,))

    report = await reap(conn, ExecutionTable(alive={"call-live"}), settings, NOW)

    assert report.failed == [dead_running]
    assert sorted(report.canceled) == sorted([canceled_gone, canceled_queued])
    assert report.requeued == [dead_queued]
    assert (await job_row(conn, dead_running))["error"]["code"] == "worker_lost"
    assert (await job_row(conn, live_running))["status"] == "running"
    requeued = await job_row(conn, dead_queued)
    assert requeued["status"] == "queued" and requeued["dispatch_id"] is None
    for job_id in (canceled_gone, canceled_queued):
        assert (await job_row(conn, job_id))["status"] == "canceled"
        assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    assert await ledger.invariant_violations(conn) == []


async def test_two_reapers_at_once_reap_each_job_once(
    conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tone: Path, database_url: str
) -> None:
    users = [await make_user(conn, credits=1000) for _ in range(3)]
    jobs = []
    for index in range(24):
        job_id = await make_job(
            conn,
            storage,
            settings,
            users[index % 3],
            tone,
            cost=7,
            deadline=NOW - timedelta(seconds=1) if index % 2 else NOW + timedelta(hours=1),
        )
        if index % 3 == 0:
            await _running(conn, job_id, NOW - timedelta(hours=1), f"call-{index}")
        jobs.append(job_id)
    pools = [await open_pool(database_url, settings, min_size=2, max_size=4) for _ in range(2)]
    try:
        reports = await asyncio.gather(*(reap(pool, ExecutionTable(), settings, NOW) for pool in pools))
    finally:
        for pool in pools:
            await pool.close()

    reaped = [job for report in reports for job in report.failed]
    assert len(reaped) == len(set(reaped))  # nobody reaped twice
    cursor = await conn.execute("SELECT id FROM jobs WHERE status = 'failed'")
    assert sorted(reaped) == sorted(row[0] for row in await cursor.fetchall())
    cursor = await conn.execute("SELECT job_id, count(*) FROM ledger_entries WHERE kind = 'release' GROUP BY job_id")
    releases = dict(await cursor.fetchall())
    assert set(releases) == set(reaped) and set(releases.values()) == {1}
    assert await ledger.invariant_violations(conn) == []
    for user in users:
        balance = await ledger.balance(conn, user)
        assert balance.available + balance.held == 1000


async def test_retention_deletes_inputs_of_final_jobs_and_expired_outputs(
    conn: psycopg.AsyncConnection, storage: LocalStorage, settings: Settings, tone: Path, tmp_path: Path
) -> None:
    user = await make_user(conn)
    expired = await make_job(conn, storage, settings, user, tone)
    kept = await make_job(conn, storage, settings, user, tone)
    waiting = await make_job(conn, storage, settings, user, tone)
    for job_id, expires in ((expired, NOW - timedelta(seconds=1)), (kept, NOW + timedelta(days=1))):
        ref = f"{user}/{job_id}/enhanced.wav"
        await storage.put_file(settings.outputs_bucket, ref, tone, "audio/wav")
        outputs = [{"name": "enhanced.wav", "ref": ref, "content_type": "audio/wav", "bytes": 1, "metadata": {}}]
        await conn.execute(
            "UPDATE jobs SET status = 'succeeded', outputs = %s, outputs_expire_at = %s, finished_at = %s"
            " WHERE id = %s",
            (Jsonb(outputs), expires, NOW, job_id),
        )
    input_refs = {job_id: (await job_row(conn, job_id))["input_ref"] for job_id in (expired, kept, waiting)}
    for key, expires_in in (("old", "-1 minute"), ("fresh", "23 hours")):
        await conn.execute(
            "INSERT INTO idempotency_records (user_id, key, request_hash, expires_at)"
            " VALUES (%s, %s, 'h', now() + %s::interval)",
            (user, key, expires_in),
        )

    report = await clean_retention(conn, storage, settings, NOW)

    assert (report.inputs_deleted, report.outputs_deleted, report.idempotency_records_deleted) == (2, 1, 1)
    remaining = await (await conn.execute("SELECT key FROM idempotency_records")).fetchall()
    assert remaining == [("fresh",)]
    assert not storage.path_for(settings.outputs_bucket, f"{user}/{expired}/enhanced.wav").exists()
    assert storage.path_for(settings.outputs_bucket, f"{user}/{kept}/enhanced.wav").exists()
    assert (await job_row(conn, expired))["outputs_deleted_at"] == NOW
    assert (await job_row(conn, kept))["outputs_deleted_at"] is None
    for job_id in (expired, kept):
        assert not storage.path_for(settings.inputs_bucket, input_refs[job_id]).exists()
        assert (await job_row(conn, job_id))["input_ref"] is None
    assert storage.path_for(settings.inputs_bucket, input_refs[waiting]).exists()  # still needed
    again = await clean_retention(conn, storage, settings, NOW)
    assert (again.inputs_deleted, again.outputs_deleted) == (0, 0)
