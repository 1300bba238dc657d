"""Step 4 of 5: run. The one job runner every worker uses (a local worker process or a Modal function): claim,
run, store, then settle through `api.jobs.settle`.

before: a dispatcher started this execution (`api.jobs.dispatch`). after: `api.jobs.settle.finish_attempt`.

Idempotent under duplicate delivery: the claim is a guarded UPDATE (queued -> running, or a running job whose
heartbeat went stale), every later write is guarded on `status = 'running'` and this attempt's number, outputs go
to deterministic keys (a retry overwrites, never duplicates) and the ledger applies a capture or release once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection
from pydantic import BaseModel

from api.jobs.outbox import enqueue_job_event
from api.jobs.request import licence_refusal, lock_entries, model_enabled
from api.jobs.settle import (
    CANCELED_AT_DEADLINE,
    ENGINE_TIMEOUT,
    INTERNAL_ERROR,
    WORKER_INTERRUPTED,
    fail_out_of_attempts,
    finish_attempt,
    requeue_preempted,
)
from api.protocols import Storage
from api.settings import Settings
from db import jobs as db_jobs
from db.jobs import JobStatus
from inference import audio
from inference.base import Engine, EngineError, EngineResult, OutputFile, Partial, partial_outputs
from inference.mixdown import track_input_name
from inference.params import TASK_PARAMS, MixdownParams
from inference.registry import TASKS

log = logging.getLogger("studio.runner")

# How long an interrupted run waits for its engine thread to reach its next progress report and stop. Modal
# SIGKILLs a preempted container 30 s after its SIGINT: the wait plus handing the job back must fit well inside.
ENGINE_STOP_SECONDS = 10.0


class JobCanceled(Exception):
    """Raised inside the engine thread at its next progress report once the user asked to cancel."""


class JobInterrupted(Exception):
    """Raised inside the engine thread at its next progress report once the worker was told to stop (on Modal, the
    input was cancelled: see modal_app.py `_JobWorker.run`)."""


class JobPreempted(Exception):
    """Raised inside the engine thread at its next progress report once the container is being preempted (on Modal,
    SIGINT: see modal_app.py `_JobWorker.run`). The job is handed back for a retry, not settled."""


class JobLost(Exception):
    """This attempt no longer owns the job (the reaper failed it, or another attempt re-claimed it)."""


def build_engine(settings: Settings, task: str, model_key: str, *, device: str | None = None) -> Engine:
    """Load the engine for (task, model_key): the slow part, done once per worker. `device` is where a GPU task's
    engine loads (inference/base.py `DeviceEngine`); None lets it pick. CPU tasks' engines take no device."""
    if settings.engines == "builtin":
        from inference.builtin import build_engine as builtin

        return builtin(model_key, settings.weights_path, task=task)
    from inference.registry import load_engine

    options: dict[str, Any] = {}
    if device is not None and TASKS[task].gpu:
        options["device"] = device
    return load_engine(task, model_key, settings.weights_path, **options)


@dataclass
class WorkerContext:
    """What a worker keeps across jobs: configuration, how to reach Postgres, storage, and its loaded engines."""

    settings: Settings
    connect: Callable[[], Awaitable[AsyncConnection]]
    storage: Storage
    engines: dict[tuple[str, str], Engine] = field(default_factory=dict)
    heartbeat_interval: float = 0.5  # seconds between progress/heartbeat writes (the throttle)
    device: str | None = None  # where GPU tasks' engines built on demand load; None lets each engine pick

    def engine(self, task: str, model_key: str) -> Engine:
        # The licence gate again (the submit checked it), preloaded engines included: a job queued before the
        # operator changed the setting does not run.
        entry = lock_entries().get(model_key)
        if entry is not None and not model_enabled(entry, self.settings):
            raise EngineError(licence_refusal(entry), code="model_not_enabled")
        key = (task, model_key)
        if key not in self.engines:
            self.engines[key] = build_engine(self.settings, task, model_key, device=self.device)
        return self.engines[key]


class _Progress:
    """Shared between the engine thread (reports, partial outputs) and the heartbeat task (writes, reads
    cancel_requested)."""

    def __init__(self, interrupted: threading.Event | None = None, preempted: threading.Event | None = None) -> None:
        self.interrupted = interrupted
        self.preempted = preempted
        self.partials: collections.deque[Partial] = collections.deque()  # emitted, not yet published
        self.uploaded: dict[str, dict[str, Any]] = {}  # output files stored, by name
        self.publish_last = False  # set once the engine succeeded: the heartbeat's last beat publishes what is left
        self.fraction = 0.0
        self.stage: str | None = "running"
        self.canceled = threading.Event()
        self.past_deadline = False  # set with `canceled` when the job's own deadline (`deadline_s`) is the reason
        self.lost = threading.Event()
        self.done = asyncio.Event()  # set by the runner: the heartbeat writes no more
        self.engine_idle = threading.Event()  # cleared while the engine thread runs
        self.engine_idle.set()

    def report(self, fraction: float, stage: str | None = None) -> None:
        if self.lost.is_set():
            raise JobLost()
        if self.canceled.is_set():
            raise JobCanceled()
        if self.interrupted is not None and self.interrupted.is_set():
            raise JobInterrupted()
        if self.preempted is not None and self.preempted.is_set():
            raise JobPreempted()
        self.fraction = min(1.0, max(0.0, float(fraction)))
        if stage:
            self.stage = stage[:64]


async def claim(
    conn: AsyncConnection, job_id: UUID, settings: Settings, dispatch_id: str | None
) -> dict[str, Any] | None:
    async with conn.transaction():
        job = await db_jobs.claim(
            conn,
            job_id,
            settings.heartbeat_timeout_seconds,
            dispatch_id,
            max_attempts=settings.max_attempts,
            deadline_seconds=settings.job_deadline_seconds,
        )
        if job is not None and job["attempts"] == 1:
            await enqueue_job_event(conn, job_id, "job.started")
    return job


async def _store_output(ctx: WorkerContext, job: dict[str, Any], output: OutputFile) -> dict[str, Any]:
    """Upload one output file to its deterministic key (a retry overwrites it); its record as jobs.outputs has it."""
    key = f"{job['user_id']}/{job['id']}/{output.name}"
    size = await ctx.storage.put_file(ctx.settings.outputs_bucket, key, output.path, output.content_type)
    return {
        "name": output.name,
        "ref": key,
        "content_type": output.content_type,
        "bytes": size,
        "metadata": output.metadata,
    }


async def _publish_partials(
    ctx: WorkerContext, conn: AsyncConnection, job: dict[str, Any], progress: _Progress
) -> None:
    """Store what the engine emitted since the last beat: files are uploaded first, then every item becomes a
    job_outputs row (announced to SSE streams) and one throttled `job.output` webhook, in one transaction."""
    items: list[tuple[str, dict[str, Any]]] = []
    while progress.partials:
        partial = progress.partials.popleft()
        if isinstance(partial, OutputFile):
            try:
                record = progress.uploaded.get(partial.name) or await _store_output(ctx, job, partial)
            except Exception:
                # Best effort: the heartbeat must go on (or the job would look dead), and the file is uploaded
                # again with the job's outputs when it ends.
                log.warning("early upload of %s for job %s failed", partial.name, job["id"], exc_info=True)
                continue
            progress.uploaded[partial.name] = record
            items.append(("file", record))
        else:
            items.append(("segment", partial))
    if not items:
        return
    async with conn.transaction():
        for kind, data in items:
            if await db_jobs.add_partial_output(conn, job["id"], job["attempts"], kind, data) is None:
                return  # no longer this attempt's job: the heartbeat notices and stops the engine
        await enqueue_job_event(conn, job["id"], "job.output")  # the outbox throttles these


async def _heartbeat(
    ctx: WorkerContext, conn: AsyncConnection, job: dict[str, Any], progress: _Progress, interval: float
) -> None:
    job_id, attempt = job["id"], job["attempts"]
    sent: tuple[float, str | None] | None = None
    while True:
        await _publish_partials(ctx, conn, job, progress)
        snapshot = (progress.fraction, progress.stage)
        async with conn.transaction():
            answer = await db_jobs.heartbeat(conn, job_id, attempt, snapshot[0], snapshot[1])
            if answer is not None and sent is not None and snapshot[0] > sent[0]:
                await enqueue_job_event(conn, job_id, "job.progress")  # the outbox throttles these
        if answer is None:
            progress.lost.set()
            return
        cancel_requested, past_deadline = answer
        if cancel_requested or past_deadline:
            # The worker ends its job at its own deadline itself (Modal's reaper Cron runs only every 2 minutes);
            # a reaper pass that gets there first settles it the same way, and this attempt then finds it lost.
            progress.past_deadline = past_deadline and not cancel_requested
            progress.canceled.set()
            return
        sent = snapshot
        try:
            await asyncio.wait_for(progress.done.wait(), interval)
        except TimeoutError:
            continue
        if progress.publish_last:
            await _publish_partials(ctx, conn, job, progress)  # what the engine emitted in its last moments
        return


async def _delete_input(ctx: WorkerContext, conn: AsyncConnection, job_id: UUID) -> None:
    """Inputs go as soon as the job is final (SPEC section 3); the retention sweep catches any we miss."""
    refs = await db_jobs.final_input_refs(conn, job_id)
    if not refs:
        return
    await ctx.storage.delete(ctx.settings.inputs_bucket, refs)
    await db_jobs.clear_input_ref(conn, job_id, refs[0])


async def _fetch_tracks(ctx: WorkerContext, user_id: UUID, params: MixdownParams, workdir: Path) -> dict[str, Path]:
    """Download each track's output from the outputs bucket. Only the job owner's own succeeded jobs' outputs that
    are still stored are found: anything else (another user's job, an output past retention) fails the job, safely
    worded, before the engine runs."""
    async with await ctx.connect() as conn:
        refs = await db_jobs.live_output_refs(conn, user_id, sorted({track.job_id for track in params.tracks}))
    paths: dict[str, Path] = {}
    for index, track in enumerate(params.tracks):
        ref = refs.get((track.job_id, track.output))
        if ref is None:
            raise EngineError(
                f"track {index + 1}: {track.output} of job {track.job_id} is not available (past retention, or "
                "not a finished job of yours)",
                code="track_unavailable",
            )
        name = track_input_name(index)
        dest = workdir / f"{name}{PurePosixPath(ref).suffix}"
        paths[name] = await ctx.storage.get_file(ctx.settings.outputs_bucket, ref, dest)
    return paths


def _run_engine(
    engine: Engine,
    input_path: Path | None,
    params: BaseModel,
    out_dir: Path,
    progress: _Progress,
    extra: dict[str, dict[str, Path]],
) -> EngineResult:
    progress.engine_idle.clear()
    try:
        return engine.run(input_path, params, out_dir, progress.report, **extra)
    finally:
        progress.engine_idle.set()


async def _execute(
    ctx: WorkerContext, job: dict[str, Any], workdir: Path, progress: _Progress, outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Download, run, upload. Appends each stored output to `outputs` as it goes (so a failed upload's siblings
    can be cleaned up) and returns the metrics to record."""
    settings = ctx.settings
    input_path: Path | None = None
    if job["input_ref"]:
        suffix = PurePosixPath(job["input_ref"]).suffix
        input_path = await ctx.storage.get_file(settings.inputs_bucket, job["input_ref"], workdir / f"input{suffix}")
    extra_paths: dict[str, Path] = {}
    for name, ref in (job.get("extra_inputs") or {}).items():
        suffix = PurePosixPath(ref).suffix
        extra_paths[name] = await ctx.storage.get_file(settings.inputs_bucket, ref, workdir / f"{name}{suffix}")
    params = TASK_PARAMS[job["task"]].model_validate(job["params"])
    if isinstance(params, MixdownParams):
        extra_paths = await _fetch_tracks(ctx, job["user_id"], params, workdir)
    try:
        engine = await asyncio.to_thread(ctx.engine, job["task"], job["model_key"])
    except FileNotFoundError as exc:
        # Weights removed after the submit's check (which refuses models that are not installed): say so rather
        # than report an internal error that a retry cannot fix.
        log.error("weights of %s missing: %s", job["model_key"], exc)
        raise EngineError(
            f"the weights of {job['model_key']} are not installed on this deployment", code="model_not_installed"
        ) from exc
    out_dir = workdir / "out"
    out_dir.mkdir()
    started = time.monotonic()
    # Engines decode through inference.audio, which stops past these: the deployment's limit, and the seconds the
    # submit's probe priced (plus slack), so an input that decodes to more than it was priced on fails here.
    # One limit covers every file the engine decodes, so a second input (probed, not priced) widens it to its own
    # probed length; the main input is still held to the deployment's cap.
    input_meta = job["input_meta"] or {}
    probed = [input_meta.get("duration_s")] + [
        meta.get("duration_s") for meta in (input_meta.get("extra_inputs") or {}).values()
    ]
    known = [float(seconds) for seconds in probed if seconds is not None]
    limits = audio.DecodeLimits.for_job(
        settings.max_duration_seconds,
        max(known) if known else None,
        settings.max_audio_channels,
        settings.max_sample_rate,
    )
    # Engines of tasks with second inputs take them as a keyword (inference.base.MultiInputEngine); others never see it.
    # A mixdown's tracks come the same way, one per track (inference.mixdown.track_input_name).
    spec = TASKS[job["task"]]
    extra = {"extra_inputs": extra_paths} if spec.extra_inputs or spec.input_kind == "tracks" else {}
    with audio.decode_limits(limits), partial_outputs(progress.partials.append):
        result: EngineResult = await asyncio.to_thread(
            _run_engine, engine, input_path, params, out_dir, progress, extra
        )
    compute_seconds = time.monotonic() - started
    for output in result.outputs:
        record = progress.uploaded.get(output.name) or await _store_output(ctx, job, output)
        progress.uploaded[output.name] = record
        outputs.append(record)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.setdefault("audio_seconds", (job["input_meta"] or {}).get("duration_s"))
    metrics["compute_seconds"] = round(compute_seconds, 3)
    return metrics


async def run_job(
    ctx: WorkerContext,
    job_id: UUID,
    *,
    dispatch_id: str | None = None,
    interrupted: threading.Event | None = None,
    preempted: threading.Event | None = None,
) -> str:
    """Run one job to a final state. Returns the state this call wrote, or "skipped" (not ours to run: final,
    canceled, or running under another live attempt), "lost" (reaped or re-claimed while we ran) or "requeued"
    (preempted: handed back for a retry).

    `dispatch_id` names the execution running this attempt (Modal's FunctionCall id): it is recorded at the
    claim so the reaper asks about the execution that really holds the job. Setting `interrupted` (from any thread,
    a signal handler included) stops the engine at its next progress report and fails the job `worker_interrupted`;
    setting `preempted` stops it the same way and hands the job back (queued, its hold kept, nothing charged) for the
    next claim, which takes it at once.
    """
    async with await ctx.connect() as conn:
        job = await claim(conn, job_id, ctx.settings, dispatch_id)
        if job is None:
            settings = ctx.settings
            if await fail_out_of_attempts(
                conn, job_id, settings.max_attempts, settings.heartbeat_timeout_seconds, dispatch_id
            ):
                await _delete_input(ctx, conn, job_id)
                return str(JobStatus.FAILED)
            return "skipped"
        return await run_claimed(ctx, conn, job, interrupted=interrupted, preempted=preempted)


def attempt_time_limit(job: dict[str, Any], settings: Settings) -> float:
    """Seconds an attempt may run from its claim before its engine counts as hung: the seconds the job was priced
    on times its task's worst real-time factor, never under the deployment's floor."""
    spec = TASKS[job["task"]]
    params = TASK_PARAMS[job["task"]].model_validate(job["params"])
    seconds = (job["input_meta"] or {}).get("duration_s")
    # An audio job always has its probed duration; were it missing, the deployment's cap is what it could be.
    priced = spec.priced_seconds(params, float(seconds) if seconds is not None else settings.max_duration_seconds)
    return max(settings.engine_timeout_floor_seconds, priced * spec.worst_realtime_factor)


async def fail_timed_out(ctx: WorkerContext, job_id: UUID, attempt: int) -> bool:
    """Settle an attempt whose worker was killed past `attempt_time_limit`: failed `engine_timeout`, hold released,
    input deleted. False when the attempt had already ended (nothing is written)."""
    async with await ctx.connect() as conn:
        status = await finish_attempt(
            conn,
            job_id,
            attempt,
            JobStatus.FAILED,
            retention_seconds=ctx.settings.output_retention_seconds,
            error=ENGINE_TIMEOUT,
        )
        if status is None:
            return False
        await _delete_input(ctx, conn, job_id)
    return True


async def run_claimed(
    ctx: WorkerContext,
    conn: AsyncConnection,
    job: dict[str, Any],
    *,
    interrupted: threading.Event | None = None,
    preempted: threading.Event | None = None,
) -> str:
    """Run a job this attempt has claimed (a row `claim` returned) to a final state, on `conn`: as `run_job`."""
    job_id: UUID = job["id"]
    attempt = job["attempts"]
    progress = _Progress(interrupted, preempted)
    heartbeat = asyncio.create_task(_heartbeat(ctx, conn, job, progress, ctx.heartbeat_interval))
    outputs: list[dict[str, Any]] = []
    retention = ctx.settings.output_retention_seconds
    status: JobStatus | None
    interruption: BaseException | None = None
    requeued = False
    try:
        if preempted is not None and preempted.is_set():
            raise JobPreempted()  # between the claim and here: nothing ran yet
        with tempfile.TemporaryDirectory(prefix="studio-job-") as tmp:
            metrics = await _execute(ctx, job, Path(tmp), progress, outputs)
            progress.publish_last = True
            await _stop(heartbeat, progress)  # the last partial outputs are published while their files exist
        status = await finish_attempt(
            conn,
            job_id,
            attempt,
            JobStatus.SUCCEEDED,
            retention_seconds=retention,
            outputs=outputs,
            metrics=metrics,
        )
    except JobCanceled:
        await _stop(heartbeat, progress)
        error = CANCELED_AT_DEADLINE if progress.past_deadline else None
        status = await finish_attempt(
            conn, job_id, attempt, JobStatus.CANCELED, retention_seconds=retention, error=error
        )
    except JobLost:
        await _stop(heartbeat, progress)
        status = None
    except JobInterrupted:
        await _stop(heartbeat, progress)
        status = await finish_attempt(
            conn, job_id, attempt, JobStatus.FAILED, retention_seconds=retention, error=WORKER_INTERRUPTED
        )
    except JobPreempted:
        await _stop(heartbeat, progress)
        status, requeued = None, await requeue_preempted(conn, job_id, attempt)
    except EngineError as exc:
        await _stop(heartbeat, progress)
        error = {"code": exc.code, "message": str(exc)}
        status = await finish_attempt(conn, job_id, attempt, JobStatus.FAILED, retention_seconds=retention, error=error)
    except Exception:
        log.exception("job %s failed unexpectedly", job_id)
        await _stop(heartbeat, progress)
        status = await finish_attempt(
            conn, job_id, attempt, JobStatus.FAILED, retention_seconds=retention, error=INTERNAL_ERROR
        )
    except BaseException as exc:
        # Not an Exception: modal's InputCancellation (modal/exception.py; raised in a sync method's main thread
        # when its FunctionCall is cancelled, modal/_container_entrypoint.py), KeyboardInterrupt (SIGINT: Modal's
        # preemption where no handler of ours caught it, Ctrl-C locally), the task being cancelled, or SystemExit.
        # Settle (or hand back) before it propagates, or the hold would wait for the reaper; and stop the engine
        # thread first, or it would keep the device into the next job.
        log.warning("job %s interrupted by %r", job_id, exc)
        interruption = exc
        abandoned = preempted is not None and preempted.is_set()  # the engine already had its time to stop
        progress.canceled.set()  # the engine thread raises at its next progress report
        if not abandoned:
            await asyncio.to_thread(progress.engine_idle.wait, ENGINE_STOP_SECONDS)
        await _stop(heartbeat, progress)
        if isinstance(exc, KeyboardInterrupt) or abandoned:
            status, requeued = None, await requeue_preempted(conn, job_id, attempt)
        else:
            status = await finish_attempt(
                conn, job_id, attempt, JobStatus.FAILED, retention_seconds=retention, error=WORKER_INTERRUPTED
            )
    stored = {item["ref"] for item in outputs} | {item["ref"] for item in progress.uploaded.values()}
    if status != JobStatus.SUCCEEDED and stored:
        await _drop_orphans(ctx, conn, job_id, sorted(stored))
    await _delete_input(ctx, conn, job_id)  # only a final job's: a requeued one keeps its input for the retry
    if interruption is not None:
        raise interruption
    if requeued:
        return "requeued"
    return str(status) if status else "lost"


async def _stop(heartbeat: asyncio.Task[None], progress: _Progress) -> None:
    # A clean stop rather than task.cancel(): cancelling mid-query would leave the shared connection in doubt.
    progress.done.set()
    try:
        await heartbeat
    except BaseException:
        if not heartbeat.done() or heartbeat.cancelled():
            raise  # this task itself is being cancelled
        # The heartbeat's own failure (an interruption may land in its frames too). Without heartbeats the reaper
        # would eventually fail the job; the settlement below decides first.
        log.exception("heartbeat of a job failed")


async def _drop_orphans(ctx: WorkerContext, conn: AsyncConnection, job_id: UUID, keys: list[str]) -> None:
    # Another attempt may have succeeded with the same deterministic keys: its files are the job's outputs.
    if await db_jobs.status_of(conn, job_id) != JobStatus.SUCCEEDED:
        await ctx.storage.delete(ctx.settings.outputs_bucket, keys)
