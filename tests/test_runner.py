"""The job runner against real Postgres, a real storage folder and the builtin engine on generated audio."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from pydantic import BaseModel

from api.background.reaper import reap
from api.dispatchers.local import LocalDispatcher
from api.settings import Settings
from api.storage import LocalStorage
from api.worker.runner import WorkerContext, run_job
from db import ledger
from db.jobs import request_cancel_running
from inference.base import EngineResult, OutputFile, ProgressFn, emit_partial
from tests import hostile_audio
from tests.jobs_support import job_row, ledger_kinds, make_job, make_user, wait_until, write_tone


@pytest.fixture
def storage(settings: Settings) -> LocalStorage:
    return LocalStorage(settings.state_dir / "files", "test-signing-key", "http://testserver")


@pytest.fixture
def ctx(settings: Settings, database_url: str, storage: LocalStorage) -> WorkerContext:
    async def connect() -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(database_url, autocommit=True)

    return WorkerContext(settings=settings, connect=connect, storage=storage, heartbeat_interval=0.02)


@pytest.fixture
def tone(tmp_path: Path) -> Path:
    return write_tone(tmp_path / "tone.wav")


class PacedEngine:
    """Stands for a long model run: reports progress until released (or for at most ~30 s)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.error = error

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        self.started.set()
        if self.error is not None:
            raise self.error
        for step in range(6000):
            progress(min(step / 100, 0.99), "working")
            if self.release.wait(0.005):
                break
        out = out_dir / "result.txt"
        out.write_text("done")
        return EngineResult([OutputFile("result.txt", out, "text/plain")], {"audio_seconds": 2.0})


def _outputs_folder(storage: LocalStorage, user_id: UUID, job_id: UUID) -> Path:
    return storage.root / "outputs" / str(user_id) / str(job_id)


async def _balances(conn: psycopg.AsyncConnection, user_id: UUID) -> tuple[int, int]:
    balance = await ledger.balance(conn, user_id)
    return balance.available, balance.held


async def test_job_runs_to_success_stores_outputs_and_captures(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn, credits=100)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10, webhook_url="https://hooks.example.com/x")
    assert await _balances(conn, user) == (90, 10)

    assert await run_job(ctx, job_id) == "succeeded"

    job = await job_row(conn, job_id)
    assert job["status"] == "succeeded" and job["progress"] == 1 and job["attempts"] == 1
    assert [item["name"] for item in job["outputs"]] == ["enhanced.wav"]
    output = job["outputs"][0]
    assert output["ref"] == f"{user}/{job_id}/enhanced.wav" and output["content_type"] == "audio/wav"
    stored = storage.path_for(settings.outputs_bucket, output["ref"])
    assert stored.stat().st_size == output["bytes"] > 1000
    assert job["metrics"]["audio_seconds"] == pytest.approx(2.0, abs=0.01)
    assert job["metrics"]["compute_seconds"] >= 0
    assert job["finished_at"] is not None and job["started_at"] is not None
    assert job["outputs_expire_at"] - job["finished_at"] == timedelta(seconds=settings.output_retention_seconds)
    # The input is deleted once the job is final.
    assert job["input_ref"] is None
    assert not storage.path_for(settings.inputs_bucket, f"{user}/{job_id}/input.wav").exists()
    assert await _balances(conn, user) == (90, 0)
    assert await ledger_kinds(conn, job_id) == ["hold", "capture"]
    assert await ledger.invariant_violations(conn) == []
    cursor = await conn.execute("SELECT event FROM webhook_deliveries WHERE job_id = %s ORDER BY created_at", (job_id,))
    events = [row[0] for row in await cursor.fetchall()]
    assert events[0] == "job.started" and events[-1] == "job.succeeded"


@pytest.mark.parametrize(
    ("priced_seconds", "max_duration_seconds"),
    [
        (2.0, 20 * 60.0),  # priced on 2 s (a header that lied), decodes to 10 s: under the limit, over its price
        (None, 3.0),  # nothing recorded: the deployment's limit alone
    ],
)
async def test_input_decoding_past_the_job_limit_fails_audio_too_long_and_releases(
    conn: psycopg.AsyncConnection,
    ctx: WorkerContext,
    storage: LocalStorage,
    settings: Settings,
    tmp_path: Path,
    priced_seconds: float | None,
    max_duration_seconds: float,
) -> None:
    settings.max_duration_seconds = max_duration_seconds
    user = await make_user(conn)
    spoofed = hostile_audio.flac_claiming(tmp_path / "spoofed.flac", 10.0, hostile_audio.RATE)  # STREAMINFO: 1 s
    job_id = await make_job(conn, storage, settings, user, spoofed, cost=10, duration_s=priced_seconds)

    assert await run_job(ctx, job_id) == "failed"

    job = await job_row(conn, job_id)
    assert job["error"]["code"] == "audio_too_long", job["error"]
    expected = "more than the 2.0 s it was measured and priced at" if priced_seconds else "longer than the 3 s limit"
    assert expected in job["error"]["message"]
    assert job["outputs"] == [] and job["input_ref"] is None
    assert await _balances(conn, user) == (100, 0)
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    assert await ledger.invariant_violations(conn) == []


async def test_engine_error_fails_the_job_with_its_safe_message_and_releases(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tmp_path: Path
) -> None:
    user = await make_user(conn)
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"this is not audio at all" * 50)
    job_id = await make_job(conn, storage, settings, user, garbage, cost=10)

    assert await run_job(ctx, job_id) == "failed"

    job = await job_row(conn, job_id)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "undecodable_audio", "message": "the file is not decodable audio"}
    assert job["outputs"] == [] and job["input_ref"] is None
    assert await _balances(conn, user) == (100, 0)
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    assert await ledger.invariant_violations(conn) == []


async def test_unexpected_error_is_internal_and_leaks_nothing(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    ctx.engines[("enhance", "builtin")] = PacedEngine(error=RuntimeError("CUDA OOM at /srv/secret/weights.bin"))

    assert await run_job(ctx, job_id) == "failed"

    job = await job_row(conn, job_id)
    assert job["error"]["code"] == "internal_error"
    assert "secret" not in job["error"]["message"] and "CUDA" not in job["error"]["message"]
    assert await _balances(conn, user) == (100, 0)


async def test_duplicate_delivery_runs_once_captures_once(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    concurrent_job = await make_job(conn, storage, settings, user, tone, cost=10)
    sequential_job = await make_job(conn, storage, settings, user, tone, cost=10)

    results = await asyncio.gather(run_job(ctx, concurrent_job), run_job(ctx, concurrent_job))
    assert sorted(results) == ["skipped", "succeeded"]
    assert await run_job(ctx, sequential_job) == "succeeded"
    assert await run_job(ctx, sequential_job) == "skipped"  # a replay after completion changes nothing

    for job_id in (concurrent_job, sequential_job):
        job = await job_row(conn, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1
        assert len(job["outputs"]) == 1
        assert [p.name for p in _outputs_folder(storage, user, job_id).iterdir()] == ["enhanced.wav"]
        assert await ledger_kinds(conn, job_id) == ["hold", "capture"]
    assert await _balances(conn, user) == (80, 0)
    assert await ledger.invariant_violations(conn) == []


async def test_cancel_while_running_cancels_and_releases(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10, webhook_url="https://hooks.example.com/x")
    engine = PacedEngine()
    ctx.engines[("enhance", "builtin")] = engine

    run = asyncio.create_task(run_job(ctx, job_id))
    await wait_until(lambda: asyncio.to_thread(engine.started.wait, 0), what="the engine to start")

    async def progressed() -> bool:
        return (await job_row(conn, job_id))["progress"] > 0

    await wait_until(progressed, what="progress to be recorded")
    await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = %s", (job_id,))
    assert await asyncio.wait_for(run, 30) == "canceled"

    job = await job_row(conn, job_id)
    assert job["status"] == "canceled" and job["outputs"] == [] and job["stage"] is None
    assert not _outputs_folder(storage, user, job_id).exists()
    assert await _balances(conn, user) == (100, 0)
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    cursor = await conn.execute("SELECT event FROM webhook_deliveries WHERE job_id = %s", (job_id,))
    assert "job.canceled" in {row[0] for row in await cursor.fetchall()}


async def test_a_running_job_past_its_own_deadline_is_canceled_by_its_worker(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    # No reaper runs here: the worker's heartbeat alone notices the deadline (`deadline_s`) and ends the job.
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10, webhook_url="https://hooks.example.com/x")
    engine = PacedEngine()
    ctx.engines[("enhance", "builtin")] = engine

    run = asyncio.create_task(run_job(ctx, job_id))
    await wait_until(lambda: asyncio.to_thread(engine.started.wait, 0), what="the engine to start")
    await conn.execute("UPDATE jobs SET cancel_after = now() WHERE id = %s", (job_id,))
    assert await asyncio.wait_for(run, 30) == "canceled"

    job = await job_row(conn, job_id)
    assert job["status"] == "canceled" and job["error"]["code"] == "deadline" and job["outputs"] == []
    assert await _balances(conn, user) == (100, 0)
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    cursor = await conn.execute("SELECT payload FROM webhook_deliveries WHERE event = 'job.canceled'")
    [(payload,)] = await cursor.fetchall()
    assert payload["cancel_reason"] == "deadline"


class CancelDuringStore(LocalStorage):
    """The real local storage; as the first output is stored, the job's user cancels it through the real cancel
    statement (the job is running: flagged, as `POST /v1/jobs/{id}/cancel` does)."""

    def __init__(self, storage: LocalStorage, database_url: str, job_id: UUID, user_id: UUID) -> None:
        super().__init__(storage.root, "test-signing-key", "http://testserver")
        self.database_url, self.job_id, self.user_id = database_url, job_id, user_id
        self.canceled = False

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> int:
        if bucket == "outputs" and not self.canceled:
            async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as other:
                self.canceled = await request_cancel_running(other, self.job_id, self.user_id)
        return await super().put_file(bucket, key, path, content_type)


async def test_a_cancel_while_outputs_are_stored_wins_and_charges_nothing(
    conn: psycopg.AsyncConnection,
    ctx: WorkerContext,
    storage: LocalStorage,
    settings: Settings,
    tone: Path,
    database_url: str,
) -> None:
    # The engine has finished; no progress report is left to raise the cancel, so the settlement must see the flag.
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10, webhook_url="https://hooks.example.com/x")
    ctx.storage = CancelDuringStore(storage, database_url, job_id, user)
    assert settings.outputs_bucket == "outputs"

    assert await run_job(ctx, job_id) == "canceled"

    assert ctx.storage.canceled
    job = await job_row(conn, job_id)
    assert job["status"] == "canceled" and job["outputs"] == []
    assert not list(_outputs_folder(storage, user, job_id).glob("*"))  # the stored outputs were dropped
    assert await _balances(conn, user) == (100, 0)
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    cursor = await conn.execute("SELECT event FROM webhook_deliveries WHERE job_id = %s", (job_id,))
    events = {row[0] for row in await cursor.fetchall()}
    assert "job.canceled" in events and "job.succeeded" not in events
    assert await ledger.invariant_violations(conn) == []


async def test_a_dead_attempt_is_reclaimed_and_a_live_one_left_alone(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    live = await make_job(conn, storage, settings, user, tone)
    dead = await make_job(conn, storage, settings, user, tone)
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = now(), heartbeat_at = now() WHERE id = %s",
        (live,),
    )
    stale = datetime.now(UTC) - timedelta(seconds=settings.heartbeat_timeout_seconds + 60)
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = %s, heartbeat_at = %s WHERE id = %s",
        (stale, stale, dead),
    )

    assert await run_job(ctx, live) == "skipped"
    assert (await job_row(conn, live))["attempts"] == 1
    assert await run_job(ctx, dead, dispatch_id="fc-retry") == "succeeded"
    job = await job_row(conn, dead)
    assert job["attempts"] == 2 and job["status"] == "succeeded"
    assert job["dispatch_id"] == "fc-retry"  # the execution that really ran it
    assert await ledger_kinds(conn, dead) == ["hold", "capture"]


async def test_a_retry_of_the_same_modal_call_takes_the_job_over_at_once(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    """A preempted container's input is retried under the same FunctionCall id: no waiting for staleness."""
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone)
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = 1, started_at = now(), heartbeat_at = now(),"
        " dispatch_id = 'fc-1' WHERE id = %s",
        (job_id,),
    )
    assert await run_job(ctx, job_id, dispatch_id="fc-other") == "skipped"
    assert await run_job(ctx, job_id, dispatch_id="fc-1") == "succeeded"
    job = await job_row(conn, job_id)
    assert (job["attempts"], job["status"]) == (2, "succeeded")
    assert await ledger_kinds(conn, job_id) == ["hold", "capture"]


async def test_a_reaped_attempt_cannot_overwrite_the_final_state(
    conn: psycopg.AsyncConnection,
    ctx: WorkerContext,
    storage: LocalStorage,
    settings: Settings,
    tone: Path,
    database_url: str,
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    engine = PacedEngine()
    ctx.engines[("enhance", "builtin")] = engine
    run = asyncio.create_task(run_job(ctx, job_id))
    await wait_until(lambda: asyncio.to_thread(engine.started.wait, 0), what="the engine to start")

    dispatcher = LocalDispatcher(settings, database_url)

    async def reaped() -> bool:
        # The reaper skips rows another transaction holds locked (SKIP LOCKED): a pass that meets the running
        # attempt's heartbeat mid-update leaves the job to the next pass, so ask again until a pass takes it.
        report = await reap(conn, dispatcher, settings, datetime.now(UTC) + timedelta(days=1))
        assert report.failed in ([], [job_id])
        return report.failed == [job_id]

    await wait_until(reaped, what="a reaper pass to fail the job")
    engine.release.set()
    assert await asyncio.wait_for(run, 30) == "lost"

    job = await job_row(conn, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "deadline_exceeded" and job["outputs"] == []
    # The lost attempt's files were removed: no job owns them.
    assert list(_outputs_folder(storage, user, job_id).glob("*")) == []
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    assert await _balances(conn, user) == (100, 0)
    await dispatcher.close()


class EarlyFileEngine(PacedEngine):
    """Finishes one output file first and announces it (a stem written), then runs on until released."""

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        first = out_dir / "first.txt"
        first.write_text("finished early")
        emit_partial(OutputFile("first.txt", first, "text/plain"))
        rest = super().run(input_path, params, out_dir, progress)
        return EngineResult([OutputFile("first.txt", first, "text/plain"), *rest.outputs], rest.metrics)


class FailingOnceStorage(LocalStorage):
    """Local storage whose first upload fails, as a storage outage would."""

    failed = False

    async def put_file(self, bucket: str, key: str, path: Path, content_type: str) -> int:
        if not self.failed:
            self.failed = True
            raise OSError("storage unavailable")
        return await super().put_file(bucket, key, path, content_type)


async def _partial_files(conn: psycopg.AsyncConnection, job_id: UUID) -> list[str]:
    cursor = await conn.execute("SELECT data->>'name' FROM job_outputs WHERE job_id = %s AND kind = 'file'", (job_id,))
    return [row[0] for row in await cursor.fetchall()]


async def test_a_file_announced_early_is_stored_while_running_and_dropped_when_canceled(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    engine = EarlyFileEngine()
    ctx.engines[("enhance", "builtin")] = engine
    run = asyncio.create_task(run_job(ctx, job_id))

    async def published() -> bool:
        return await _partial_files(conn, job_id) == ["first.txt"]

    await wait_until(published, what="the early file to be published")
    stored = _outputs_folder(storage, user, job_id) / "first.txt"
    assert stored.read_text() == "finished early" and (await job_row(conn, job_id))["status"] == "running"
    await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = %s", (job_id,))
    assert await asyncio.wait_for(run, 30) == "canceled"
    assert not stored.exists()  # a canceled job keeps no outputs, early ones included


async def test_a_failed_early_upload_keeps_the_heartbeat_and_the_file_is_stored_at_the_end(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, settings: Settings, tone: Path
) -> None:
    storage = FailingOnceStorage(settings.state_dir / "files", "test-signing-key", "http://testserver")
    ctx.storage = storage
    storage.failed = True  # the input upload below succeeds; the worker's first upload (the early file) fails
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    storage.failed = False
    engine = EarlyFileEngine()
    ctx.engines[("enhance", "builtin")] = engine
    run = asyncio.create_task(run_job(ctx, job_id))

    async def beating() -> bool:
        job = await job_row(conn, job_id)
        return storage.failed and job["status"] == "running" and job["progress"] > 0

    # The engine runs until released (at most ~30 s): progress recorded while it runs is a heartbeat after the failure.
    await wait_until(beating, timeout=20, what="heartbeats after the failed upload")
    engine.release.set()
    assert await asyncio.wait_for(run, 30) == "succeeded"
    job = await job_row(conn, job_id)
    assert [item["name"] for item in job["outputs"]] == ["first.txt", "result.txt"]
    assert await _partial_files(conn, job_id) == []  # never announced: its upload failed
    assert (_outputs_folder(storage, user, job_id) / "first.txt").read_text() == "finished early"
