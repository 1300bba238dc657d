"""Step 2 of 5: submit. Input -> price -> store -> ONE transaction: the job row and its credit hold; then dispatch.

before: `api.jobs.request` validated the body. after: `api.jobs.dispatch` starts it (or leaves it queued).

A submit either creates the job, its hold and its dispatch, or answers an error and leaves nothing behind
(SPEC section 4): the input is stored under the new job id before the transaction and deleted on any failure
before the commit; a refused dispatch fails the job and releases its hold (`api.jobs.settle.fail_dispatch`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from psycopg import AsyncConnection

from api.errors import NO_RETRY, Problem
from api.jobs import idempotency, uploads
from api.jobs.dispatch import DispatchError, dispatch_job
from api.jobs.inputs import FetchPolicy, ProbedInput, ReceivedInput, fetch_url, probe_input
from api.jobs.pricing import price
from api.jobs.request import JobRequest, check_input_fits
from api.jobs.view import job_resource
from api.state import AppState
from db import api_keys as db_api_keys
from db import jobs as db_jobs
from db import ledger
from db import uploads as db_uploads
from inference.mixdown import track_input_name
from inference.params import MixdownParams
from inference.registry import TASKS

log = logging.getLogger("studio.jobs")

HOLD_MARGIN = timedelta(hours=1)  # holds outlive the job deadline so the reaper, not the hold sweeper, settles them


@contextmanager
def naming_job(job_id: UUID) -> Iterator[None]:
    """Around the work after a job was created: any error answer names the job (`job_id`, `Location`) and says
    `x-should-retry: false`, unless the Problem says otherwise. A blind resubmit would create and charge another job
    (the OpenAI SDK retries every 5xx twice, without an Idempotency-Key); the client follows this one instead."""
    location = f"/v1/jobs/{job_id}"
    try:
        yield
    except Problem as problem:
        problem.headers = {**NO_RETRY, "Location": location, **problem.headers}
        problem.extra.setdefault("job_id", str(job_id))
        raise
    except Exception as exc:
        log.exception("job %s: the request failed after the job was created", job_id)
        raise Problem(
            500,
            "internal_error",
            "Internal server error",
            f"Job {job_id} was created, then this request failed on our side. Follow the job at GET {location} "
            "instead of submitting again.",
            headers={**NO_RETRY, "Location": location},
            job_id=str(job_id),
        ) from exc


async def obtain_input(
    state: AppState, user_id: UUID, job: JobRequest, workdir: Path
) -> tuple[ReceivedInput, ProbedInput]:
    """The main input, fetched if it is a URL or read from storage if it is a resumable upload, then probed within the
    deployment's limits."""
    upload = job.upload
    if job.input_upload is not None:
        upload = await uploads.take(state, user_id, job.input_upload, workdir)
    return await _obtain(state, user_id, upload, job.input_url, workdir)


async def obtain_extra_inputs(
    state: AppState, user_id: UUID, job: JobRequest, workdir: Path
) -> dict[str, tuple[ReceivedInput, ProbedInput]]:
    """Second inputs (e.g. `reference`), fetched through the same guard and probed with the same caps as the main
    input. They are not priced: only the main input's duration is."""
    names = sorted({*job.extra_uploads, *job.extra_urls})
    return {
        name: await _obtain(state, user_id, job.extra_uploads.get(name), job.extra_urls.get(name), workdir)
        for name in names
    }


async def _obtain(
    state: AppState, user_id: UUID, upload: ReceivedInput | None, url: str | None, workdir: Path
) -> tuple[ReceivedInput, ProbedInput]:
    settings = state.settings
    received = upload
    if received is None:
        assert url is not None
        insecure = settings.input_url_allow_insecure
        policy = FetchPolicy(allow_http=insecure, allow_private=insecure)
        # Bounded per user: one user's slow servers (or slow DNS) hold that user's downloads, not everyone's.
        with state.url_fetches.held(user_id, settings.max_url_fetches_per_user):
            received = await fetch_url(
                url,
                workdir,
                max_bytes=settings.max_upload_bytes,
                timeout=settings.input_fetch_timeout_seconds,
                policy=policy,
            )
    probed = await probe_input(
        received.path,
        settings.max_duration_seconds,
        max_channels=settings.max_audio_channels,
        max_sample_rate=settings.max_sample_rate,
    )
    return received, probed


def _input_meta(
    received: ReceivedInput, probed: ProbedInput, input_url: str | None, input_upload: UUID | None = None
) -> dict[str, Any]:
    info = probed.info
    meta: dict[str, Any] = {
        "source": "url" if input_url else "resumable_upload" if input_upload else "upload",
        "filename": received.filename,
        "bytes": received.bytes,
        "sha256": received.sha256,
        "content_type": probed.content_type,
        "duration_s": round(info.duration_s, 3),
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "codec": info.codec,
        "container": info.container,
    }
    if input_url:
        meta["url"] = input_url
    if input_upload:
        meta["upload_id"] = str(input_upload)
    return meta


def _tracks_meta(params: MixdownParams, max_seconds: float) -> dict[str, Any]:
    """A mixdown's inputs as the worker limits its decoding by them: the mix's length, and how far into each
    track's output it reads. Past the deployment's cap either way: 422 before anything is held."""
    seconds = params.output_seconds()
    reads = {track_input_name(i): {"duration_s": track.end_ms / 1000} for i, track in enumerate(params.tracks)}
    if max([seconds] + [read["duration_s"] for read in reads.values()]) > max_seconds:
        raise Problem(
            422,
            "audio_too_long",
            "The mix is too long",
            f"A mix, and the part of each track it reads, may be at most {max_seconds:g} s.",
            max_duration_s=max_seconds,
        )
    return {"source": "tracks", "duration_s": round(seconds, 3), "extra_inputs": reads}


def fingerprint(job: JobRequest) -> str:
    request: dict[str, Any] = {
        "task": job.task,
        "params": job.params.model_dump(mode="json"),
        "input_sha256": job.upload.sha256 if job.upload else None,
        "input_url": job.input_url,
        "webhook_url": job.webhook_url,
        "webhook_events": job.webhook_events,
    }
    extra = {name: {"sha256": upload.sha256} for name, upload in job.extra_uploads.items()}
    extra |= {name: {"url": url} for name, url in job.extra_urls.items()}
    if extra:  # only then: requests without second inputs keep the fingerprints stored before they existed
        request["extra_inputs"] = extra
    if job.deadline_s is not None:  # likewise
        request["deadline_s"] = job.deadline_s
    if job.input_upload is not None:  # likewise
        request["input_upload"] = str(job.input_upload)
    return idempotency.request_hash(request)


def cap_periods(now: datetime) -> tuple[datetime, datetime]:
    """The starts of the UTC day and the UTC calendar month that `now` falls in: the caps' periods."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day, day.replace(day=1)


async def hold_for_job(
    conn: AsyncConnection,
    user_id: UUID,
    job_id: UUID,
    task: str,
    cost: int,
    expires_at: datetime,
    *,
    api_key_id: UUID | None,
    now: datetime,
) -> None:
    """A submit's hold, in the transaction that creates its job. Through an API key, the key's allowed tasks and
    spend caps come first, with the key's row locked: racing submits through one key decide one at a time, each
    counting the holds the one before committed, so together they cannot pass a cap. Raises a Problem (403 for a
    task the key may not submit, 402 naming the cap), or InsufficientCredits; the caller's rollback leaves nothing."""
    if api_key_id is not None:
        caps = await db_api_keys.lock_caps(conn, api_key_id)
        if caps is not None:
            if caps.allowed_tasks is not None and task not in caps.allowed_tasks:
                raise Problem(
                    403,
                    "task_not_allowed_for_key",
                    "This API key may not submit this task",
                    f"The key allows {', '.join(caps.allowed_tasks)}; nothing was charged.",
                    allowed_tasks=caps.allowed_tasks,
                )
            day_start, month_start = cap_periods(now)
            spent = await ledger.key_spend(conn, api_key_id, day_start, month_start)
            for code, period, cap, used in (
                ("key_daily_cap", "day (UTC)", caps.daily_credit_cap, spent.day),
                ("key_monthly_cap", "month (UTC)", caps.monthly_credit_cap, spent.month),
            ):
                if cap is not None and used + cost > cap:
                    raise Problem(
                        402,
                        code,
                        "This API key's spend cap would be passed",
                        f"This job costs {cost} credits; the key has {used} of its {cap} credits for this {period}"
                        " held or spent. Nothing was charged.",
                        cap=cap,
                        spent=used,
                        required=cost,
                    )
    await ledger.hold(conn, user_id, job_id, cost, expires_at, api_key_id=api_key_id)


@dataclass
class PreparedJob:
    """A job ready for its transaction: received, probed, priced, and its inputs stored under its id."""

    job_id: UUID
    cost: int
    input_ref: str | None
    input_meta: dict[str, Any]
    extra_refs: dict[str, str]
    stored: list[str]  # objects this submit wrote, deleted again if it fails (a resumable upload is not one)
    submitted_at: datetime
    deadline_at: datetime
    cancel_after: datetime | None


def insufficient(required: int, available: int, what: str) -> Problem:
    return Problem(
        402,
        "insufficient_credits",
        "Not enough credits",
        f"This {what} costs {required} credits and {available} are available.",
        required=required,
        available=available,
    )


async def prepare_job(state: AppState, user_id: UUID, job: JobRequest, job_id: UUID, workdir: Path) -> PreparedJob:
    """Everything a submit does before its transaction: inputs received, probed, priced and stored under `job_id`.
    The caller deletes `stored` if its transaction fails."""
    settings = state.settings
    spec = TASKS[job.task]
    input_ref: str | None = None
    stored: list[str] = []
    input_meta: dict[str, Any] = {}
    extra_refs: dict[str, str] = {}
    if spec.input_kind == "audio":
        # Every input is received and probed before anything is stored: a bad reference stores nothing.
        received, probed = await obtain_input(state, user_id, job, workdir)
        extras = await obtain_extra_inputs(state, user_id, job, workdir)
        check_input_fits(job.task, job.params, probed.info.duration_s)
        input_meta = _input_meta(received, probed, job.input_url, job.input_upload)
        if extras:
            input_meta["extra_inputs"] = {
                name: _input_meta(extra, extra_probed, job.extra_urls.get(name))
                for name, (extra, extra_probed) in extras.items()
            }
        cost = price(job.task, job.params, probed.info.duration_s)  # the main input's duration only
        # Upload first under the fresh job id: if the transaction then fails, the objects are deleted and no job
        # row ever pointed at them; if the upload fails, nothing was written to the database at all.
        if job.input_upload is not None:
            input_ref = uploads.object_key(user_id, job.input_upload)  # already in the inputs bucket: no copy
        else:
            input_ref = f"{user_id}/{job_id}/input{probed.extension}"
            await state.storage.put_file(settings.inputs_bucket, input_ref, received.path, probed.content_type)
            stored.append(input_ref)
        try:
            for name, (extra, extra_probed) in extras.items():
                extra_refs[name] = f"{user_id}/{job_id}/{name}{extra_probed.extension}"
                await state.storage.put_file(
                    settings.inputs_bucket, extra_refs[name], extra.path, extra_probed.content_type
                )
                stored.append(extra_refs[name])
        except BaseException:
            await state.storage.delete(settings.inputs_bucket, stored)
            raise
    elif isinstance(job.params, MixdownParams):
        input_meta = _tracks_meta(job.params, settings.max_duration_seconds)
        cost = price(job.task, job.params, None)
    else:
        cost = price(job.task, job.params, None)
    submitted_at = state.clock()
    return PreparedJob(
        job_id=job_id,
        cost=cost,
        input_ref=input_ref,
        input_meta=input_meta,
        extra_refs=extra_refs,
        stored=stored,
        submitted_at=submitted_at,
        deadline_at=submitted_at + timedelta(seconds=settings.job_deadline_seconds),
        cancel_after=None if job.deadline_s is None else submitted_at + timedelta(seconds=job.deadline_s),
    )


async def insert_prepared(
    conn: AsyncConnection,
    user_id: UUID,
    job: JobRequest,
    prepared: PreparedJob,
    *,
    api_key_id: UUID | None,
    batch_item: tuple[UUID, int] | None = None,
) -> None:
    """The job row, its hold (key caps first) and its upload consumed, inside the caller's transaction."""
    await db_jobs.insert_job(
        conn,
        job_id=prepared.job_id,
        user_id=user_id,
        task=job.task,
        params=job.params.model_dump(mode="json"),
        model_key=TASKS[job.task].model_key(job.params),
        cost=prepared.cost,
        input_ref=prepared.input_ref,
        input_meta=prepared.input_meta,
        extra_inputs=prepared.extra_refs,
        webhook_url=job.webhook_url,
        webhook_events=job.webhook_events,
        deadline_at=prepared.deadline_at,
        cancel_after=prepared.cancel_after,
        batch_item=batch_item,
    )
    await hold_for_job(
        conn,
        user_id,
        prepared.job_id,
        job.task,
        prepared.cost,
        prepared.deadline_at + HOLD_MARGIN,
        api_key_id=api_key_id,
        now=prepared.submitted_at,
    )
    if job.input_upload is not None and not await db_uploads.consume(conn, job.input_upload, user_id, prepared.job_id):
        raise uploads.used()  # another submit took it since this one read it


async def create_job(
    state: AppState,
    user_id: UUID,
    job: JobRequest,
    workdir: Path,
    *,
    idempotency_key: str | None = None,
    api_key_id: UUID | None = None,
) -> dict[str, Any]:
    """Probe, price, store, hold, dispatch. Returns the job resource; leaves nothing held or stored on error.
    `api_key_id`: the key the request came with, whose allowed tasks and spend caps apply (`hold_for_job`).

    With `idempotency_key` (claimed by the caller), the key is recorded as done, with the new job to replay, in the
    transaction that creates the job and its hold: no failure after that commit can free the key and let a retry
    create (and charge) a second job. Only a refused dispatch, which released the hold, frees it again.
    """
    job_id = uuid4()
    prepared = await prepare_job(state, user_id, job, job_id, workdir)
    try:
        async with state.pool.connection() as conn, conn.transaction():
            await insert_prepared(conn, user_id, job, prepared, api_key_id=api_key_id)
            if idempotency_key is not None:
                created = await db_jobs.get_job(conn, job_id)
                assert created is not None  # inserted above, in this transaction
                await idempotency.complete(conn, user_id, idempotency_key, 202, job_resource(created))
    except BaseException as exc:
        await state.storage.delete(state.settings.inputs_bucket, prepared.stored)
        if isinstance(exc, ledger.InsufficientCredits):
            raise insufficient(exc.required, exc.available, "job") from exc
        raise
    if prepared.cancel_after is not None and state.wake_reaper is not None:
        state.wake_reaper()  # its next pass may now be due sooner
    with naming_job(job_id):
        return await _dispatch(
            state, user_id, job_id, idempotency_key, prepared.input_ref, prepared.stored, job.input_upload
        )


async def _dispatch(
    state: AppState,
    user_id: UUID,
    job_id: UUID,
    idempotency_key: str | None,
    input_ref: str | None,
    stored: list[str],
    input_upload: UUID | None,
) -> dict[str, Any]:
    """The committed job to its worker (or queued); its resource. A refused dispatch fails it and frees the key."""
    settings = state.settings
    try:
        await dispatch_job(state, job_id)
    except DispatchError as exc:
        # dispatch_job has failed the job and released its hold; the input is no longer needed, and a retry with
        # the same key may try again (nothing was charged).
        if idempotency_key is not None:
            async with state.pool.connection() as conn:
                await idempotency.forget(conn, user_id, idempotency_key)
        if input_ref is not None:
            await state.storage.delete(settings.inputs_bucket, stored)
            async with state.pool.connection() as conn, conn.transaction():
                await db_jobs.clear_input_ref(conn, job_id, input_ref)
                if input_upload is not None:
                    await db_uploads.give_back(conn, input_upload, job_id)  # a retry may use it
        raise Problem(
            503,
            "dispatch_failed",
            "The job could not be started",
            "No worker could take the job; nothing was charged. Retry shortly.",
            headers={"Retry-After": "5", "x-should-retry": "true"},  # the job failed uncharged: a retry is safe
            job_id=str(job_id),
        ) from exc
    async with state.pool.connection() as conn:
        row = await db_jobs.get_job(conn, job_id)
    assert row is not None
    return job_resource(row)


@dataclass(frozen=True)
class Submitted:
    body: dict[str, Any]  # the job resource as created (or as first created, for a replay)
    status: int
    replayed: bool


async def submit_once(
    state: AppState,
    user_id: UUID,
    job: JobRequest,
    key: str | None,
    workdir: Path,
    *,
    api_key_id: UUID | None = None,
) -> Submitted:
    """`create_job` behind an optional `Idempotency-Key` (checked by `idempotency.check_key`): the same key and
    request replay the first job; a failed attempt frees the key. Every route that submits comes through here.

    `create_job` records the key as done inside the transaction that creates the job and its hold, so a failure
    after that commit (a database error in dispatch, cancellation at shutdown) cannot free it: `abandon` deletes
    only an in-flight claim, and a retry replays the job instead of charging twice."""
    settings = state.settings
    if key is None:
        return Submitted(await create_job(state, user_id, job, workdir, api_key_id=api_key_id), 202, replayed=False)
    async with state.pool.connection() as conn:
        replay = await idempotency.claim(
            conn,
            user_id,
            key,
            fingerprint(job),
            settings.idempotency_ttl_seconds,
            in_flight_lease_seconds=settings.idempotency_in_flight_lease_seconds,
        )
    if replay is not None:
        return Submitted(replay.body, replay.status, replayed=True)
    try:
        lease = settings.idempotency_in_flight_lease_seconds
        async with idempotency.kept_alive(state.pool, user_id, key, lease):
            body = await create_job(state, user_id, job, workdir, idempotency_key=key, api_key_id=api_key_id)
    except BaseException:
        async with state.pool.connection() as conn:
            await idempotency.abandon(conn, user_id, key)
        raise
    with naming_job(UUID(body["id"])):
        async with state.pool.connection() as conn:
            await idempotency.complete(conn, user_id, key, 202, body)  # replay this answer, not the in-tx snapshot
    return Submitted(body, 202, replayed=False)
