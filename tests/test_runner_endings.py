"""How an attempt ends when it is interrupted or keeps coming back, through the real runner on real Postgres
(issue 10, items 13 and 17)."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pydantic import BaseModel

from api.background.reaper import reap
from api.dispatchers.modal import ModalDispatcher
from api.settings import Settings
from api.storage import LocalStorage
from api.worker.runner import WorkerContext, run_job
from db import ledger
from inference.base import EngineResult, OutputFile, ProgressFn
from tests.jobs_support import job_row, ledger_kinds, make_job, make_user, write_tone
from tests.test_modal_dispatch import NO_OUTPUT_YET, FakeFunctionCall, FunctionCalls


class Interrupted(BaseException):
    """Stands for modal's InputCancellation (a BaseException, modal/exception.py)."""


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
    return write_tone(tmp_path / "tone.wav", seconds=0.5)


class InterruptedEngine:
    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        progress(0.1, "working")
        raise Interrupted("input cancelled")


async def test_a_base_exception_inside_a_run_settles_the_job_and_propagates(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    ctx.engines[("enhance", "builtin")] = InterruptedEngine()

    with pytest.raises(Interrupted):
        await run_job(ctx, job_id)

    job = await job_row(conn, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_interrupted"
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    assert job["input_ref"] is None  # final: the input went too
    assert await ledger.invariant_violations(conn) == []


class HeldEngine:
    """Reports progress until told to stop; records whether it was still running after the runner returned."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        self.started.set()
        try:
            for _ in range(1000):  # ~5 s: long enough to be cancelled in, short enough when nothing stops it
                progress(0.5, "working")
                threading.Event().wait(0.005)
            raise AssertionError("the engine was never stopped")
        finally:
            self.stopped.set()


async def test_a_cancelled_run_stops_its_engine_thread_before_it_returns(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    """The task running a job is cancelled from outside (what a Modal worker does after InputCancellation): the
    job is settled and the engine thread has let go of the device by the time the runner returns."""
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    engine = HeldEngine()
    ctx.engines[("enhance", "builtin")] = engine
    run = asyncio.create_task(run_job(ctx, job_id))
    await asyncio.to_thread(engine.started.wait, 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert engine.stopped.is_set()
    job = await job_row(conn, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_interrupted"
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]


async def test_attempts_are_capped_in_the_claim(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    """A job that keeps killing its container (say out of memory) is retried by Modal with backoff, each retry
    re-claiming it under the same call id: the claim past `max_attempts` fails it and releases the hold."""
    assert settings.max_attempts == 3
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10, webhook_url="https://hooks.example.com/x")
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = %s, started_at = now(), heartbeat_at = now(),"
        " dispatch_id = 'fc-1' WHERE id = %s",
        (settings.max_attempts, job_id),
    )

    assert await run_job(ctx, job_id, dispatch_id="fc-1") == "failed"

    job = await job_row(conn, job_id)
    assert job["error"]["code"] == "too_many_attempts"
    assert "no credits were charged" in job["error"]["message"]
    assert job["attempts"] == settings.max_attempts
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
    cursor = await conn.execute("SELECT event FROM webhook_deliveries WHERE job_id = %s", (job_id,))
    assert "job.failed" in {row[0] for row in await cursor.fetchall()}


async def test_the_last_allowed_attempt_still_runs(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    await conn.execute(
        "UPDATE jobs SET status = 'running', attempts = %s, started_at = now(), heartbeat_at = now(),"
        " dispatch_id = 'fc-1' WHERE id = %s",
        (settings.max_attempts - 1, job_id),
    )
    assert await run_job(ctx, job_id, dispatch_id="fc-1") == "succeeded"
    assert (await job_row(conn, job_id))["attempts"] == settings.max_attempts


class GatedEngine:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def run(self, input_path: Path | None, params: BaseModel, out_dir: Path, progress: ProgressFn) -> EngineResult:
        self.started.set()
        while not self.release.wait(0.01):
            progress(0.5, "working")
        out = out_dir / "result.txt"
        out.write_text("done")
        return EngineResult([OutputFile("result.txt", out, "text/plain")], {})


async def test_queue_time_does_not_eat_a_claimed_attempts_deadline(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    """A job that waited in the queue almost to its deadline gets a full attempt once claimed: the reaper cannot
    fail it while the attempt is still inside its own time limit (Modal's timeout)."""
    user = await make_user(conn)
    soon = datetime.now(UTC) + timedelta(seconds=5)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10, deadline=soon)
    engine = GatedEngine()
    ctx.engines[("enhance", "builtin")] = engine
    run = asyncio.create_task(run_job(ctx, job_id, dispatch_id="fc-1"))
    await asyncio.to_thread(engine.started.wait, 30)

    try:
        deadline = (await job_row(conn, job_id))["deadline_at"]
        assert deadline >= datetime.now(UTC) + timedelta(seconds=settings.job_deadline_seconds - 60)
        calls = FunctionCalls({"fc-1": FakeFunctionCall(NO_OUTPUT_YET)})
        later = datetime.now(UTC) + timedelta(seconds=60)  # past the submit deadline, heartbeat still fresh
        report = await reap(conn, ModalDispatcher({}, calls.from_id), settings, later)
        assert report.failed == []
    finally:
        engine.release.set()
    assert await asyncio.wait_for(run, 30) == "succeeded"
    assert await ledger_kinds(conn, job_id) == ["hold", "capture"]


async def test_weights_missing_at_run_time_fail_as_not_installed_not_as_internal_error(
    conn: psycopg.AsyncConnection, ctx: WorkerContext, storage: LocalStorage, settings: Settings, tone: Path
) -> None:
    """The submit refuses models that are not installed; weights removed after it fail the job with a code that does
    not invite a retry that cannot succeed (item 20)."""
    ctx.settings = settings.model_copy(update={"engines": "real"})  # an empty weights folder
    user = await make_user(conn)
    job_id = await make_job(conn, storage, settings, user, tone, cost=10)
    await conn.execute("UPDATE jobs SET model_key = 'deepfilternet3' WHERE id = %s", (job_id,))

    assert await run_job(ctx, job_id) == "failed"

    job = await job_row(conn, job_id)
    assert job["error"]["code"] == "model_not_installed" and "deepfilternet3" in job["error"]["message"]
    assert await ledger_kinds(conn, job_id) == ["hold", "release"]
